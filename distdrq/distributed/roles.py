"""Which roles a launch runs, by how experience reaches the learner (DESIGN.md's two data
flows): the one place the distributed layer chooses by algorithm.

The algorithm's agent class says its flow (``AgentBase.experience``: ``replay`` or
``iterations``); :func:`roles_for` maps the flow to a :class:`Roles`. The topology builds
from it, the supervisor recreates the learner from it, the monitor writes its columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distdrq.agent.registry import algorithm
from distdrq.agent.sdpg_networks import SDPGPolicy
from distdrq.config import Config, ConfigError
from distdrq.distributed.env_actor import EnvActor
from distdrq.distributed.group_actor import GroupActor
from distdrq.distributed.learner import Learner
from distdrq.distributed.sdpg_learner import SDPGLearner
from distdrq.envs import make_env
from distdrq.envs.clones import NominalEnv
from distdrq.numpy_policy import make_acting_policy

Shape = tuple[tuple[int, ...], int]
"""(the actor's observation shape, the action dimension)"""


@dataclass(frozen=True)
class Roles:
    """The actor classes and records of one data flow."""

    learner: type
    """learner actor class: ``(cfg, obs_shape, action_dim, run_name, state, cpu_threads)``"""
    env_actor: type
    """env actor class: ``(index, cfg, run_name, session)``"""
    replay: bool
    """replay shards (and a rate limiter, if configured) exist"""
    train_columns: tuple[str, ...]
    """the learner's metrics written beside each episode return in train.csv"""
    shown: tuple[tuple[str, str], ...]
    """(learner metric, label) pairs the progress panel shows besides the counters"""
    shape: Callable[[Config], Shape]
    """the observation shape and action dimension, from a probe env"""
    check: Callable[[Config], None]
    """launch-only rules (a one-line ConfigError)"""
    evaluation: Callable[[Config, int], tuple[Any, Any]]
    """the evaluator's (env, policy) for a seed; the policy acts with ``act(obs, step,
    eval_mode)`` and loads ``load_policy_state_dict(state, version)``"""


def _replay_shape(cfg: Config) -> Shape:
    probe = make_env(cfg.env, cfg.train.seed)
    try:
        return probe.obs_shape, probe.action_dim
    finally:
        probe.close()


def _nominal_shape(cfg: Config) -> Shape:
    probe = NominalEnv(cfg.env, cfg.train.seed, cfg.sdpg.obs == "pixels")
    try:
        return probe.obs_shape, probe.action_dim
    finally:
        probe.close()


def _replay_evaluation(cfg: Config, seed: int) -> tuple[Any, Any]:
    env = make_env(cfg.env, seed)
    return env, make_acting_policy(env.obs_shape, env.action_dim, cfg.agent)


def _nominal_evaluation(cfg: Config, seed: int) -> tuple[Any, Any]:
    s = cfg.sdpg
    env = NominalEnv(cfg.env, seed, s.obs == "pixels")
    bounds = (s.log_std_min, s.log_std_max)
    return env, SDPGPolicy(env.obs_shape, env.action_dim, env.pixels, s.mean_bound, bounds)


def _no_check(cfg: Config) -> None:
    return None


def _check_groups(cfg: Config) -> None:
    actors, nominals = cfg.distributed.actors, cfg.sdpg.nominals
    if actors > nominals:
        raise ConfigError(
            f"--actors {actors} is more than sdpg.nominals={nominals}: each env actor owns "
            f"whole groups; use at most {nominals} actors or more nominals"
        )


ROLES: dict[str, Roles] = {
    "replay": Roles(
        learner=Learner,
        env_actor=EnvActor,
        replay=True,
        train_columns=("critic_loss", "actor_loss", "policy_lag_mean"),
        shown=(),
        shape=_replay_shape,
        check=_no_check,
        evaluation=_replay_evaluation,
    ),
    "iterations": Roles(
        learner=SDPGLearner,
        env_actor=GroupActor,
        replay=False,
        train_columns=(
            "critic_loss",
            "actor_loss",
            "sigma",
            "temperature",
            "window_s",
            "nominals_s",
            "clones_s",
            "decode_s",
            "learner_s",
            "iteration_s",
            "window_bytes",
        ),
        shown=(("sigma", "policy std"), ("temperature", "temperature"), ("iteration_s", "s/it")),
        shape=_nominal_shape,
        check=_check_groups,
        evaluation=_nominal_evaluation,
    ),
}


def roles_for(cfg: Config) -> Roles:
    """The roles of ``cfg.agent.algo``'s data flow."""
    return ROLES[algorithm(cfg.agent.algo).experience]
