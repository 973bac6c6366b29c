"""The actors of one launch, created in dependency order and returned whole.

:func:`build_topology` reads like DESIGN.md's diagram::

    EnvActor x N --chunks--> ReplayServer x S --batches--> Learner --weights--> Coordinator
         ^                                                                          |
         +------------------------- newest weights, global frames, stop ------------+
    Evaluator: mean-action episodes every train.eval_every_frames

SDPG (flow 2, :mod:`.roles`): no replay, no limiter; the evaluator runs SDPG's policy::

    SDPGLearner --weights v_k (one ray.put)--> GroupActor x N (whole groups each)
         ^  <-------------- WindowResult per actor, straight back ----------+
         +--> weights v_k+1, iteration counts --> Coordinator

Actors find their peers by name (``<run>-coordinator``, ``<run>-replay-<i>``, ...), so the
order here only has to create each peer before the actors that look it up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distdrq.config import Config
from distdrq.distributed.cluster import LaunchError
from distdrq.distributed.coordinator import Coordinator
from distdrq.distributed.env_actor import Evaluator
from distdrq.distributed.replay_actor import start_rate_limiter, start_replay_shards
from distdrq.distributed.roles import Roles, roles_for
from distdrq.run.counters import Counters


@dataclass(frozen=True)
class Topology:
    """Handles of every actor of a run (a new value when the learner is recreated)."""

    coordinator: Any
    shards: list[Any]
    learner: Any
    env_actors: list[Any]
    evaluator: Any | None
    learner_gpus: float
    obs_shape: tuple[int, ...]
    action_dim: int
    limiter: Any | None = None

    def with_learner(self, learner: Any) -> Topology:
        """The same topology around a recreated learner."""
        return dataclasses.replace(self, learner=learner)


@dataclass(frozen=True)
class RunStart:
    """Where a launch session starts: a fresh run, or a checkpoint's state."""

    counters: Counters | None = None
    learner_state: dict[str, Any] | None = None
    limiter_state: dict[str, int] | None = None
    session: int = 0


def learner_gpus(cfg: Config, resources: dict[str, float]) -> float:
    """GPUs for the learner: ``distributed.learner_gpus``, or one if the cluster has one (-1)."""
    gpus = cfg.distributed.learner_gpus
    if gpus < 0:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if gpus > resources.get("GPU", 0):
        raise LaunchError(
            f"distributed.learner_gpus={gpus:g} but the cluster has "
            f"{resources.get('GPU', 0):g} GPUs; add a GPU node or use distributed.learner_gpus=-1"
        )
    return gpus


def start_learner(
    cfg: Config, name: str, gpus: float, shape: tuple[tuple[int, ...], int], state: Any
) -> Any:
    """Create (or recreate) the learner actor of the run's data flow (:mod:`.roles`),
    optionally from a checkpointed state.

    ``shape``: (observation shape, action dimension). Ray never restarts it: its state must
    come from a checkpoint (the supervisor recreates it)."""
    obs_shape, action_dim = shape
    return (
        ray.remote(roles_for(cfg).learner)
        .options(
            name=f"{name}-learner",
            num_cpus=1,
            num_gpus=gpus,
            max_restarts=0,
            max_concurrency=2,  # run() holds one thread; state/take_report answer on the other
        )
        .remote(cfg, obs_shape, action_dim, name, state, cfg.distributed.learner_threads)
    )


def _pinned_here() -> NodeAffinitySchedulingStrategy:
    """The coordinator and the rate limiter hold the run's state in memory: keep them on the
    driver's node (which the run cannot outlive anyway), never on a worker that may leave."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _start_coordinator(cfg: Config, name: str, start: RunStart) -> Any:
    counters = start.counters.to_dict() if start.counters is not None else None
    return (
        ray.remote(Coordinator)
        .options(
            name=f"{name}-coordinator",
            num_cpus=0,
            max_restarts=0,
            scheduling_strategy=_pinned_here(),
        )
        .remote(name, counters, cfg.train.frames)
    )


def _min_size(cfg: Config) -> int:
    return max(cfg.train.seed_frames // cfg.env.action_repeat, 1)


def _start_limiter(cfg: Config, name: str, start: RunStart) -> Any | None:
    """One global limiter (exact ratio over the union of shards), if a ratio is configured."""
    d = cfg.distributed
    if d.samples_per_insert <= 0:
        return None
    waiters = d.actors + d.prefetch + 8
    return start_rate_limiter(
        name,
        d.samples_per_insert,
        _min_size(cfg),
        start.limiter_state,
        waiters,
        scheduling_strategy=_pinned_here(),
    )


def _start_shards(cfg: Config, name: str, run_dir: Path, limited: bool) -> list[Any]:
    return start_replay_shards(
        cfg.distributed.shards,
        cfg.replay,
        frame_stack=cfg.env.frame_stack,
        samples_per_insert=None,
        min_size_to_sample=1 if limited else _min_size(cfg),
        name_prefix=name,
        snapshot_dir=str(run_dir / "replay"),
        snapshot_every_inserts=cfg.distributed.snapshot_every_inserts,
        seed=cfg.train.seed,
        num_cpus=1,
        run_name=name,
    )


def _start_env_actors(cfg: Config, name: str, session: int, roles: Roles) -> list[Any]:
    options = {
        "num_cpus": 1,
        "max_restarts": -1,  # Ray restarts them; the supervisor restarts their loop
        "max_task_retries": 0,
        # run() holds one thread, an SDPG window another; ping/stop/node_id answer beside them
        "max_concurrency": 3,
        "scheduling_strategy": "SPREAD",
    }
    env_cls = ray.remote(roles.env_actor)
    return [
        env_cls.options(name=f"{name}-env-{i}", **options).remote(i, cfg, name, session)
        for i in range(cfg.distributed.actors)
    ]


def _start_evaluator(cfg: Config, name: str, run_dir: Path, start: RunStart) -> Any | None:
    if not cfg.distributed.evaluator:
        return None
    last = start.counters.last_eval_frame if start.counters is not None else -1
    next_eval = 0 if last < 0 else last + cfg.train.eval_every_frames
    return (
        ray.remote(Evaluator)
        .options(name=f"{name}-evaluator", num_cpus=1, max_restarts=-1, max_concurrency=2)
        .remote(cfg, name, next_eval, str(run_dir.resolve() / "videos"))
    )


def build_topology(
    cfg: Config, name: str, run_dir: Path, resources: dict[str, float], start: RunStart
) -> Topology:
    """Coordinator, rate limiter and replay shards (flow 1 only), learner, env actors and
    evaluator (when it can run the flow's policy): the roles of :func:`.roles.roles_for`."""
    roles = roles_for(cfg)
    shape = roles.shape(cfg)
    gpus = learner_gpus(cfg, resources)
    coordinator = _start_coordinator(cfg, name, start)
    limiter = _start_limiter(cfg, name, start) if roles.replay else None
    shards = _start_shards(cfg, name, run_dir, limiter is not None) if roles.replay else []
    return Topology(
        coordinator=coordinator,
        shards=shards,
        learner=start_learner(cfg, name, gpus, shape, start.learner_state),
        env_actors=_start_env_actors(cfg, name, start.session, roles),
        evaluator=_start_evaluator(cfg, name, run_dir, start),
        learner_gpus=gpus,
        obs_shape=shape[0],
        action_dim=shape[1],
        limiter=limiter,
    )
