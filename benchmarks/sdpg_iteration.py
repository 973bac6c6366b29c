"""How one SDPG iteration's time splits (physics, policy, rendering, learner), single process.

    python benchmarks/sdpg_iteration.py --device cuda --out FILE.json [KEY=VALUE ...]

Runs ``--warmup`` iterations, then ``--iterations`` timed ones of ``distdrq train --algo sdpg``'s
loop (``SDPGTrainer.iteration``) on ``--task`` and writes
``{"iteration_seconds": s, "phases": {"<phase>": s, ...}, ...}`` (means over the timed
iterations), the shape ``benchmarks/gpu_suite.sh`` reads. KEY=VALUE overrides size the run
(the GPU suite uses 16 nominals x 15 clones, pixels; its dry run a tiny state-actor run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from distdrq.config import load_config
from distdrq.sdpg_trainer import SDPGTrainer

PHASE_SUFFIX = "_s"


def measure(task: str, device: str, overrides: list[str], warmup: int, iterations: int) -> dict:
    cfg = load_config(task, overrides=["agent.algo=sdpg", f"agent.device={device}", *overrides])
    with tempfile.TemporaryDirectory(prefix="sdpg-iteration-") as tmp:
        trainer = SDPGTrainer(cfg, Path(tmp))
        try:
            for _ in range(warmup):
                trainer.iteration()
            rows = [trainer.iteration() for _ in range(iterations)]
        finally:
            trainer.close()
    phases = sorted(
        k for k in rows[0] if k.endswith(PHASE_SUFFIX) and k not in ("iteration_s", "window_s")
    )
    s = cfg.sdpg
    return {
        "iteration_seconds": float(np.mean([r["iteration_s"] for r in rows])),
        "phases": {k[: -len(PHASE_SUFFIX)]: float(np.mean([r[k] for r in rows])) for k in phases},
        "window_bytes": float(np.mean([r["window_bytes"] for r in rows])),
        "config": {
            "task": task,
            "device": device,
            "obs": s.obs,
            "nominals": s.nominals,
            "clones": s.clones,
            "horizon": s.horizon,
        },
        "iterations": iterations,
        "warmup": warmup,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cheetah_run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_args()
    start = time.monotonic()
    result = measure(args.task, args.device, args.overrides, args.warmup, args.iterations)
    result["elapsed_seconds"] = time.monotonic() - start
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
