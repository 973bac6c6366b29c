"""`distdrq launch` end to end: real Ray (local single node), real MuJoCo, 2 CPUs: one-line
errors here; the helpers of the launches in test_fault_tolerance.py (a run's life: SIGKILLs,
Ctrl-C, --resume) and test_observability.py (Prometheus, the SAC-based DrQ)."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distdrq.checkpoint import list_checkpoints
from distdrq.proctree import alive
from distdrq.replay.snapshot import read_snapshot

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

SMALL = [
    "--plain",
    "--actors",
    "2",
    "--shards",
    "2",
    "env.image_size=32",  # the learner's update sets the pace: 32 pixels take 40% of 48's time
    "env.fast_render=true",
    "agent.batch_size=32",
    "agent.hidden_dim=64",
    "agent.feature_dim=16",
    "agent.device=cpu",
    "train.seed_frames=400",
    "train.eval_every_frames=100000",
    "train.eval_episodes=1",
    "distributed.samples_per_insert=8",
    "distributed.dashboard=false",  # its dozen processes: 5 CPU-s a launch (the Prometheus
    # launch of test_observability.py keeps it)
]


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distdrq.cli", "launch", *args]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*args), capture_output=True, text=True, timeout=timeout)


def _newest_checkpoint(run_dir: Path) -> Path:
    """The newest main checkpoint file (not a ``.broken`` or side file)."""
    return list_checkpoints(run_dir)[0]


def _latest(run_dir: Path) -> dict:
    return torch.load(_newest_checkpoint(run_dir), weights_only=True)["state"]


def _gone(tree: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in tree if alive(p)], "processes left behind"


def _disk_coded(snapshots: list[str]) -> set[bool]:
    """Whether each episode of these shard snapshots is coded for disk (``cm``)."""
    coded = set()
    for path in snapshots:
        shard = read_snapshot(path)["shard"]
        for i in range(len(shard["episode_keys"])):
            coded.add(f"episode.{i}.frames.cm" in shard)
    return coded


_PANEL = re.compile(r"updates/s ([\d.]+) \| episode (\d+) .*\| eval return (\S+)")


def _learning_and_evaluated(line: str) -> bool:
    """A panel line after the first update, the first finished episode and the first eval."""
    m = _PANEL.search(line)
    return bool(m) and float(m[1]) > 0 and int(m[2]) >= 1 and m[3] != "--"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "walker_walkk"], "unknown task 'walker_walkk'"),
        (["distributed.samples_per_insert=lots"], "distributed.samples_per_insert='lots'"),
        (["--actors", "0"], "--actors 0: must be at least 1"),
        (["--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    ],
)
def test_launch_errors_are_one_line_and_quick(tmp_path, args, message):
    start = time.monotonic()
    result = run(*args, "--run-dir", str(tmp_path / "r"), timeout=60)
    assert result.returncode in (1, 2), result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "r" / "config.yaml").exists()  # nothing left to block a retry
