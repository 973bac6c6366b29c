"""SDPG on Ray against one process (issue 11): seconds per iteration on 1 and 2 env actors
and in one process, same configuration, and the bytes one actor's window carries to the
learner (the pickled WindowResult, state and pixel actors).

One process is ``distdrq train``'s iteration (a GroupRunner and the agent in one process);
Ray is ``distdrq launch``'s (a coordinator and K GroupActors by name on a local Ray instance,
the SDPGLearner's iteration run in this process, as its actor's ``run`` loop would).

    PYTHONPATH=. MUJOCO_GL=egl python benchmarks/sdpg_launch.py [--iterations 10]
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


def on_ray(iterations: int, actors: int) -> tuple[list[float], dict[str, float]]:
    """Seconds of each distributed iteration on ``actors`` GroupActors; the last metrics."""
    cfg = load_config(TASK, overrides=[*SMALL, "sdpg.obs=state", f"distributed.actors={actors}"])
    name = f"bench-sdpg-{actors}"
    coord = ray.remote(Coordinator).options(name=f"{name}-coordinator").remote(name)
    options = {"max_restarts": -1, "max_concurrency": 3, "num_cpus": 1}
    envs = [
        ray.remote(GroupActor).options(name=f"{name}-env-{i}", **options).remote(i, cfg, name, 0)
        for i in range(actors)
    ]
    learner = SDPGLearner(cfg, (17,), 6, name)
    times = []
    for _ in range(iterations + 1):
        start = time.perf_counter()
        learner.iteration(envs)
        times.append(time.perf_counter() - start)
    metrics = learner.take_report().metrics
    for actor in [coord, *envs]:
        ray.kill(actor, no_restart=True)
    return times[1:], metrics


def window_bytes(obs: str) -> tuple[int, int]:
    """(pickled bytes, array bytes) of one window of all groups."""
    cfg = load_config(TASK, overrides=[*SMALL, f"sdpg.obs={obs}"])
    runner = GroupRunner(cfg.env, cfg.sdpg, range(cfg.sdpg.nominals), cfg.train.seed)
    first = runner.nominals[0]
    agent = make_agent(
        first.obs_shape, first.action_dim, cfg.agent, sdpg=cfg.sdpg, state_dim=runner.state_dim
    )
    runner.set_weights(agent.policy_state_dict(), 0)
    result = runner.run_window()
    runner.close()
    return len(pickle.dumps(result, protocol=5)), result.nbytes


def _line(label: str, times: list[float]) -> str:
    return f"| {label} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"config: {TASK} {' '.join(SMALL)} sdpg.obs=state")
    print("| loop | median s/iteration | min | max |\n|---|---|---|---|")
    print(_line("one process", one_process(args.iterations, "state")))
    ray.init(num_cpus=3, namespace="distdrq", log_to_driver=False, include_dashboard=False)
    try:
        for actors in (1, 2):
            times, m = on_ray(args.iterations, actors)
            print(_line(f"Ray, {actors} actor(s)", times))
            split = ", ".join(
                f"{k} {m[k]:.3f}" for k in ("window_s", "learner_s", "physics_s", "transfer_s")
            )
            print(f"|   last iteration's split | {split} | | |")
    finally:
        ray.shutdown()
    for obs in ("state", "pixels"):
        pickled, arrays = window_bytes(obs)
        print(f"window of 8 groups, {obs} actor: {pickled:,} bytes pickled ({arrays:,} in arrays)")
    print(f"load at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
