"""benchmarks/gpu_suite.sh --dry-run: every step of the GPU suite at tiny sizes on the CPU, so
that the script cannot rot before a GPU node runs it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite  # noqa: E402

KEYS = {"title", "status", "seconds", "limit_s", "command", "log", "metrics", "details"}


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.mark.slow
def test_dry_run_measures_every_step_or_says_why_not(tmp_path):
    results_md = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    out = tmp_path / "suite.json"
    env = os.environ | {"PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["schema"] == gpu_suite.SCHEMA and report["mode"] == "dry-run"
    assert _finite(report["seconds"]) and report["machine"]["cores"] >= 1
    assert list(report["steps"]) == list(gpu_suite.STEPS)
    for name, step in report["steps"].items():
        assert set(step) >= KEYS, name
        assert _finite(step["seconds"]) and step["seconds"] <= step["limit_s"], name
        if step["status"] == "skipped":
            assert isinstance(step["skipped"], str) and step["skipped"], name
        else:
            assert step["status"] == "ok" and step["error"] is None, (name, step["error"])
            assert any(_finite(v) for v in step["metrics"].values()), name

    learner = report["steps"]["learner_update"]["metrics"]
    for config in ("baseline_fp32", "ours_fp32", "ours_mixed"):
        for batch in (4, 8):
            assert learner[f"{config}_b{batch}_updates_per_s"] > 0
    for profile in ("memory_drqv2", "memory_nano"):
        assert report["steps"][profile]["metrics"]["learner_estimate_mib"] > 0
    replay = report["steps"]["replay"]["metrics"]
    assert replay["walker_walk lz4d-star32 | batches/s"] > 0
    launch = report["steps"]["launch"]["metrics"]
    assert launch["frames"] >= 400 and launch["updates"] > 0 and launch["actors"] == 1
    assert launch["updates_per_second_overall"] > 0 and launch["samples_per_insert"] == 8
    sdpg = report["steps"]["sdpg"]["metrics"]
    assert sdpg["iteration_seconds"] > 0 and sdpg["physics_seconds"] > 0

    section = out.with_suffix(".md").read_text()
    assert "(DRY RUN)" in section and "these figures measure nothing" in section
    assert all(step["title"] in section for step in report["steps"].values())
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == results_md  # never appended
