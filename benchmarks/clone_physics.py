"""SDPG's clone physics inside the system against a bare dm_control loop, same core, one run.

Bare: ``dm_control.suite.load(domain, task)`` and ``env.step`` with uniform random actions,
``action_repeat`` calls per agent step, reset at the episode's end: what a user's own loop
does. System: a state-actor :class:`~distdrq.run.groups.GroupRunner` (no rendering: one nominal
and ``--clones`` clones, restored to the nominal every window, stepped with the nominal's mean
plus noise through :class:`~distdrq.envs.clones.TaskPhysics`), counting every env's agent
steps. "physics" divides them by the runner's physics time (stepping, restores, resets, state
read-out); "window" by the whole window (the policy forward pass included). Both are pinned to
the same core, alternate in ``--rounds`` rounds (so load drift hits both alike), and the
median round is reported. Target (issue 11): physics at least 90% of bare.

    MUJOCO_GL=egl python benchmarks/clone_physics.py --out benchmarks/results/clone_physics.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from report import write_report  # benchmarks/report.py (the script's own directory)

from distdrq.config import EnvConfig, SDPGConfig
from distdrq.run.groups import GroupRunner


def bare(task: str, action_repeat: int, steps: int, seed: int) -> float:
    """Agent steps per second of a plain dm_control loop."""
    from dm_control import suite

    domain, name = task.split("_", 1)
    env = suite.load(domain, name, task_kwargs={"random": seed})
    spec = env.action_spec()
    rng = np.random.default_rng(seed)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        action = rng.uniform(spec.minimum, spec.maximum).astype(spec.dtype)
        for _ in range(action_repeat):
            ts = env.step(action)
        if ts.last():
            env.reset()
    return steps / (time.perf_counter() - start)


def system(runner: GroupRunner, windows: int) -> tuple[float, float]:
    """(agent steps per physics second, agent steps per window second) of ``windows``
    windows, every nominal and clone counted."""
    physics = wall = 0.0
    steps = 0
    for _ in range(windows):
        start = time.perf_counter()
        result = runner.run_window()
        wall += time.perf_counter() - start
        physics += result.seconds["physics"]
        steps += result.rewards.size  # G x (P + 1) x H
    return steps / physics, steps / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["cheetah_run", "walker_walk"])
    parser.add_argument("--clones", type=int, default=15)
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--action-repeat", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--windows", type=int, default=4, help="windows per system round")
    parser.add_argument("--cpu", type=int, default=0, help="the core both loops are pinned to")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)
    steps_per_round = args.windows * (args.clones + 1) * args.horizon
    results = {}
    for task in args.tasks:
        env = EnvConfig(task=task, action_repeat=args.action_repeat)
        sdpg = SDPGConfig(obs="state", nominals=1, clones=args.clones, horizon=args.horizon)
        runner = GroupRunner(env, sdpg, [0], seed=1)
        runner.run_window()  # warm-up: lazy initialisation
        bare(task, args.action_repeat, 200, seed=1)
        rounds = []
        for r in range(args.rounds):
            b = bare(task, args.action_repeat, steps_per_round, seed=r)
            phys, win = system(runner, args.windows)
            rounds.append({"bare": b, "physics": phys, "window": win})
        runner.close()
        med = {k: statistics.median(x[k] for x in rounds) for k in ("bare", "physics", "window")}
        results[task] = {
            "bare_steps_per_s": round(med["bare"], 1),
            "physics_steps_per_s": round(med["physics"], 1),
            "window_steps_per_s": round(med["window"], 1),
            "physics_vs_bare": round(
                statistics.median(x["physics"] / x["bare"] for x in rounds), 3
            ),
            "window_vs_bare": round(statistics.median(x["window"] / x["bare"] for x in rounds), 3),
            "rounds": rounds,
        }
        print(
            f"{task}: bare {med['bare']:,.0f} agent steps/s, clones in the system "
            f"{med['physics']:,.0f}/s of physics time "
            f"({results[task]['physics_vs_bare']:.0%} of bare), "
            f"{med['window']:,.0f}/s of window time ({results[task]['window_vs_bare']:.0%})",
            flush=True,
        )
    write_report(args.out, results, config=vars(args) | {"out": str(args.out)})


if __name__ == "__main__":
    main()
