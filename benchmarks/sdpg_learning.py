"""SDPG's CPU learning test (issue 11): state-actor cheetah_run, 8 nominals x 15 clones, a
32-step window, action repeat 2; pass = the mean return of the last 8 nominal episodes reaches
60 within 400 iterations (shared/reference/SDPG.md section 7: from about 12 to a mean of about
83 in a throwaway prototype). It runs ``distdrq train --algo sdpg`` for the whole budget and
reads the run's train.csv (``train_return`` is the mean of the last 8 nominal episodes).

    python benchmarks/sdpg_learning.py --run-dir runs/sdpg-cheetah-state [--iterations 400]

tests/integration/test_sdpg_learning.py runs the same configuration in process and stops as
soon as the criterion holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

NOMINALS, CLONES, WINDOW, REPEAT = 8, 15, 32, 2
FRAMES_PER_ITERATION = NOMINALS * WINDOW * REPEAT


def overrides(seed: int) -> list[str]:
    """The issue's learning-test configuration as KEY=VALUE overrides."""
    return [
        "sdpg.obs=state",
        f"sdpg.nominals={NOMINALS}",
        f"sdpg.clones={CLONES}",
        f"sdpg.horizon={WINDOW}",
        f"env.action_repeat={REPEAT}",
        f"train.seed={seed}",
        f"train.eval_every_frames={50 * FRAMES_PER_ITERATION}",
        "train.eval_episodes=2",
        "agent.device=cpu",
    ]


def summarize(train_csv: Path, threshold: float) -> dict:
    """First iteration whose last-8 mean reaches ``threshold``, best and final last-8 means,
    and the mean time split of an iteration."""
    with open(train_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    means = [(int(r["updates"]), float(r["train_return"])) for r in rows]
    means = [(i, m) for i, m in means if math.isfinite(m)]
    reached = next((i for i, m in means if m >= threshold), None)
    split = {
        key: sum(float(r[key]) for r in rows) / len(rows)
        for key in ("physics_s", "policy_s", "learner_s", "iteration_s")
    }
    sim_steps = int(rows[-1]["sim_steps"])
    return {
        "iterations": len(rows),
        "first_reached": reached,
        "first_batch_mean": means[0][1] if means else None,
        "best_last8": max((m for _, m in means), default=None),
        "final_last8": means[-1][1] if means else None,
        "wall_s": float(rows[-1]["wall_time"]),
        "sim_agent_steps_per_s": sim_steps / float(rows[-1]["wall_time"]),
        "mean_seconds": split,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=60.0)
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    frames = args.iterations * FRAMES_PER_ITERATION
    command = [sys.executable, "-m", "distdrq.cli", "train", "--algo", "sdpg", "--plain"]
    command += ["--task", "cheetah_run", "--frames", str(frames), "--run-dir", str(run_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    start = time.monotonic()
    subprocess.run(command + overrides(args.seed), check=True, env=env)
    result = summarize(run_dir / "train.csv", args.threshold)
    result |= {
        "command": " ".join(command[1:] + overrides(args.seed)),
        "elapsed_s": time.monotonic() - start,
        "load_at_end": os.getloadavg()[0],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "passed": result["first_reached"] is not None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
