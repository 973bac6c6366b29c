"""Joining or starting the Ray cluster a launch runs on: reachability, auth, resources.

Everything ``distdrq launch`` and ``distdrq status`` need to know about Ray itself. Ray 2.60
has no public API for two things distdrq needs, so exactly two helpers touch private Ray
modules, each saying why: :func:`dashboard_url` here, and
:func:`distdrq.distributed.enable_token_auth_if_available` (kept in the package's
``__init__`` so that it stays importable without importing Ray).
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import ray

from distdrq.config import Config
from distdrq.distributed import enable_token_auth_if_available

NAMESPACE = "distdrq"
"""Ray namespace of every distdrq actor (``distdrq status`` looks there)."""


class LaunchError(RuntimeError):
    """The run cannot start or continue (cluster unreachable, resources impossible, ...)."""


def unreachable(address: str, timeout: float = 3.0) -> str | None:
    """Why nothing answers at ``address``'s ``host:port`` (None if something listens, or if
    the address names no port: "auto", "local")."""
    if ":" not in address:
        return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return str(exc)


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Raise :class:`LaunchError` in one line if nothing listens at ``host:port``."""
    reason = unreachable(address, timeout)
    if reason is not None:
        raise LaunchError(
            f"cannot reach the Ray cluster at {address} ({reason}); start one with "
            "`ray start --head` and pass its address, or drop --address for a local run"
        )


def _counts(cfg: Config) -> tuple[int, int, int]:
    """(env actors, replay shards, evaluators) of the run's data flow (:mod:`.roles`)."""
    from distdrq.distributed.roles import roles_for  # late: roles imports the actor modules

    d, roles = cfg.distributed, roles_for(cfg)
    return d.actors, d.shards if roles.replay else 0, int(d.evaluator)


def required_cpus(cfg: Config) -> float:
    """CPUs the topology asks for: one per env actor, shard and evaluator; one for the learner."""
    actors, shards, evaluators = _counts(cfg)
    return actors + shards + 1 + evaluators


def describe_roles(cfg: Config) -> str:
    """The processes a launch of ``cfg`` starts, in words (``8 actors + 2 shards + learner``)."""
    actors, shards, evaluators = _counts(cfg)
    evaluator = " + evaluator" if evaluators else ""
    actor_s, shard_s = "s" * (actors != 1), "s" * (shards != 1)
    return f"{actors} actor{actor_s} + {shards} shard{shard_s} + learner{evaluator}"


def _runtime_env(cfg: Config) -> dict[str, Any]:
    return {"env_vars": {"MUJOCO_GL": os.environ.get("MUJOCO_GL", cfg.env.gl_backend)}}


def connect(cfg: Config, address: str | None, notice: Any = print) -> dict[str, float]:
    """Join ``address`` (or RAY_ADDRESS), else start a local single-node Ray instance.

    Locally, fewer cores than the topology asks for are oversubscribed with a notice; on a
    cluster, resources that can never be satisfied raise :class:`LaunchError`.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        return _join(cfg, address)
    need = required_cpus(cfg)
    cores = os.cpu_count() or 1
    if need > cores:
        notice(
            f"notice: {cores} cores for {need:g} processes ({describe_roles(cfg)}): running oversubscribed"
        )
    dashboard = cfg.distributed.dashboard
    notice(
        "starting a local Ray instance (its own processes"
        + (" and dashboard" if dashboard else "")
        + ": 5-20 s)"
    )
    ray.init(
        address="local",  # a new instance, even if another Ray cluster runs on this machine
        num_cpus=max(cores, math.ceil(need)),
        namespace=NAMESPACE,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=_runtime_env(cfg),
        log_to_driver=False,
        configure_logging=False,
    )
    return ray.cluster_resources()


def _join(cfg: Config, address: str) -> dict[str, float]:
    """Join a running cluster; one-line errors for an unreachable or too small one."""
    check_reachable(address)
    enable_token_auth_if_available()
    ray.init(
        address=address, namespace=NAMESPACE, runtime_env=_runtime_env(cfg), log_to_driver=False
    )
    resources = ray.cluster_resources()
    have, need = resources.get("CPU", 0), required_cpus(cfg)
    if have < need:
        ray.shutdown()
        minimum = 3  # one env actor, one shard, the learner
        fix = "lower --actors (and --shards), drop the evaluator (distributed.evaluator=false)"
        if have < minimum:
            fix = (
                f"no topology fits in fewer than {minimum} CPUs: run `distdrq train` (one "
                "process, no Ray), or start the cluster with more CPUs than cores "
                f"(`ray start --head --num-cpus {math.ceil(need)}`)"
            )
        raise LaunchError(
            f"the cluster has {have:g} CPUs but this run needs {need:g} ({describe_roles(cfg)}); {fix}"
            ", or add nodes"
        )
    return resources


def dashboard_url() -> str | None:
    """The address of the Ray dashboard of the connected cluster (None without one).

    Ray 2.60 has no public API for it: ``ray.init`` returns it only in the context of a
    cluster it starts, not when it joins one, and ``ray.get_runtime_context()`` does not carry
    it. This is the one use of a private Ray module in distdrq; if it moves, the launch just
    does not print the dashboard address.
    """
    try:
        return ray._private.worker.get_dashboard_url() or None
    except Exception:  # private API: tolerate its absence in another Ray version
        return None
