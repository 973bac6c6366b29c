"""``distdrq launch``: connect to Ray, build the topology, supervise, checkpoint, stop.

The topology (one function, :func:`build_topology`, reads like DESIGN.md's diagram)::

    EnvActor x N --chunks--> ReplayServer x S --batches--> Learner --weights--> Coordinator
         ^                                                                          |
         +------------------------- newest weights, global frames, stop ------------+
    Evaluator: mean-action episodes every train.eval_every_frames

The driver restarts the long-running loop of any env actor, evaluator or shard that Ray has
restarted, recreates a dead learner from the last checkpoint, checkpoints every
``train.checkpoint_every_frames`` and on Ctrl-C/SIGTERM (learner state, counters, replay
snapshots), and leaves no processes behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distdrq.checkpoint import CheckpointError, list_checkpoints, load_latest, save_checkpoint
from distdrq.config import Config
from distdrq.distributed import enable_token_auth_if_available
from distdrq.distributed.coordinator import Coordinator
from distdrq.distributed.env_actor import EnvActor, Evaluator
from distdrq.distributed.learner import Learner
from distdrq.distributed.replay_actor import start_rate_limiter, start_replay_shards
from distdrq.envs import make_env
from distdrq.metrics import RunMetrics
from distdrq.proctree import kill_descendants
from distdrq.progress import CsvLog, ProgressDisplay
from distdrq.run.rundir import rollback_records, save_run_config
from distdrq.types import SkippedFile

NAMESPACE = "distdrq"
"""Ray namespace of every distdrq actor (``distdrq status`` looks there)."""


CHECKPOINT_RETRY_S = 30.0
"""A periodic checkpoint that an unavailable actor postponed is tried again this much later."""
LEARNER_NAME_RELEASE_S = 60.0
"""How long a recreated learner waits for Ray to release its dead predecessor's name."""
FINAL_CHECKPOINT_PATIENCE_S = 900.0
"""How long the final checkpoint waits for actors that Ray is restarting (a restarted shard
restores its snapshot first: minutes for a large one)."""


class LaunchError(RuntimeError):
    """The run cannot start or continue (cluster unreachable, resources impossible, ...)."""


# ---------------------------------------------------------------------------------------------
# connecting


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    if ":" not in address:  # "auto", "local": nothing to probe
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise LaunchError(
            f"cannot reach the Ray cluster at {address} ({exc}); start one with "
            "`ray start --head` and pass its address, or drop --address for a local run"
        ) from exc


def required_cpus(cfg: Config) -> float:
    """CPUs the topology asks for: one per env actor, shard and evaluator; one for the learner."""
    d = cfg.distributed
    return d.actors + d.shards + 1 + (1 if d.evaluator else 0)


