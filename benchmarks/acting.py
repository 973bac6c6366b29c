"""An env actor's policy step: torch's Policy against NumpyPolicy, one thread, same weights.

Milliseconds per ``act`` (one 9x84x84 or 9x64x64 observation, exploration on) for DrQ-v2 and
DrQ with the drqv2 and nano encoders, alternating the two in ``--rounds`` rounds (median),
and the largest difference of their eval actions. torch runs with one intra-op thread, NumPy's
OpenBLAS with one thread (as in an env actor).

    python benchmarks/acting.py --out benchmarks/results/acting.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from report import write_report  # benchmarks/report.py (the script's own directory)

from distdrq.agent import Policy, make_agent
from distdrq.config import load_config
from distdrq.numpy_policy import NumpyPolicy, limit_blas_threads

CASES = {
    "drqv2, drqv2 encoder, 84x84": ("walker_walk", []),
    "drq, drqv2 encoder, 84x84": ("cheetah_run", ["agent.algo=drq"]),
    "drq, nano encoder, 64x64 (nano profile)": (
        "cheetah_run",
        ["agent.algo=drq", "agent.encoder=nano", "env.image_size=64"],
    ),
}


def per_act_ms(policy, obs: np.ndarray, n: int) -> float:
    policy.act(obs, 10**6, eval_mode=False)
    start = time.perf_counter()
    for _ in range(n):
        policy.act(obs, 10**6, eval_mode=False)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--acts", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    limit_blas_threads(1)
    results = {}
    for label, (task, overrides) in CASES.items():
        cfg = load_config(task, overrides=[*overrides, "agent.device=cpu"])
        shape = (3 * cfg.env.frame_stack, cfg.env.image_size, cfg.env.image_size)
        weights = make_agent(shape, 6, cfg.agent).policy_state_dict()
        theirs = Policy(shape, 6, cfg.agent)
        theirs.load_policy_state_dict(weights, 0)
        mine = NumpyPolicy(shape, 6, cfg.agent, seed=0)
        mine.load_policy_state_dict({k: v.numpy() for k, v in weights.items()}, 0)
        obs = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        diff = float(np.abs(theirs.act(obs, 0, True) - mine.act(obs, 0, True)).max())
        rounds = [
            (per_act_ms(theirs, obs, args.acts), per_act_ms(mine, obs, args.acts))
            for _ in range(args.rounds)
        ]
        t, n = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        results[label] = {
            "torch_ms": round(t, 3),
            "numpy_ms": round(n, 3),
            "max_eval_action_diff": diff,
        }
        print(
            f"{label}: torch {t:.2f} ms/act, numpy {n:.2f} ms/act, eval actions differ by {diff:.1e}"
        )
    write_report(args.out, results)


if __name__ == "__main__":
    main()
