"""The restart policy of a launch, in one place.

Every actor runs one long loop (``actor.run.remote()``). When a loop ends with an error:

- an env actor, the evaluator or a shard has been restarted by Ray (``max_restarts=-1``: a new
  process behind the same handle); its loop starts again once the new incarnation answers a
  ping, so one death is one restart;
- the learner is never restarted by Ray (its state must come from a checkpoint): the
  supervisor recreates it from the newest intact checkpoint, from scratch before the first.

A role that keeps failing is restarted ever more slowly and then given up
(:class:`RestartPolicy`): the n-th failure in a row waits ``distributed.restart_backoff_s *
2**(n-1)`` s (at most ``restart_backoff_max_s``) before the next start, and the
``distributed.max_failures``-th ends the run (with its final checkpoint) instead of restarting
a deterministic crash forever. A failure is "in a row" when the incarnation made no progress:
the learner no update, an env actor no frame (SDPG: no iteration), and any other role (or an
env actor held by the rate limiter) lived under :data:`HEALTHY_S`. A SIGKILL now and then
(the chaos benchmark: 45 in 10k frames) never adds up.

A loop that returns normally is done (the run is stopping).
"""

from __future__ import annotations

import contextlib
import re
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
STOP_REPORT_S = 2.0
"""While stopping, how often a message names the loops not yet returned."""
HEALTHY_S = 60.0
"""An incarnation (other than the learner) that lived this long made progress."""


class RestartLimitError(Exception):
    """A role failed ``distributed.max_failures`` times in a row: the run stops."""