def connect(cfg: Config, address: str | None, notice: Any = print) -> dict[str, float]:
    """Join ``address`` (or RAY_ADDRESS), else start a local single-node Ray instance.

    Locally, fewer cores than the topology asks for are oversubscribed with a notice; on a
    cluster, resources that can never be satisfied raise :class:`LaunchError`.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    need = required_cpus(cfg)
    runtime_env = {"env_vars": {"MUJOCO_GL": os.environ.get("MUJOCO_GL", cfg.env.gl_backend)}}
    if address:
        _check_reachable(address)
        enable_token_auth_if_available()
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=False)
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) < need:
            ray.shutdown()
            raise LaunchError(
                f"the cluster has {resources.get('CPU', 0):g} CPUs but this run needs {need:g} "
                f"({cfg.distributed.actors} actors + {cfg.distributed.shards} shards + learner"
                f"{' + evaluator' if cfg.distributed.evaluator else ''}); lower --actors or "
                "add nodes"
            )
        return resources
    cores = os.cpu_count() or 1
    if need > cores:
        notice(
            f"notice: {cores} cores for {need:g} processes ({cfg.distributed.actors} env actors, "
            f"{cfg.distributed.shards} shards, learner"
            f"{', evaluator' if cfg.distributed.evaluator else ''}): running oversubscribed"
        )
    ray.init(
        address="local",  # a new instance, even if another Ray cluster runs on this machine
        num_cpus=max(cores, math.ceil(need)),
        namespace=NAMESPACE,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=False,
        configure_logging=False,
    )
    return ray.cluster_resources()


# ---------------------------------------------------------------------------------------------
# topology


@dataclass
class Topology:
    """Handles of every actor of a run."""

    coordinator: Any
    shards: list[Any]
    learner: Any
    env_actors: list[Any]
    evaluator: Any | None
    learner_gpus: float
    obs_shape: tuple[int, int, int]
    action_dim: int
    limiter: Any | None = None


def _learner_gpus(cfg: Config, resources: dict[str, float]) -> float:
    gpus = cfg.distributed.learner_gpus
    if gpus < 0:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if gpus > resources.get("GPU", 0):
        raise LaunchError(
            f"distributed.learner_gpus={gpus:g} but the cluster has "
            f"{resources.get('GPU', 0):g} GPUs; add a GPU node or use distributed.learner_gpus=-1"
        )
    return gpus


def start_learner(topo: Topology, cfg: Config, name: str, state: dict[str, Any] | None) -> Any:
    """Create (or recreate) the learner actor, optionally from a checkpointed state."""
    cls = ray.remote(Learner)
    return cls.options(
        name=f"{name}-learner",
        num_cpus=1,
        num_gpus=topo.learner_gpus,
        max_restarts=0,
        max_concurrency=2,
    ).remote(cfg, topo.obs_shape, topo.action_dim, name, state, 1)


def build_topology(
    cfg: Config,
    name: str,
    run_dir: Path,
    resources: dict[str, float],
    counters: dict[str, Any] | None,
    learner_state: dict[str, Any] | None,
    session: int,
    limiter_state: dict[str, int] | None = None,
) -> Topology:
    """Coordinator, replay shards, learner, env actors and evaluator, wired top to bottom."""
    d = cfg.distributed
    probe = make_env(cfg.env, cfg.train.seed)
    obs_shape, action_dim = probe.obs_shape, probe.action_dim
    probe.close()

    # the coordinator and the rate limiter hold the run's state in memory: keep them on the
    # driver's node (which the run cannot outlive anyway), never on a worker that may leave
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    coordinator = (
        ray.remote(Coordinator)
        .options(name=f"{name}-coordinator", num_cpus=0, max_restarts=0, scheduling_strategy=here)
        .remote(name, counters, cfg.train.frames)
    )
    min_size = max(cfg.train.seed_frames // cfg.env.action_repeat, 1)
    limiter = None
    if d.samples_per_insert > 0:  # one global limiter: exact ratio over the union of shards
        waiters = d.actors + d.prefetch + 8
        limiter = start_rate_limiter(
            name, d.samples_per_insert, min_size, limiter_state, waiters, scheduling_strategy=here
        )
    shards = start_replay_shards(
        d.shards,
        cfg.replay,
        frame_stack=cfg.env.frame_stack,
        samples_per_insert=None,
        min_size_to_sample=1 if limiter is not None else min_size,
        name_prefix=name,
        snapshot_dir=str(run_dir / "replay"),
        snapshot_every_inserts=d.snapshot_every_inserts,
        seed=cfg.train.seed,
        num_cpus=1,
        run_name=name,
    )
    learner_gpus = _learner_gpus(cfg, resources)
    topo = Topology(coordinator, shards, None, [], None, learner_gpus, obs_shape, action_dim)
    topo.limiter = limiter
    topo.learner = start_learner(topo, cfg, name, learner_state)
    env_cls = ray.remote(EnvActor)
    topo.env_actors = [
        env_cls.options(
            name=f"{name}-env-{i}",
            num_cpus=1,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=2,  # run() holds one thread; ping/node_id answer on the other
            scheduling_strategy="SPREAD",
        ).remote(i, cfg, name, session)
        for i in range(d.actors)
    ]
    if d.evaluator:
        next_eval = (counters or {}).get("last_eval_frame", -1)
        next_eval = 0 if next_eval < 0 else next_eval + cfg.train.eval_every_frames
        topo.evaluator = (
            ray.remote(Evaluator)
            .options(name=f"{name}-evaluator", num_cpus=1, max_restarts=-1, max_concurrency=2)
            .remote(cfg, name, next_eval, str(run_dir.resolve() / "videos"))
        )
    return topo


# ---------------------------------------------------------------------------------------------
# supervision


class Driver:
    """Runs one launch session: supervise loops, progress, checkpoints, shutdown."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        name: str,
        progress: ProgressDisplay,
        session: int,
        metrics: RunMetrics | None = None,
        last_eval_frame: int = -1,
    ) -> None:
        """``last_eval_frame``: the newest evaluation already in ``eval.csv`` (on resume)."""
        self.cfg = cfg
        self.metrics = metrics
        self.session = session
        self.run_dir = run_dir
        self.name = name
        self.progress = progress
        self.loops: dict[Any, tuple[str, Any]] = {}  # ObjectRef -> (role, actor)
        self.restarts: dict[str, int] = {}
        self.topo: Topology | None = None
        self.train_log = CsvLog(run_dir / "train.csv")
        self.eval_log = CsvLog(run_dir / "eval.csv")
        self._last_eval_logged = last_eval_frame
        self._reviving: dict[str, tuple[Any, Any]] = {}  # role -> (actor, ping ObjectRef)
        self._reasons: dict[str, str] = {}  # role -> why its last incarnation ended
        self._starts_seen: dict[str, int] = {}
        self._shard_polls: dict[int, Any] = {}
        self._shard_sizes: dict[str, int] = {}  # replay-i -> transitions at the last poll
        self._learner_source = ""
        self._checkpoint_retry_at = 0.0
        self._down_since: float | None = None  # first postponed checkpoint of a down actor

    def start_loops(self) -> None:
        """Start the long-running loop of every actor."""
        topo = self.topo
        assert topo is not None
        self._loop("learner", topo.learner)
        for i, actor in enumerate(topo.env_actors):
            self._loop(f"env-{i}", actor)
        if topo.evaluator is not None:
            self._loop("evaluator", topo.evaluator)

    def _loop(self, role: str, actor: Any) -> None:
        self.loops[actor.run.remote()] = (role, actor)

    def _restart(self, ref: Any) -> None:
        """A loop ended: done if it returned, else bring its role back.

        Env actors, the evaluator and shards are restarted by Ray (a new process, the same
        handle): their loop is started again once the new incarnation answers a ping, so one
        death is one restart. The learner (never restarted by Ray: its state must come from a
        checkpoint) is recreated here. The restart itself is shown by :meth:`_show_restarts`.
        """
        role, actor = self.loops.pop(ref)
        try:
            ray.get(ref)
            return  # a loop that returned normally is done (stop requested)
        except ray.exceptions.RayError as exc:
            reason = _first_line(exc)
        self.restarts[role] = self.restarts.get(role, 0) + 1
        self._reasons[role] = reason
        if role == "learner":
            self._recreate_learner()
            return
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

    def _recreate_learner(self) -> None:
        """A new learner from the newest intact checkpoint (from scratch before the first)."""
        topo = self.topo
        assert topo is not None
        with contextlib.suppress(Exception):  # make sure the old one is gone for good
            ray.kill(topo.learner, no_restart=True)
        state, source = None, "from scratch (no checkpoint yet)"
        damaged: list[SkippedFile] = []
        try:
            path, saved, _ = load_latest(self.run_dir, warn=self.progress.message, skipped=damaged)
            state, source = saved["learner"], f"from {path.name}"
        except CheckpointError as exc:
            if damaged:  # there were checkpoints, none usable
                source = f"from scratch ({_first_line(exc)})"
        finally:
            for _ in damaged if self.metrics is not None else ():
                self.metrics.count_damaged_checkpoint()
        self._learner_source = source
        deadline = time.monotonic() + LEARNER_NAME_RELEASE_S
        while True:
            try:
                topo.learner = start_learner(topo, self.cfg, self.name, state)
                break
            except ValueError as exc:  # the dead learner's name is released a moment later
                if "already taken" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._loop("learner", topo.learner)

    def _show_restarts(self, snap: dict[str, Any]) -> None:
        """One line per restart of any role, from the coordinator's registration counts (every
        actor registers in its constructor, so a restart by Ray or by the driver is seen)."""
        for role, info in sorted(snap["roles"].items()):
            starts = int(info["starts"])
            seen = self._starts_seen.setdefault(role, starts)
            if starts <= seen:
                continue
            self._starts_seen[role] = starts
            reason = self._reasons.pop(role, "its process died")
            extra = ""
            if role == "learner":
                extra = f"; recreated {self._learner_source}"
            elif role.startswith("replay-"):
                before = self._shard_sizes.get(role)
                extra = f"; it held {before:,} transitions before" if before is not None else ""
            self.progress.message(f"{role} restarted ({reason}){extra}; restarts: {starts - 1}")

    def _show_shard_messages(self) -> None:
        """Shard messages (restored or damaged snapshots, refused chunks), each once."""
        assert self.topo is not None
        for i, shard in enumerate(self.topo.shards):
            ref = self._shard_polls.get(i)
            if ref is None:
                self._shard_polls[i] = shard.take_messages.remote()
                continue
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            del self._shard_polls[i]
            with contextlib.suppress(ray.exceptions.RayError):
                for text in ray.get(ref):
                    self.progress.message(f"replay-{i}: {text}")

    def supervise(self, total_frames: int, checkpoint_every: int, next_checkpoint: int) -> str:
        """Watch loops and progress until the frame budget is reached; returns why it ended."""
        topo = self.topo
        assert topo is not None
        while True:
            done, _ = ray.wait(list(self.loops), num_returns=1, timeout=1.0)
            for ref in done:
                self._restart(ref)
            self._revive_loops()
            self._show_shard_messages()
            snap = ray.get(topo.coordinator.snapshot.remote())
            self._show_restarts(snap)
            self._show(snap)
            frames = snap["counters"]["frames"]
            if frames >= total_frames:
                return "done"
            due = frames >= next_checkpoint and time.monotonic() >= self._checkpoint_retry_at
            if due and self.checkpoint(snap, patience=0.0) is not None:
                next_checkpoint = frames + checkpoint_every

    def _show(self, snap: dict[str, Any]) -> None:
        topo = self.topo
        assert topo is not None
        c = snap["counters"]
        learner = snap["learner"]
        restarts = sum(r["restarts"] for r in snap["roles"].values())
        self.progress.update(
            c["frames"],
            c["updates"],
            episode=c["episodes"],
            train_return=_finite(c["last_train_return"]),
            eval_return=_finite(c["last_eval_return"]),
            restarts=restarts,
            policy_lag=learner.get("policy_lag_mean"),
        )
        events = ray.get(topo.coordinator.take_events.remote())
        for frame, value in events["returns"]:
            self.train_log.write(
                {"frame": frame, "episode_return": value, "updates": c["updates"]}
                | {k: learner.get(k) for k in ("critic_loss", "actor_loss", "policy_lag_mean")}
            )
        shard_stats = self._shard_stats()
        if self.metrics is not None:
            self.metrics.update(
                snap,
                self.progress.fields,
                shard_stats,
                self._limiter_stats(),
                events["latencies"],
            )
        if c["last_eval_frame"] > self._last_eval_logged:
            self._last_eval_logged = c["last_eval_frame"]
            extra = snap["roles"].get("evaluator", {})
            self.eval_log.write(
                {
                    "frame": c["last_eval_frame"],
                    "eval_return": c["last_eval_return"],
                    "eval_return_std": extra.get("std"),
                    "updates": c["updates"],
                    "wall_time": round(c["wall_time"], 3),
                }
            )
            self.progress.message(
                f"eval at frame {c['last_eval_frame']:,}: return {c['last_eval_return']:.1f}"
            )

    def _shard_stats(self) -> list[dict[str, Any]]:
        assert self.topo is not None
        stats = []
        for shard in self.topo.shards:
            with contextlib.suppress(ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                stats.append(ray.get(shard.stats.remote(), timeout=5))
                self._shard_sizes[f"replay-{stats[-1]['shard']}"] = int(stats[-1]["transitions"])
        return stats

    def _limiter_stats(self) -> dict[str, float] | None:
        assert self.topo is not None
        if self.topo.limiter is None:
            return None
        with contextlib.suppress(ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return ray.get(self.topo.limiter.stats.remote(), timeout=5)
        return None

    def finish(self, reason: str) -> tuple[dict[str, Any], Path]:
        """Stop every loop, run the final evaluation (if the budget was reached), checkpoint."""
        topo = self.topo
        assert topo is not None
        ray.get(topo.coordinator.stop.remote())
        if topo.limiter is not None:  # release actors waiting for admission
            topo.limiter.close.remote()
        for ref in list(self.loops):
            with contextlib.suppress(ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                ray.get(ref, timeout=60)
        if topo.evaluator is not None and reason == "done":
            with contextlib.suppress(ray.exceptions.RayError):
                frames = ray.get(topo.coordinator.snapshot.remote())["counters"]["frames"]
                ray.get(topo.evaluator.evaluate.remote(frames))
        snap = ray.get(topo.coordinator.snapshot.remote())
        self._show_shard_messages()
        self._show_restarts(snap)  # restarts since the last tick (a long checkpoint may hide it)
        self._show(snap)
        path = self.checkpoint(snap, patience=FINAL_CHECKPOINT_PATIENCE_S)
        assert path is not None  # with patience, a failure raises
        return snap["counters"], path

    def checkpoint(self, snap: dict[str, Any] | None = None, patience: float = 0.0) -> Path | None:
        """Learner state + counters (main file) after snapshots of every shard.

        An actor that is down cannot take part: a killed shard that Ray is restarting (it
        restores its snapshot first), or a dead learner that :meth:`supervise` has yet to
        recreate. With ``patience`` 0 (periodic checkpoints) the checkpoint is then postponed:
        a message says why, None is returned and :meth:`supervise` tries again
        CHECKPOINT_RETRY_S later; the previous checkpoint stays the newest, nothing is lost.
        An actor still down FINAL_CHECKPOINT_PATIENCE_S after the first postponement is taken
        for lost: its error is raised (the run then ends with a final checkpoint attempt).
        With ``patience`` > 0 (the final checkpoint) restarting shards are waited for, up to
        that many seconds less the time they have already been down, before their error is
        raised; a dead learner raises at once (Ray never restarts it).
        """
        topo = self.topo
        assert topo is not None
        now = time.monotonic()
        if patience > 0 and self._down_since is not None:
            patience = max(0.0, patience - (now - self._down_since))
        try:
            learner_state = ray.get(topo.learner.state.remote(), timeout=300)
            snapshots = self._snapshot_shards(patience)
        except ray.exceptions.RayActorError as exc:
            if patience > 0:
                raise
            if self._down_since is None:
                self._down_since = now
            if now - self._down_since >= FINAL_CHECKPOINT_PATIENCE_S:
                raise
            reason = str(exc).strip().splitlines()[0][:160]
            self._checkpoint_retry_at = time.monotonic() + CHECKPOINT_RETRY_S
            self.progress.message(
                f"checkpoint postponed, an actor is down ({reason}); "
                f"trying again in {CHECKPOINT_RETRY_S:.0f} s"
            )
            return None
        self._down_since = None
        snap = snap or ray.get(topo.coordinator.snapshot.remote())
        limiter = ray.get(topo.limiter.state_dict.remote()) if topo.limiter else None
        state = {
            "rate_limiter": limiter,
            "counters": snap["counters"],
            "learner": learner_state,
            "replay_snapshots": [str(p) for p in snapshots],
            "restarts": dict(self.restarts),
            "session": self.session,
        }
        return save_checkpoint(self.run_dir, snap["counters"]["frames"], state)

    def _snapshot_shards(self, patience: float) -> list[str]:
        """Snapshot every shard; the paths in shard order. Every call is waited for before any
        is sent again, and only to the shards whose call failed (so a healthy shard never has
        snapshots queued behind one another). A failure is raised at once with ``patience`` 0,
        else the failed shards are asked again every 2 s for up to ``patience`` seconds."""
        topo = self.topo
        assert topo is not None
        deadline = time.monotonic() + patience
        refs = {i: shard.snapshot.remote() for i, shard in enumerate(topo.shards)}
        paths: dict[int, str] = {}
        while True:
            error: ray.exceptions.RayActorError | None = None
            for i, ref in refs.items():
                try:
                    paths[i] = ray.get(ref, timeout=3600)
                except ray.exceptions.RayActorError as exc:
                    error = error or exc
            if error is None:
                return [paths[i] for i in range(len(topo.shards))]
            if patience <= 0 or time.monotonic() >= deadline:
                raise error
            time.sleep(2.0)
            refs = {i: topo.shards[i].snapshot.remote() for i in refs if i not in paths}


def _first_line(exc: BaseException) -> str:
    """The first line of an error (Ray's worker-death texts run over many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def launch(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    address: str | None,
    progress: ProgressDisplay,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 9464,
) -> dict[str, Any]:
    """Run (or resume) a distributed training run; returns the final counters.

    ``metrics_port`` 0 disables the Prometheus endpoint.
    """
    name = f"distdrq-{run_dir.resolve().name}"
    counters = None
    learner_state = None
    limiter_state = None
    session = 0
    damaged: list[SkippedFile] = []
    if resume:
        path, state, _ = load_latest(run_dir, warn=progress.message, skipped=damaged)
        counters = state["counters"]
        learner_state = state["learner"]
        limiter_state = state.get("rate_limiter")
        session = int(state.get("session", 0)) + 1
        progress.message(f"resuming from {path} at frame {counters['frames']:,}")
        for text in rollback_records(run_dir, counters["frames"], counters["last_eval_frame"]):
            progress.message(text)
    address_given = bool(address or os.environ.get("RAY_ADDRESS"))
    resources = connect(cfg, address, notice=progress.message)
    if not resume:  # only now: a run that could not start leaves no run directory behind
        save_run_config(run_dir, cfg)
    ctx = ray.get_runtime_context()
    progress.message(f"Ray cluster at {ctx.gcs_address} (namespace {NAMESPACE})")
    dashboard = ray._private.worker.get_dashboard_url()
    if dashboard:
        progress.message(
            f"Ray dashboard: http://{dashboard} (job {ctx.get_job_id()}; Ray's auth token is in "
            "~/.ray/auth_token, or disable it with RAY_AUTH_MODE=disabled)"
        )
    metrics = None
    if metrics_port:
        metrics = RunMetrics(name)
        for _ in damaged:
            metrics.count_damaged_checkpoint()
        port = metrics.serve(metrics_host, metrics_port)
        moved = "" if port == metrics_port else f" (port {metrics_port} was taken)"
        progress.message(f"Prometheus metrics: http://{metrics_host}:{port}/metrics{moved}")
    last_eval = counters["last_eval_frame"] if counters else -1
    driver = Driver(cfg, run_dir, name, progress, session, metrics, last_eval)
    interrupted = {"count": 0}

    def on_signal(signum: int, frame: Any) -> None:
        interrupted["count"] += 1
        if interrupted["count"] >= 2:  # second Ctrl-C: leave at once, and leave nothing behind
            if not address_given:
                kill_descendants()  # the local Ray instance: raylet, GCS, dashboard, agents
            os._exit(130)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    reason = "error"
    failure = ""
    try:
        try:
            driver.topo = build_topology(
                cfg, name, run_dir, resources, counters, learner_state, session, limiter_state
            )
            device = ray.get(driver.topo.learner.device.remote())
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
            f"{cfg.distributed.actors} env actors, {cfg.distributed.shards} replay shards, "
            f"learner on {device}; run dir {run_dir}"
        )
        driver.start_loops()
        start_frames = counters["frames"] if counters else 0
        next_ckpt = start_frames + cfg.train.checkpoint_every_frames
        with progress:
            try:
                reason = driver.supervise(
                    cfg.train.frames, cfg.train.checkpoint_every_frames, next_ckpt
                )
            except KeyboardInterrupt:
                reason = "interrupted"
                progress.message("interrupted: stopping actors and writing a checkpoint")
            except ray.exceptions.RayError as exc:  # e.g. the coordinator's node was lost
                reason = "failed"
                failure = str(exc).strip().splitlines()[0][:200]
                progress.message(f"unrecoverable failure: {failure}; writing a checkpoint")
            try:
                state_counters, path = driver.finish(reason)
            except ray.exceptions.RayError as exc:
                last = list_checkpoints(run_dir)
                raise LaunchError(
                    f"the run failed ({failure if reason == 'failed' else exc}) and no final "
                    f"checkpoint could be written; resume from the last one with --resume "
                    f"{run_dir}" + (f" ({last[0].name})" if last else " (none yet)")
                ) from exc
            word = reason if reason in ("done", "failed") else "stopped"
            progress.message(
                f"{word} at frame "
                f"{state_counters['frames']:,} ({state_counters['updates']:,} updates, "
                f"{state_counters['episodes']} episodes); checkpoint {path}"
            )
        if reason == "failed":
            raise LaunchError(
                f"the run failed ({failure}); a checkpoint was written: continue with "
                f"--resume {run_dir}"
            )
        return state_counters | {"reason": reason, "restarts": driver.restarts}
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        ray.shutdown()
