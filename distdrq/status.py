"""``distdrq status``: the live state of every distdrq run on a Ray cluster."""

from __future__ import annotations

import math
import os
from typing import Any

from distdrq.distributed import enable_token_auth_if_available
from distdrq.distributed.cluster import NAMESPACE, LaunchError, check_reachable


def _alive(handle: Any) -> bool:
    import ray

    try:
        ray.get(handle.ping.remote(), timeout=5)
        return True
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        return False


def collect_status(address: str) -> list[dict[str, Any]]:
    """One entry per run found in the ``distdrq`` namespace of the cluster at ``address``."""
    import ray

    if address not in ("auto",):
        check_reachable(address)
        enable_token_auth_if_available()
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    try:
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == NAMESPACE
        ]
        runs = sorted({n[: -len("-coordinator")] for n in names if n.endswith("-coordinator")})
        out = []
        for run in runs:
            snap = ray.get(ray.get_actor(f"{run}-coordinator").snapshot.remote(), timeout=10)
            envs = sorted(n for n in names if n.startswith(f"{run}-env-"))
            alive = sum(_alive(ray.get_actor(n)) for n in envs)
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
        raise LaunchError(
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