class RestartPolicy:
    """Failures in a row per role, the wait before each restart, and when to give up.

    ``started(role, progress)`` records where an incarnation started (``progress`` a number
    that rises while the role does its work); ``failed(role, progress)`` returns the seconds to
    wait before the next start, or raises :class:`RestartLimitError` at the limit.
    """

    def __init__(
        self,
        backoff_s: float,
        backoff_max_s: float,
        max_failures: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_failures = max_failures
        self.clock = clock
        self.in_a_row: dict[str, int] = {}
        self._start: dict[str, tuple[float, float]] = {}  # role -> (time, progress) at start

    def started(self, role: str, progress: float) -> None:
        self._start[role] = (self.clock(), progress)

    def failed(self, role: str, progress: float, reason: str) -> float:
        """Seconds to wait before restarting ``role``; raises at the limit."""
        since, before = self._start.pop(role, (self.clock(), progress))
        lived = self.clock() - since
        healthy = progress > before or (role != "learner" and lived >= HEALTHY_S)
        n = 1 if healthy else self.in_a_row.get(role, 0) + 1
        self.in_a_row[role] = n
        if self.max_failures and n >= self.max_failures:
            what = "an update" if role == "learner" else "progress"
            raise RestartLimitError(
                f"{role} failed {n} times in a row without {what} (last: {reason}); fix the "
                f"cause (see its log under the Ray session's logs), or raise "
                f"distributed.max_failures"
            )
        return min(self.backoff_s * 2 ** (n - 1), self.backoff_max_s)


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
        self._not_before: dict[str, float] = {}  # role -> when its back-off ends
        self._learner_due = False  # the learner is to be recreated once its back-off ends
        self._reasons: dict[str, str] = {}  # role -> why its last incarnation ended
        self._learner_source = ""
        d = cfg.distributed
        self.policy = RestartPolicy(d.restart_backoff_s, d.restart_backoff_max_s, d.max_failures)
        self._snap: RunSnapshot | None = None

    def start(self) -> None:
        """Start the long-running loop of every actor."""
        self._loop("learner", self.topo.learner)
        for i, actor in enumerate(self.topo.env_actors):
            self._loop(f"env-{i}", actor)
        if self.topo.evaluator is not None:
            self._loop("evaluator", self.topo.evaluator)

    def step(self, timeout: float = 1.0) -> RunSnapshot:
        """Wait up to ``timeout`` s for a loop to end, bring back what ended (once its back-off
        is over), and return the coordinator's snapshot. Raises :class:`RestartLimitError`
        when a role has failed too often in a row."""
        done, _ = ray.wait(list(self.loops), num_returns=1, timeout=timeout)
        # read first: whether an ended incarnation made progress is judged on what it reported
        self._snap = ray.get(self.topo.coordinator.snapshot.remote())
        for ref in done:
            self._ended(ref)
        if self._learner_due and self._due("learner"):
            self._recreate_learner()
        self._revive_loops()
        return self._snap

    def explain(self, role: str) -> tuple[str, str]:
        """Why ``role``'s last incarnation ended (each reason is given once), and for the
        learner what it was recreated from."""
        reason = self._reasons.pop(role, "its process died")
        return reason, f"recreated {self._learner_source}" if role == "learner" else ""

    def stop(self, evaluate: bool) -> RunSnapshot:
        """Ask every loop to finish, wait for them, run the final evaluation if ``evaluate``."""
        if self._learner_due:  # in its back-off: the final checkpoint needs a learner
            self._recreate_learner()
        topo = self.topo
        ray.get(topo.coordinator.stop.remote())
        if topo.limiter is not None:  # release actors waiting for admission
            topo.limiter.close.remote()
        stopping = [*topo.env_actors, *([topo.evaluator] if topo.evaluator is not None else [])]
        if not evaluate and hasattr(topo.learner, "stop"):
            stopping.append(topo.learner)  # Ctrl-C: not one more update (seconds on a busy CPU)
        for actor in stopping:  # now, not at the end of a chunk or an evaluation
            actor.stop.remote()
        self._wait_for_loops()
        if topo.evaluator is not None and evaluate:
            with contextlib.suppress(ray.exceptions.RayError):
                frames = ray.get(topo.coordinator.snapshot.remote()).counters.frames
                ray.get(topo.evaluator.evaluate.remote(frames))
        return ray.get(topo.coordinator.snapshot.remote())

    def _wait_for_loops(self) -> None:
        """Wait up to STOP_PATIENCE_S for every loop to return; every STOP_REPORT_S a message
        names the roles still finishing (an env actor its step, the learner its update)."""
        deadline = time.monotonic() + STOP_PATIENCE_S
        pending = list(self.loops)
        while pending and time.monotonic() < deadline:
            wait = min(STOP_REPORT_S, deadline - time.monotonic())
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=wait)
            if pending:
                names = sorted(self.loops[ref][0] for ref in pending)
                self.message(f"stopping: waiting for {', '.join(names)} to finish")

    # -- the policy

    def _loop(self, role: str, actor: Any) -> None:
        self.policy.started(role, self._progress(role))
        self.loops[actor.run.remote()] = (role, actor)

    def _progress(self, role: str) -> float:
        """A number that rises while ``role`` does its work (0 before the first snapshot)."""
        snap = self._snap
        if snap is None:
            return 0.0
        if role == "learner":
            return float(snap.counters.updates)
        if role == "evaluator":
            return float(snap.last_eval.frame) if snap.last_eval is not None else -1.0
        frames = snap.role(role).frames  # a DrQ-v2 env actor reports its frames
        return float(frames or snap.counters.updates)  # SDPG: iterations need its windows

    def _due(self, role: str) -> bool:
        return time.monotonic() >= self._not_before.get(role, 0.0)

    def _failed(self, role: str, reason: str) -> None:
        """Count a failure of ``role`` and set its back-off (raises at the limit)."""
        self._reasons[role] = reason
        self.restarts[role] = self.restarts.get(role, 0) + 1
        wait = self.policy.failed(role, self._progress(role), reason)
        self._not_before[role] = time.monotonic() + wait

    def _ended(self, ref: Any) -> None:
        """A loop ended: done if it returned, else bring its role back after its back-off."""
        role, actor = self.loops.pop(ref)
        try:
            ray.get(ref)
            return
        except ray.exceptions.RayError as exc:
            reason = first_line(exc)
        if role == "learner":
            with contextlib.suppress(Exception):  # make sure the old one is gone for good
                ray.kill(self.topo.learner, no_restart=True)
            self._failed(role, reason)
            self._learner_due = True
        else:
            self._failed(role, reason)
            self._reviving[role] = (actor, actor.ping.remote())

    def _revive_loops(self) -> None:
        """Start the loop of every restarted actor that answers its ping, once its back-off is
        over. An actor Ray gave up on (its constructor failed) is one more failure each time."""
        for role, (actor, ping) in list(self._reviving.items()):
            ready, _ = ray.wait([ping], timeout=0)
            if not ready:
                continue
            try:
                ray.get(ping)
            except ray.exceptions.RayError as exc:
                if getattr(exc, "actor_init_failed", False) and self._due(role):
                    # its constructor raised, and Ray does not restart that: each back-off
                    # ends in one more failure, up to the limit
                    self.policy.started(role, self._progress(role))
                    self._failed(role, first_line(exc))
                self._reviving[role] = (actor, actor.ping.remote())  # else: still restarting
                continue
            if not self._due(role):
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
        self._learner_due = False
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    """The first line of an error (Ray's worker-death texts run over many lines); for an
    exception raised inside an actor's method, that exception (``ValueError: ...``), not
    Ray's ``ray::Actor.method() (pid=..., ip=...)`` header."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.ActorUnavailableError):
        # "The actor <id> is unavailable: The actor is temporarily unavailable: RpcError: RPC
        # error: Socket closed rpc_code: 14. The task may or may not have been executed ..."
        lines = _ANSI.sub("", str(exc)).strip().splitlines()
        why = lines[0].rsplit("unavailable: ", 1)[-1].split(". ")[0].strip()[:100] if lines else ""
        return "its process stopped answering" + (f" (Ray: {why})" if why else "")
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        text = f"{type(cause).__name__}: {cause}"
    elif getattr(exc, "actor_init_failed", False):  # the traceback's last line is the error
        lines = _ANSI.sub("", str(exc)).strip().splitlines()
        return f"its constructor raised {lines[-1].strip()[:140]}"
    else:
        text = str(exc)
    lines = _ANSI.sub("", text).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
