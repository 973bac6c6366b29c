"""``distdrq launch``: one session of a distributed run, from connecting to the last checkpoint.

Each job lives in its own module, and this one only puts them in order:

- :mod:`~distdrq.distributed.cluster`: join or start Ray (reachability, auth, resources);
- :mod:`~distdrq.distributed.topology`: create every actor, returned whole;
- :mod:`~distdrq.distributed.supervisor`: the restart policy (Ray restarts env actors, the
  evaluator and shards; the supervisor restarts their loops and recreates a dead learner);
- :mod:`~distdrq.distributed.checkpointing`: the checkpoint policy, wrapped around the
  supervisor;
- :mod:`~distdrq.distributed.monitor`: the once-a-second panel, CSVs and Prometheus.

Ctrl-C (or SIGTERM) stops every loop and writes a checkpoint; a second one leaves at once and
kills the local Ray instance it started. The session leaves no processes behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from distdrq.checkpoint import list_checkpoints, load_latest
from distdrq.config import Config
from distdrq.distributed.checkpointing import Checkpointing
from distdrq.distributed.cluster import (
    NAMESPACE,
    LaunchError,
    connect,
    dashboard_url,
    describe_roles,
)
from distdrq.distributed.monitor import Monitor, condensed_ray_notices
from distdrq.distributed.roles import roles_for
from distdrq.distributed.supervisor import RestartLimitError, Supervisor
from distdrq.distributed.topology import RunStart, Topology, build_topology
from distdrq.envs.dmc import check_display_for
from distdrq.metrics import RunMetrics
from distdrq.proctree import kill_descendants
from distdrq.progress import ProgressDisplay
from distdrq.run.counters import Counters
from distdrq.run.rundir import rollback_records, save_run_config
from distdrq.run.session import target_message, target_reached
from distdrq.tblog import open_events
from distdrq.types import SkippedFile

__all__ = ["NAMESPACE", "LaunchError", "launch"]


def launch(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    address: str | None,
    progress: ProgressDisplay,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 9464,
) -> dict[str, Any]:
    """Run (or resume) a distributed training run; returns the final counters, with
    ``reason`` (done; target: ``train.stop_at_return`` reached; interrupted) and ``restarts``
    per role. ``metrics_port`` 0 disables the Prometheus endpoint."""
    name = f"distdrq-{run_dir.resolve().name}"
    roles_for(cfg).check(cfg)  # before Ray starts: a bad split is a quick one-line error
    damaged: list[SkippedFile] = []
    start = _resume_point(run_dir, progress, damaged) if resume else RunStart()
    own_cluster = not (address or os.environ.get("RAY_ADDRESS"))
    if own_cluster:  # this machine's actors will render: a missing display is known now
        check_display_for(cfg.env)
    resources = connect(cfg, address, notice=progress.message)
    try:
        if not resume:  # only now: a run that could not start leaves no run directory behind
            save_run_config(run_dir, cfg)
        _announce_cluster(progress)
        metrics = _serve_metrics(name, damaged, metrics_host, metrics_port, progress)
        with _signals(own_cluster):
            topo = _build(cfg, name, run_dir, resources, start, progress)
            return _Session(cfg, run_dir, name, topo, start, progress, metrics).run()
    finally:
        ray.shutdown()


def _resume_point(run_dir: Path, progress: ProgressDisplay, damaged: list[SkippedFile]) -> RunStart:
    """Where the newest intact checkpoint left the run; rolls the CSVs and videos back to it."""
    path, state, _ = load_latest(run_dir, warn=progress.message, skipped=damaged)
    counters = Counters.from_dict(state["counters"])
    progress.message(f"resuming from {path} at frame {counters.frames:,}")
    for text in rollback_records(run_dir, counters.frames, counters.last_eval_frame):
        progress.message(text)
    return RunStart(
        counters=counters,
        learner_state=state["learner"],
        limiter_state=state.get("rate_limiter"),
        session=int(state.get("session", 0)) + 1,
    )


def _announce_cluster(progress: ProgressDisplay) -> None:
    ctx = ray.get_runtime_context()
    progress.message(f"Ray cluster at {ctx.gcs_address} (namespace {NAMESPACE})")
    dashboard = dashboard_url()
    if dashboard:
        progress.message(
            f"Ray dashboard: http://{dashboard} (job {ctx.get_job_id()}; Ray's auth token is in "
            "~/.ray/auth_token, or disable it with RAY_AUTH_MODE=disabled)"
        )


def _serve_metrics(
    name: str, damaged: list[SkippedFile], host: str, port: int, progress: ProgressDisplay
) -> RunMetrics | None:
    if not port:
        return None
    metrics = RunMetrics(name)
    for _ in damaged:
        metrics.count_damaged_checkpoint()
    served = metrics.serve(host, port)
    moved = "" if served == port else f" (port {port} was taken)"
    progress.message(f"Prometheus metrics: http://{host}:{served}/metrics{moved}")
    return metrics


@contextlib.contextmanager
def _signals(own_cluster: bool) -> Iterator[None]:
    """Ctrl-C/SIGTERM raise KeyboardInterrupt (the session checkpoints and stops); a second one
    exits at once, killing the local Ray instance's processes if this session started it."""
    count = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal count
        count += 1
        if count >= 2:
            if own_cluster:
                kill_descendants()  # the local Ray instance: raylet, GCS, dashboard, agents
            os._exit(130)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _build(
    cfg: Config,
    name: str,
    run_dir: Path,
    resources: dict[str, float],
    start: RunStart,
    progress: ProgressDisplay,
) -> Topology:
    """The topology, once its learner answers (which shows an auth-mode mismatch early)."""
    restoring = "; shards restore their replay snapshots" if start.counters else ""
    progress.message(  # worker processes import torch and MuJoCo: tens of seconds on 2 cores
        f"starting {describe_roles(cfg)}{restoring}"
    )
    try:
        topo = build_topology(cfg, name, run_dir, resources, start)
        device = ray.get(topo.learner.device.remote())
    except (ray.exceptions.ActorDiedError, ray.exceptions.RaySystemError) as exc:
        # the cluster cancels actor creation (how an auth-mode mismatch shows itself)
        if "never ran" not in str(exc) and "creation cancelled" not in str(exc):
            raise
        raise LaunchError(
            "the cluster did not start distdrq's actors; if it runs without token "
            "authentication, set RAY_AUTH_MODE=disabled for distdrq too (with a token in "
            "~/.ray/auth_token distdrq joins in token mode, as `ray start --head` runs)"
        ) from exc
    if device == "cpu":
        progress.message("notice: no GPU in the cluster; the learner runs on CPU (slow)")
    progress.message(
        f"{cfg.distributed.actors} env actors, {len(topo.shards)} replay shards, learner on {device}; "
        f"run dir {run_dir}"
    )
    return topo


