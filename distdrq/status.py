"""``distdrq status``: the live state of every distdrq run on a Ray cluster.

It answers in about a second: it imports Ray and nothing of the training stack (no torch, no
launch module; ``distdrq.cli`` imports none of them either), and reads whether env actors are
alive from Ray's state API, since a handle to an env actor would load its class (torch).
"""

from __future__ import annotations

import math
import os
from typing import Any

from distdrq.distributed import enable_token_auth_if_available
from distdrq.distributed.cluster import NAMESPACE, unreachable  # Ray, config: no torch

PING_TIMEOUT_S = 2.0
"""How long the env actors of a run get to answer a ping (all at once)."""


class StatusError(RuntimeError):
    """``distdrq status`` cannot reach the cluster."""


def _check_reachable(address: str) -> None:
    reason = unreachable(address)
    if reason is not None:
        raise StatusError(
            f"no Ray cluster found at {address} ({reason}); pass --address of a running "
            "`distdrq launch` or `ray start --head`"
        )


def _actor_states() -> dict[str, str] | None:
    """Ray's state (ALIVE, RESTARTING, DEAD, ...) of each named distdrq actor, read from the
    cluster's state API (its dashboard) without loading the actors' classes, which would import
    torch; an actor whose name has several entries (restarts) counts as alive if one is. None
    where the cluster has no dashboard."""
    import ray
    from ray.util.state import list_actors

    try:
        actors = list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("ray_namespace", "=", NAMESPACE)],
            limit=10_000,  # the API server's maximum
            timeout=10,
        )
    except Exception:  # noqa: BLE001 - no dashboard or state API: the caller pings instead
        return None
    states: dict[str, str] = {}
    for actor in actors:
        if actor.name and states.get(actor.name) != "ALIVE":
            states[actor.name] = actor.state
    return states


def _count_alive(names: list[str], states: dict[str, str] | None) -> int:
    """How many of the actors ``names`` are alive: by ``states``, else by a ping (all at once,
    answered within :data:`PING_TIMEOUT_S`)."""
    import ray

    if states is not None:
        return sum(states.get(n) == "ALIVE" for n in names)
    refs = [ray.get_actor(n).ping.remote() for n in names]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PING_TIMEOUT_S)
    alive = 0
    for ref in ready:
        try:
            ray.get(ref)
            alive += 1
        except ray.exceptions.RayError:  # died
            pass
    return alive


def collect_status(address: str) -> list[dict[str, Any]]:
    """One entry per run found in the ``distdrq`` namespace of the cluster at ``address``."""
    import ray

    if address not in ("auto",):
        _check_reachable(address)
        enable_token_auth_if_available()
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    try:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == NAMESPACE
        ]
        runs = sorted({n[: -len("-coordinator")] for n in names if n.endswith("-coordinator")})
        states = _actor_states() if runs else None
        out = []
        for run in runs:
            snap = ray.get(ray.get_actor(f"{run}-coordinator").snapshot.remote(), timeout=10)
            envs = sorted(n for n in names if n.startswith(f"{run}-env-"))
            alive = _count_alive(envs, states)
            out.append({"run": run, "snapshot": snap, "actors": len(envs), "alive": alive})
        return out
    finally:
        ray.shutdown()


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "--"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def print_status(address: str | None) -> int:
    """Print a table of the runs on the cluster (``address`` or RAY_ADDRESS or the local one)."""
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        runs = collect_status(address)
    except ConnectionError as exc:
        raise StatusError(
            f"no Ray cluster found at {address} ({exc}); pass --address of a running "
            "`distdrq launch` or `ray start --head`"
        ) from exc
    if not runs:
        print(f"no distdrq runs on the Ray cluster at {address}")
        return 0
    header = (
        f"{'run':<28} {'env actors':>10} {'restarts':>8} {'frames':>12} {'updates':>10} "
        f"{'episodes':>9} {'train ret':>9} {'eval ret':>9} {'weights v':>9} {'state':>8}"
    )
    print(header)
    for entry in runs:
        snap = entry["snapshot"]
        c = snap.counters
        state = "stopping" if snap.stop else "running"
        print(
            f"{entry['run']:<28} {entry['alive']:>4}/{entry['actors']:<5} {snap.restarts:>8} "
            f"{c.frames:>12,} {c.updates:>10,} {c.episodes:>9,} "
            f"{_fmt(c.last_train_return):>9} {_fmt(c.last_eval_return):>9} "
            f"{c.weight_version:>9} {state:>8}"
        )
        for role, info in sorted(snap.roles.items()):
            if info.restarts:
                print(f"    {role}: restarted {info.restarts} time(s)")
    return 0
