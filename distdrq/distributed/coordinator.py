"""The run's coordinator actor: versioned weights, global counters, stop flag.

It is the WeightStore of DESIGN.md plus the counters every component reports to: env actors
report frames and episode returns per chunk and learn the newest weight version and the
global frame count in the same reply (one small RPC per chunk, never per step); the learner
publishes weights as one ``ray.put`` object per version and its update count; the evaluator
reports returns; the driver reads :meth:`Coordinator.snapshot` (a typed
:class:`~distdrq.distributed.messages.RunSnapshot`) for progress and checkpoints. The
learner's losses and batch latencies do not pass through here: the driver takes them from the
learner itself (:meth:`~distdrq.distributed.learner.Learner.take_report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from distdrq.distributed.messages import (
    EnvReply,
    EvalReport,
    IterationReport,
    LearnerReply,
    RoleState,
    RunSnapshot,
)
from distdrq.run.counters import Counters


@dataclass
class _Role:
    starts: int = 0
    frames: int = 0
    episodes: int = 0
    last_report: float = 0.0
    policy_version: int = -1


class Coordinator:
    """Counters and weights of one run (a Ray actor; also usable in-process)."""

    def __init__(
        self,
        run_name: str,
        counters: dict[str, Any] | None = None,
        total_frames: int | None = None,
    ) -> None:
        """``total_frames``: the frame budget; env actors are told to stop once it is reached."""
        self.run_name = run_name
        self.total_frames = total_frames
        self.counters = Counters.from_dict(counters)
        self._weights: list[Any] | None = None  # [ObjectRef], wrapped so Ray does not resolve it
        self._roles: dict[str, _Role] = {}
        self._stop = False
        self._returns: list[tuple[int, float]] = []
        self._last_eval: EvalReport | None = None
        self._started = time.monotonic()
        self._wall_base = self.counters.wall_time

    # -- registration (every actor calls this from its constructor, so restarts are counted)

    def register(self, role: str) -> int:
        """Record that ``role`` (e.g. ``env-3``) started; returns how often it has started."""
        entry = self._roles.setdefault(role, _Role())
        entry.starts += 1
        return entry.starts

    # -- weights

    def publish(self, version: int, weights: list[Any], updates: int) -> None:
        """Store weight ``version`` (``[ObjectRef]`` of a policy state dict)."""
        if version >= self.counters.weight_version or self._weights is None:
            self.counters.weight_version = int(version)
            self._weights = weights
        self.counters.updates = max(self.counters.updates, int(updates))

    def weights_since(self, version: int) -> tuple[int, list[Any]] | None:
        """The newest weights if newer than ``version`` (else None)."""
        if self._weights is None or self.counters.weight_version <= version:
            return None
        return self.counters.weight_version, self._weights

    # -- reports

    def report_env(
        self, role: str, frames: int, returns: list[float], policy_version: int
    ) -> EnvReply:
        """An env actor's progress since its last report; replies with what it needs to know."""
        entry = self._roles.setdefault(role, _Role())
        entry.frames += int(frames)
        entry.episodes += len(returns)
        entry.last_report = time.monotonic()
        entry.policy_version = int(policy_version)
        self.counters.frames += int(frames)
        self._add_returns(returns)
        return EnvReply(
            self.counters.frames, self.counters.weight_version, self._stop or self._budget_spent()
        )

    def report_learner(self, updates: int) -> LearnerReply:
        """The learner's update count (continuing over restarts); replies with the global
        frame count and the stop flag."""
        self.counters.updates = max(self.counters.updates, int(updates))
        return LearnerReply(self.counters.frames, self._stop)

    def report_iteration(self, report: IterationReport) -> LearnerReply:
        """An SDPG iteration's counts (the learner drives the env actors, so it reports their
        frames); replies with the global frame count and whether to stop (the stop flag or the
        frame budget)."""
        self.counters.updates = max(self.counters.updates, int(report.updates))
        self.counters.frames += int(report.frames)
        self.counters.steps += int(report.steps)
        self._add_returns(report.returns)
        return LearnerReply(self.counters.frames, self._stop or self._budget_spent())

    def _add_returns(self, returns: list[float]) -> None:
        self.counters.episodes += len(returns)
        for value in returns:
            self.counters.last_train_return = float(value)
            self._returns.append((self.counters.frames, float(value)))

    def _budget_spent(self) -> bool:
        return self.total_frames is not None and self.counters.frames >= self.total_frames

    def report_eval(self, report: EvalReport) -> None:
        """An evaluation's result (a repeat by a restarted evaluator is ignored)."""
        if report.frame <= self.counters.last_eval_frame:
            return
        self.counters.last_eval_return = float(report.mean_return)
        self.counters.last_eval_frame = int(report.frame)
        self.counters.evaluations += 1
        self._last_eval = report

    def take_returns(self) -> list[tuple[int, float]]:
        """Training episode returns (global frame, return) since the last call."""
        out, self._returns = self._returns, []
        return out

    # -- control

    def stop(self) -> None:
        """Ask every loop to finish its current step and return."""
        self._stop = True

    def should_stop(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop

    def snapshot(self) -> RunSnapshot:
        """Counters, per-role state and the stop flag."""
        self.counters.wall_time = self._wall_base + time.monotonic() - self._started
        roles = {
            name: RoleState(r.starts, r.frames, r.episodes, r.policy_version)
            for name, r in self._roles.items()
        }
        return RunSnapshot(Counters(**self.counters.to_dict()), roles, self._stop, self._last_eval)