@dataclass
class _Session:
    """Supervise until the frame budget, an interruption or a failure; then stop and save."""

    cfg: Config
    run_dir: Path
    name: str
    topo: Topology
    start: RunStart
    progress: ProgressDisplay
    metrics: RunMetrics | None

    def run(self) -> dict[str, Any]:
        counters = self.start.counters or Counters()
        roles = roles_for(self.cfg)
        self.progress.extra = list(roles.shown)
        supervisor = Supervisor(
            self.cfg, self.run_dir, self.name, self.topo, self.progress.message, self.metrics
        )
        monitor = Monitor(
            self.run_dir,
            self.progress,
            self.metrics,
            lambda: supervisor.topo,
            supervisor.explain,
            counters.last_eval_frame,
            roles.train_columns,
            open_events(self.run_dir, self.cfg.train.tensorboard, self.start.counters is not None),
        )
        every = self.cfg.train.checkpoint_every_frames
        runner = Checkpointing(
            supervisor, every, counters.frames + every, self.start.session, self.progress.message
        )
        supervisor.start()
        with self.progress, condensed_ray_notices(self.run_dir, self.progress.message):
            try:
                reason, failure = self._supervise(runner, monitor)
                snap, path = self._finish(runner, monitor, reason, failure)
            finally:
                monitor.close()
        if reason == "failed":
            raise LaunchError(
                f"the run failed ({failure}); a checkpoint was written: continue with "
                f"--resume {self.run_dir}"
            )
        return snap.counters.to_dict() | {"reason": reason, "restarts": supervisor.restarts}

    def _supervise(self, runner: Checkpointing, monitor: Monitor) -> tuple[str, str]:
        """Tick until the frame budget (or ``train.stop_at_return``) is reached; returns (why it
        ended: done, target, interrupted or failed; the failure)."""
        stop_at = self.cfg.train.stop_at_return
        try:
            while True:
                c = runner.step(after=monitor.refresh).counters
                if target_reached(c, stop_at):
                    self.progress.message(target_message(c, stop_at))  # type: ignore[arg-type]
                    return "target", ""
                if c.frames >= self.cfg.train.frames:
                    return "done", ""
        except KeyboardInterrupt:
            self.progress.message("interrupted: stopping actors and writing a checkpoint")
            return "interrupted", ""
        except ray.exceptions.RayError as exc:  # e.g. the coordinator's node was lost
            failure = str(exc).strip().splitlines()[0][:200]
            self.progress.message(f"unrecoverable failure: {failure}; writing a checkpoint")
            return "failed", failure
        except RestartLimitError as exc:  # a role that keeps failing: not restarted forever
            self.progress.message(f"giving up: {exc}; writing a checkpoint")
            return "failed", str(exc)

    def _finish(self, runner: Checkpointing, monitor: Monitor, reason: str, failure: str) -> Any:
        """Stop every loop, the final evaluation (if the budget was reached: a run that reached
        its target return ends with the evaluation that reached it), the checkpoint."""
        try:
            snap = runner.supervisor.stop(evaluate=reason == "done")
            monitor.flush()
            monitor.refresh(snap)  # what the last tick did not show (a long checkpoint...)
            path = runner.final(snap, quick=reason == "interrupted")
        except ray.exceptions.RayError as exc:
            last = list_checkpoints(self.run_dir)
            raise LaunchError(
                f"the run failed ({failure or exc}) and no final checkpoint could be "
                f"written; resume from the last one with --resume {self.run_dir}"
                + (f" ({last[0].name})" if last else " (none yet)")
            ) from exc
        c = snap.counters
        word = {"done": "done", "target": "done", "failed": "failed"}.get(reason, "stopped")
        self.progress.message(
            f"{word} at frame {c.frames:,} ({c.updates:,} updates, {c.episodes} episodes); "
            f"checkpoint {path}"
        )
        return snap, path
