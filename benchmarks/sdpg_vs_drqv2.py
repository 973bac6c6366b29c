"""SDPG against DrQ-v2 on cheetah_run at equal wall-clock on one CPU machine (issue 11).

Both run through ``distdrq train`` at the same time, one core each (``OMP_NUM_THREADS=1``), and
both are stopped with SIGTERM after the same number of seconds (a SIGTERM checkpoints and stops,
as Ctrl-C). Both use pixels and the same renderer (``env.fast_render=true``: shadows and
reflections off, several times faster software rendering, for both alike) and evaluate 5
mean-action episodes. DrQ-v2 runs its published cheetah_run settings; SDPG runs the pixel actor
(the default) with the group size of the issue's CPU learning test (8 nominals x 15 clones, a
32-step window), since the published 64 x 63 is about 50 s an iteration on one core.
Afterwards ``distdrq plot`` draws both against frames and wall-clock, and a JSON summary is
printed (eval returns by wall-clock, frames and updates/iterations reached).

    python benchmarks/sdpg_vs_drqv2.py --out-dir runs/sdpg-vs-drqv2 --seconds 3600
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "drqv2": [
        "--task",
        "cheetah_run",
        "env.fast_render=true",
        "train.eval_every_frames=2000",
        "train.eval_episodes=5",
        "train.checkpoint_every_frames=4000",
    ],
    "sdpg": [
        "--algo",
        "sdpg",
        "--task",
        "cheetah_run",
        "env.fast_render=true",
        "sdpg.nominals=8",
        "sdpg.clones=15",
        "sdpg.horizon=32",
        "train.eval_every_frames=51200",  # every 100 iterations of 8 x 32 x 2 frames
        "train.eval_episodes=5",
        "train.checkpoint_every_frames=51200",
    ],
}


def evals(run_dir: Path) -> list[dict]:
    """Rows of a run's eval.csv as (frame, wall-clock seconds, return)."""
    path = run_dir / "eval.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [
            {
                "frame": int(r["frame"]),
                "wall_s": round(float(r["wall_time"]), 1),
                "return": round(float(r["eval_return"]), 1),
            }
            for r in csv.DictReader(fh)
            if r.get("eval_return") not in (None, "")
        ]


def last_row(run_dir: Path) -> dict:
    path = run_dir / "train.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[-1] if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="the two run dirs go here")
    parser.add_argument("--seconds", type=float, default=3600.0, help="wall-clock per run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    procs = {}
    for name, extra in RUNS.items():
        run_dir = out / name
        command = [sys.executable, "-m", "distdrq.cli", "train", "--plain", "--frames", "100000000"]
        if (run_dir / "config.yaml").is_file():
            command = [sys.executable, "-m", "distdrq.cli", "train", "--plain"]
            command += ["--resume", str(run_dir)]
        else:
            command += ["--run-dir", str(run_dir), "--seed", str(args.seed), *extra]
        log = open(out / f"{name}.log", "a")  # noqa: SIM115 (closed when the run ends)
        procs[name] = (
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT),
            log,
        )
        print(" ".join(command[1:]), flush=True)
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(5)
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, log in procs.values():
        proc.wait()
        log.close()
    summary = {
        "seconds_each": args.seconds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_at_end": os.getloadavg()[0],
    }
    for name in RUNS:
        row = last_row(out / name)
        summary[name] = {
            "evals": evals(out / name),
            "frames": int(row.get("frame") or 0),
            "updates": int(row.get("updates") or 0),
            "exit_code": procs[name][0].returncode,
        }
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
