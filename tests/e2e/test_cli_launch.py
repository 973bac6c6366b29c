"""`distdrq launch` end to end: real Ray (local single node), real MuJoCo, 2 CPUs."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distdrq.proctree import alive, descendants
from distdrq.replay.snapshot import read_snapshot
from distdrq.tblog import read_events

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

SMALL = [
    "--plain",
    "--actors",
    "2",
    "--shards",
    "2",
    "env.image_size=48",  # the learner's update sets the pace: 48 pixels take half 64's time
    "env.fast_render=true",
    "agent.batch_size=32",
    "agent.hidden_dim=64",
    "agent.feature_dim=16",
    "agent.device=cpu",
    "train.seed_frames=400",
    "train.eval_every_frames=100000",
    "train.eval_episodes=1",
    "distributed.samples_per_insert=8",
]


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distdrq.cli", "launch", *args]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*args), capture_output=True, text=True, timeout=timeout)


def _latest(run_dir: Path) -> dict:
    main = sorted(p for p in (run_dir / "checkpoints").glob("ckpt_*.pt") if p.name.count(".") == 1)
    return torch.load(main[-1], weights_only=True)["state"]


def _start_until(run_dir: Path, done) -> tuple[subprocess.Popen, list[str], set[int]]:
    """A long launch, read until ``done(line)``; its lines and every process seen below it."""
    proc = subprocess.Popen(
        launch_cmd(
            "--task", "cartpole_swingup", "--frames", "1000000", "--run-dir", str(run_dir), *SMALL
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    deadline = time.monotonic() + 300
    tree: set[int] = set()
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        tree |= descendants(proc.pid)
        if done(line):
            break
        assert time.monotonic() < deadline, "".join(seen)
    return proc, seen, tree


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


@pytest.mark.slow
def test_ctrl_c_checkpoints_then_resume_continues_to_the_budget(tmp_path):
    """Session 1 ends by Ctrl-C (a quick checkpoint, no process left behind); session 2 resumes
    from it (replay, learner, limiter, records) and ends at its frame budget. One test, two
    launches: each launch costs tens of seconds of Ray start-up on 2 cores."""
    run_dir = tmp_path / "run"
    proc, seen, tree = _start_until(run_dir, _learning_and_evaluated)
    tree |= descendants(proc.pid)
    assert tree, "no Ray child processes seen"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    first = "".join(seen) + out
    assert proc.returncode == 0, first
    assert "interrupted" in out and "checkpoint" in out
    assert "2 env actors, 2 replay shards, learner on cpu" in first
    assert "oversubscribed" in first  # 6 processes on this 2-core machine
    _gone(tree, 30)
    s1 = _latest(run_dir)
    c1 = s1["counters"]
    assert c1["frames"] > 0 and c1["updates"] > 0 and c1["episodes"] >= 1
    assert len(s1["replay_snapshots"]) == 2
    assert s1["rate_limiter"]["inserts"] > 0
    assert list((run_dir / "videos").glob("eval_*.gif"))  # the evaluator's first evaluation
    shard_files = sorted((run_dir / "replay").glob("shard_*/snapshot_*.ddrq"))
    assert len(shard_files) >= 2
    # Ctrl-C's snapshots are quick: no episode coded for disk yet, the replay codec's bytes kept
    assert _disk_coded(s1["replay_snapshots"]) == {False}

    budget = c1["frames"] + 1000  # one more cartpole episode (500 steps at action repeat 2)
    second = run("--resume", str(run_dir), "--frames", str(budget), "--plain")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"at frame {c1['frames']:,}" in second.stdout
    s2 = _latest(run_dir)
    c2 = s2["counters"]
    assert c2["frames"] >= budget and c2["updates"] > c1["updates"]
    assert c2["episodes"] >= c1["episodes"]
    assert s2["learner"]["version"] >= s1["learner"]["version"]
    # the replay came back: the limiter counts inserts of both sessions
    assert s2["rate_limiter"]["inserts"] > s1["rate_limiter"]["inserts"]
    assert s2["session"] == 1
    assert _disk_coded(s2["replay_snapshots"]) == {True}  # the end of the budget codes them all
    # the records continue as if the run had never stopped: no evaluation twice, frames ascending
    evals = [int(r.split(",")[0]) for r in (run_dir / "eval.csv").read_text().splitlines()[1:]]
    assert evals == sorted(set(evals)) and evals[-1] >= budget, evals
    trains = [int(r.split(",")[0]) for r in (run_dir / "train.csv").read_text().splitlines()[1:]]
    assert trains == sorted(trains), trains
    # and so do TensorBoard's events, written by the driver, rebuilt on resume
    points = read_events(run_dir)
    assert [step for step, _ in points["eval/eval_return"]] == evals
    assert [step for step, _ in points["train/episode_return"]] == trains
    assert points["eval/video"][0][0] == 0


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
