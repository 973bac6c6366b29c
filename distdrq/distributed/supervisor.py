"""The restart policy of a launch, in one place.

Every actor runs one long loop (``actor.run.remote()``). When a loop ends with an error:

- an env actor, the evaluator or a shard has been restarted by Ray (``max_restarts=-1``: a new
  process behind the same handle); its loop starts again once the new incarnation answers a
  ping, so one death is one restart;
- the learner is never restarted by Ray (its state must come from a checkpoint): the
  supervisor recreates it from the newest intact checkpoint, from scratch before the first.

A loop that returns normally is done (the run is stopping).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from distdrq.checkpoint import CheckpointError, load_latest
from distdrq.config import Config
from distdrq.distributed.messages import RunSnapshot
from distdrq.distributed.topology import Topology, start_learner
from distdrq.metrics import RunMetrics
from distdrq.types import SkippedFile

LEARNER_NAME_RELEASE_S = 60.0
"""How long a recreated learner waits for Ray to release its dead predecessor's name."""
STOP_PATIENCE_S = 60.0
"""How long stopping waits for all loops together (each returns within a step or an update)."""


class Supervisor:
    """Keeps every role's loop running; :meth:`step` is one tick of the launch."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        name: str,
        topo: Topology,
        message: Callable[[str], None],
        metrics: RunMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.name = name
        self.topo = topo
        self.message = message
        self.metrics = metrics
        self.loops: dict[Any, tuple[str, Any]] = {}  # ObjectRef -> (role, actor)
        self.restarts: dict[str, int] = {}
        self._reviving: dict[str, tuple[Any, Any]] = {}  # role -> (actor, ping ObjectRef)
        self._reasons: dict[str, str] = {}  # role -> why its last incarnation ended
        self._learner_source = ""

    def start(self) -> None:
        """Start the long-running loop of every actor."""
        self._loop("learner", self.topo.learner)
        for i, actor in enumerate(self.topo.env_actors):
            self._loop(f"env-{i}", actor)
        if self.topo.evaluator is not None:
            self._loop("evaluator", self.topo.evaluator)

    def step(self, timeout: float = 1.0) -> RunSnapshot:
        """Wait up to ``timeout`` s for a loop to end, bring back what ended, and return the
        coordinator's snapshot."""
        done, _ = ray.wait(list(self.loops), num_returns=1, timeout=timeout)
        for ref in done:
            self._ended(ref)
        self._revive_loops()
        return ray.get(self.topo.coordinator.snapshot.remote())

    def explain(self, role: str) -> tuple[str, str]:
        """Why ``role``'s last incarnation ended (each reason is given once), and for the
        learner what it was recreated from."""
        reason = self._reasons.pop(role, "its process died")
        return reason, f"recreated {self._learner_source}" if role == "learner" else ""

    def stop(self, evaluate: bool) -> RunSnapshot:
        """Ask every loop to finish, wait for them, run the final evaluation if ``evaluate``."""
        topo = self.topo
        ray.get(topo.coordinator.stop.remote())
        if topo.limiter is not None:  # release actors waiting for admission
            topo.limiter.close.remote()
        stopping = [*topo.env_actors, *([topo.evaluator] if topo.evaluator is not None else [])]
        for actor in stopping:  # now, not at the end of a chunk or an evaluation
            actor.stop.remote()
        ray.wait(list(self.loops), num_returns=len(self.loops), timeout=STOP_PATIENCE_S)
        if topo.evaluator is not None and evaluate:
            with contextlib.suppress(ray.exceptions.RayError):
                frames = ray.get(topo.coordinator.snapshot.remote()).counters.frames
                ray.get(topo.evaluator.evaluate.remote(frames))
        return ray.get(topo.coordinator.snapshot.remote())

    # -- the policy

    def _loop(self, role: str, actor: Any) -> None:
        self.loops[actor.run.remote()] = (role, actor)

    def _ended(self, ref: Any) -> None:
        """A loop ended: done if it returned, else bring its role back."""
        role, actor = self.loops.pop(ref)
        try:
            ray.get(ref)
            return
        except ray.exceptions.RayError as exc:
            self._reasons[role] = first_line(exc)
        self.restarts[role] = self.restarts.get(role, 0) + 1
        if role == "learner":
            self._recreate_learner()
        else:
            self._reviving[role] = (actor, actor.ping.remote())

    def _revive_loops(self) -> None:
        """Start the loop of every restarted actor that answers its ping."""
        for role, (actor, ping) in list(self._reviving.items()):
            ready, _ = ray.wait([ping], timeout=0)
            if not ready:
                continue
            try:
                ray.get(ping)
            except ray.exceptions.RayError:  # still restarting: ask again
                self._reviving[role] = (actor, actor.ping.remote())
                continue
            del self._reviving[role]
            self._loop(role, actor)

    def _newest_learner_state(self) -> dict[str, Any] | None:
        """The learner state of the newest intact checkpoint (None before the first)."""
        damaged: list[SkippedFile] = []
        self._learner_source = "from scratch (no checkpoint yet)"
        try:
            path, saved, _ = load_latest(self.run_dir, warn=self.message, skipped=damaged)
        except CheckpointError as exc:
            if damaged:  # there were checkpoints, none usable
                self._learner_source = f"from scratch ({first_line(exc)})"
            return None
        finally:
            for _ in damaged if self.metrics is not None else ():
                self.metrics.count_damaged_checkpoint()
        self._learner_source = f"from {path.name}"
        return saved["learner"]

    def _recreate_learner(self) -> None:
        """A new learner from the newest intact checkpoint, once Ray releases the old name."""
        with contextlib.suppress(Exception):  # make sure the old one is gone for good
            ray.kill(self.topo.learner, no_restart=True)
        state = self._newest_learner_state()
        shape = (self.topo.obs_shape, self.topo.action_dim)
        deadline = time.monotonic() + LEARNER_NAME_RELEASE_S
        while True:
            try:
                learner = start_learner(self.cfg, self.name, self.topo.learner_gpus, shape, state)
                break
            except ValueError as exc:  # the dead learner's name is released a moment later
                if "already taken" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.topo = self.topo.with_learner(learner)
        self._loop("learner", learner)


def first_line(exc: BaseException) -> str:
    """The first line of an error (Ray's worker-death texts run over many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
