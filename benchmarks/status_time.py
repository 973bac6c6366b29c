"""Wall-clock time of ``distdrq status`` against a live run (issue 14, item 5).

Starts a small ``distdrq launch`` (local Ray, cartpole_swingup, 1 env actor, tiny networks,
CPU) unless ``--address`` names a cluster with a run on it, then times ``--reps`` runs of
``python -m distdrq.cli status --address ADDRESS`` (a fresh process each: what a user waits
for) for each checkout of ``--code`` (PYTHONPATH), alternating, and stops the launch.

    python benchmarks/status_time.py [--code .,/tmp/base] [--reps 5] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAUNCH = [
    "--plain", "--task", "cartpole_swingup", "--frames", "10000000", "--actors", "1",
    "--shards", "1", "env.image_size=64", "env.fast_render=true", "agent.batch_size=8",
    "agent.hidden_dim=32", "agent.feature_dim=16", "agent.device=cpu", "train.seed_frames=400",
    "train.eval_every_frames=10000000", "distributed.evaluator=false",
    "distributed.samples_per_insert=4",
]  # fmt: skip


def start_launch(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """A small launch in the background and the address of its Ray cluster."""
    cmd = [sys.executable, "-m", "distdrq.cli", "launch", "--run-dir", str(run_dir), *LAUNCH]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Ray cluster at "):
            address = line.split()[3]
        if "learner on" in line:
            break
    if address is None:
        proc.kill()
        raise SystemExit("the launch did not start: " + " ".join(cmd))
    return proc, address


def time_status(code: str, address: str) -> float:
    root = Path(code).resolve()  # also the working directory, which `python -m` puts first
    env = os.environ | {"PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "distdrq.cli", "status", "--address", address]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=120)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"status failed with {code}: {out.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", default=".", help="checkouts to time, comma separated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--address", help="a cluster with a distdrq run (default: start one)")
    p.add_argument("--run-dir", type=Path, default=Path("/tmp/status_time_run"))
    args = p.parse_args()
    launch, address = (None, args.address) if args.address else start_launch(args.run_dir)
    codes = args.code.split(",")
    times: dict[str, list[float]] = {c: [] for c in codes}
    try:
        time.sleep(5)  # let the run's first chunks arrive
        for _ in range(args.reps):
            for code in codes:
                times[code].append(time_status(code, address))
    finally:
        if launch is not None:
            launch.send_signal(signal.SIGINT)
            launch.communicate(timeout=300)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end")
    print("| code | median s | min s | max s | runs |\n|---|---|---|---|---|")
    for code, ts in times.items():
        print(
            f"| {code} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | {len(ts)} |"
        )


if __name__ == "__main__":
    main()
