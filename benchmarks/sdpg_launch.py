"""SDPG on Ray against one process (issue 11): seconds per iteration on 1 and 2 env actors
and in one process, same configuration, how the iteration splits (physics, rendering, policy,
frame coding, transfer, decoding, learner), for state and pixel actors, and the bytes the
windows of one iteration carry to the learner (the pickled WindowResults, with the pixel
actor's frames raw and coded by the replay codec, as ``launch`` sends them).

One process is ``distdrq train``'s iteration (a GroupRunner and the agent in one process);
Ray is ``distdrq launch``'s (a coordinator and K GroupActors by name on a local Ray instance,
the SDPGLearner's iteration run in this process, as its actor's ``run`` loop would).

    PYTHONPATH=. MUJOCO_GL=egl python benchmarks/sdpg_launch.py [--iterations 10]
    PYTHONPATH=. MUJOCO_GL=egl python benchmarks/sdpg_launch.py --slow-actor-only

It also compares, with one of 2 env actors at half speed, every actor stepping its own groups'
clones against the clone jobs shared over the actors (work sharing).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import statistics
import time

import ray
import torch

from distdrq.agent import make_agent
from distdrq.config import load_config
from distdrq.distributed.coordinator import Coordinator
from distdrq.distributed.group_actor import GroupActor
from distdrq.distributed.sdpg_learner import SDPGLearner
from distdrq.run.groups import GroupRunner

TASK = "cheetah_run"
SMALL = ["agent.algo=sdpg", "agent.device=cpu", "sdpg.nominals=8", "sdpg.clones=15"]
SMALL += ["sdpg.horizon=32", "env.action_repeat=2"]


def one_process(iterations: int, obs: str) -> list[float]:
    """Seconds of each iteration of the single-process loop (window + learner step)."""
    cfg = load_config(TASK, overrides=[*SMALL, f"sdpg.obs={obs}"])
    runner = GroupRunner(cfg.env, cfg.sdpg, range(cfg.sdpg.nominals), cfg.train.seed)
    first = runner.nominals[0]
    agent = make_agent(
        first.obs_shape, first.action_dim, cfg.agent, sdpg=cfg.sdpg, state_dim=runner.state_dim
    )
    times = []
    for i in range(iterations + 1):
        start = time.perf_counter()
        runner.set_weights(agent.policy_state_dict(), i)
        agent.learn([runner.run_window()])
        times.append(time.perf_counter() - start)
    runner.close()
    return times[1:]  # the first pays for lazy initialisation


def on_ray(iterations: int, actors: int, obs: str) -> tuple[list[float], dict[str, float]]:
    """Seconds of each distributed iteration on ``actors`` GroupActors; the mean metrics."""
    cfg = load_config(TASK, overrides=[*SMALL, f"sdpg.obs={obs}", f"distributed.actors={actors}"])
    name = f"bench-sdpg-{actors}-{obs}"
    coord = ray.remote(Coordinator).options(name=f"{name}-coordinator").remote(name)
    options = {"max_restarts": -1, "max_concurrency": 3, "num_cpus": 1}
    envs = [
        ray.remote(GroupActor).options(name=f"{name}-env-{i}", **options).remote(i, cfg, name, 0)
        for i in range(actors)
    ]
    learner = SDPGLearner(cfg, (17,) if obs == "state" else (9, 84, 84), 6, name)
    times, reports = [], []
    for _ in range(iterations + 1):
        start = time.perf_counter()
        learner.iteration(envs)
        times.append(time.perf_counter() - start)
        reports.append(learner.take_report().metrics)
    metrics = {k: statistics.mean(r[k] for r in reports[1:]) for k in SPLIT + ("window_bytes",)}
    for actor in [coord, *envs]:
        ray.kill(actor, no_restart=True)
    return times[1:], metrics


def _half_speed_actor():
    """A GroupActor at half speed: after each call it waits as long as the call took (a
    machine twice as slow, or a core shared with another process); by value for Ray."""

    class HalfSpeedGroupActor(GroupActor):
        def run_window(self, weights, version):
            start = time.perf_counter()
            out = super().run_window(weights, version)
            time.sleep(time.perf_counter() - start)
            return out

        def run_nominals(self, weights, version):
            start = time.perf_counter()
            out = super().run_nominals(weights, version)
            time.sleep(time.perf_counter() - start)
            return out

        def run_clones(self, jobs):
            start = time.perf_counter()
            out = super().run_clones(jobs)
            time.sleep(time.perf_counter() - start)
            return out

    return HalfSpeedGroupActor


def slow_actor(iterations: int) -> dict[str, list[float]]:
    """Seconds of the windows of 2 env actors, the second at half speed: every actor stepping
    all its groups' clones itself (``run_window``, the protocol before work sharing) against
    nominals then shared clone jobs (``SDPGLearner._clones``); state actor."""
    cfg = load_config(TASK, overrides=[*SMALL, "sdpg.obs=state", "distributed.actors=2"])
    name = "bench-sdpg-slow"
    coord = ray.remote(Coordinator).options(name=f"{name}-coordinator").remote(name)
    options = {"max_restarts": -1, "max_concurrency": 3, "num_cpus": 1}
    envs = [
        ray.remote(cls).options(name=f"{name}-env-{i}", **options).remote(i, cfg, name, 0)
        for i, cls in enumerate((GroupActor, _half_speed_actor()))
    ]
    learner = SDPGLearner(cfg, (17,), 6, name)
    out: dict[str, list[float]] = {"own clones": [], "shared clones": [], "jobs to the slow": []}
    for _ in range(iterations + 1):
        start = time.perf_counter()
        ray.get([e.run_window.remote(learner._weights, learner.version) for e in envs])
        out["own clones"].append(time.perf_counter() - start)
        start = time.perf_counter()
        parts = ray.get([e.run_nominals.remote(learner._weights, learner.version) for e in envs])
        learner._clones(envs, [jobs for _, jobs in parts])
        out["shared clones"].append(time.perf_counter() - start)
        out["jobs to the slow"].append(learner.clone_jobs[1] / sum(learner.clone_jobs))
    for actor in [coord, *envs]:
        ray.kill(actor, no_restart=True)
    return {k: v[1:] for k, v in out.items()}


SPLIT = (
    "window_s",
    "physics_s",
    "render_s",
    "policy_s",
    "encode_s",
    "transfer_s",
    "decode_s",
    "learner_s",
)


def window_bytes(obs: str) -> dict[str, float]:
    """Pickled bytes of one window of all groups, raw and coded (pixels), and the seconds
    coding and decoding took."""
    cfg = load_config(TASK, overrides=[*SMALL, f"sdpg.obs={obs}"])
    runner = GroupRunner(cfg.env, cfg.sdpg, range(cfg.sdpg.nominals), cfg.train.seed)
    first = runner.nominals[0]
    agent = make_agent(
        first.obs_shape, first.action_dim, cfg.agent, sdpg=cfg.sdpg, state_dim=runner.state_dim
    )
    runner.set_weights(agent.policy_state_dict(), 0)
    result = runner.run_window()
    runner.close()
    start = time.perf_counter()
    coded = result.coded(cfg.replay.codec)
    encoded = time.perf_counter()
    data = pickle.dumps(coded, protocol=5)
    pickle.loads(data).decoded()
    decoded = time.perf_counter()
    return {
        "raw": len(pickle.dumps(result, protocol=5)),
        "coded": len(data),
        "encode_s": encoded - start,
        "decode_s": decoded - encoded,
    }


def _print_slow(out: dict[str, list[float]]) -> None:
    print("2 state-actor env actors, the second at half speed: window seconds")
    print("| clones | median s/window | min | max |\n|---|---|---|---|")
    for key in ("own clones", "shared clones"):
        print(_line(key, out[key]))
    share = statistics.mean(out["jobs to the slow"])
    print(f"share of clone jobs the half-speed actor stepped: {share:.2f} (even: 0.50)")


def _line(label: str, times: list[float]) -> str:
    return f"| {label} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument(
        "--slow-actor-only", action="store_true", help="only the half-speed actor comparison"
    )
    args = parser.parse_args()
    if args.slow_actor_only:
        torch.set_num_threads(1)
        ray.init(num_cpus=3, namespace="distdrq", log_to_driver=False, include_dashboard=False)
        try:
            _print_slow(slow_actor(args.iterations))
        finally:
            ray.shutdown()
        return
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"config: {TASK} {' '.join(SMALL)} sdpg.obs=state")
    print("| loop | median s/iteration | min | max |\n|---|---|---|---|")
    print(_line("one process", one_process(args.iterations, "state")))
    ray.init(num_cpus=3, namespace="distdrq", log_to_driver=False, include_dashboard=False)
    try:
        for obs in ("state", "pixels"):
            for actors in (1, 2):
                times, m = on_ray(args.iterations, actors, obs)
                print(_line(f"Ray, {obs} actor, {actors} env actor(s)", times))
                split = ", ".join(f"{k[:-2]} {m[k]:.3f}" for k in SPLIT)
                print(f"|   mean split (actor parts summed over actors) | {split} | | |")
                print(f"|   bytes actors -> learner an iteration | {m['window_bytes']:,.0f} | | |")
        _print_slow(slow_actor(args.iterations))
    finally:
        ray.shutdown()
    for obs in ("state", "pixels"):
        b = window_bytes(obs)
        print(
            f"window of 8 groups, {obs} actor: {b['raw']:,} bytes pickled raw, {b['coded']:,} "
            f"with frames coded ({b['raw'] / b['coded']:.1f}x fewer); coding "
            f"{b['encode_s']:.3f} s, decoding {b['decode_s']:.3f} s"
        )
    print(f"load at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
