"""`distdrq launch --algo sdpg` end to end: a real local Ray cluster, real MuJoCo, an env actor and
the learner SIGKILLed mid-run, Ctrl-C, then --resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.distributed import enable_token_auth_if_available  # noqa: E402

TINY = [
    "--plain",
    "--actors",
    "2",
    "--metrics-port",
    "0",
    "sdpg.obs=state",
    "sdpg.nominals=2",
    "sdpg.clones=2",
    "sdpg.horizon=8",
    "agent.device=cpu",
    "train.checkpoint_every_frames=320",
    "distributed.dashboard=false",
]
FRAMES_PER_ITERATION = 2 * 8 * 2  # nominals x window x action repeat (cheetah_run's preset)


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distdrq.cli", "launch", *args]


def _checkpoint(run_dir: Path) -> dict:
    main = sorted(p for p in (run_dir / "checkpoints").glob("ckpt_*.pt") if p.name.count(".") == 1)
    return torch.load(main[-1], weights_only=True)["state"]


def _until(predicate, proc, lines, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "launch ended early:\n" + "".join(lines)[-4000:]
        try:
            if value := predicate():
                return value
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # an actor is restarting
        assert time.monotonic() < deadline, "".join(lines)[-4000:]
        time.sleep(0.5)


def _counters(coord):
    return ray.get(coord.snapshot.remote(), timeout=30)


@pytest.mark.slow
def test_sdpg_launch_survives_killed_env_actor_and_learner_then_resumes(tmp_path):
    """One launch (each costs tens of seconds of Ray start-up on 2 cores): an env actor
    SIGKILLed mid-run, then the learner once a checkpoint exists, then Ctrl-C and --resume."""
    run_dir = tmp_path / "sdpg"
    proc = subprocess.Popen(
        _cmd("--algo", "sdpg", "--task", "cheetah_run", "--frames", "10000000")
        + ["--run-dir", str(run_dir), *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        _until(lambda: any("learner on" in x for x in lines), proc, lines)
        address = next(x for x in lines if x.startswith("Ray cluster at ")).split()[3]
        enable_token_auth_if_available()  # joining by explicit address
        ray.init(address=address, namespace="distdrq", log_to_driver=False)
        name = f"distdrq-{run_dir.name}"
        coord = ray.get_actor(f"{name}-coordinator")
        env1 = ray.get_actor(f"{name}-env-1")
        _until(lambda: _counters(coord).counters.updates >= 3, proc, lines)

        # an env actor SIGKILLed by PID, as the world does
        os.kill(ray.get(env1.pid.remote(), timeout=30), signal.SIGKILL)
        snap = _until(lambda: (s := _counters(coord)).role("env-1").starts >= 2 and s, proc, lines)
        after_kill = snap.counters.updates
        # the run goes on with both actors' groups: every iteration still counts 2 nominals
        snap = _until(
            lambda: (s := _counters(coord)).counters.updates >= after_kill + 3 and s, proc, lines
        )
        assert snap.counters.frames == snap.counters.updates * FRAMES_PER_ITERATION
        learner = ray.get_actor(f"{name}-learner")
        report = ray.get(learner.take_report.remote(), timeout=30)
        assert report.metrics["window_reruns"] >= 1
        _until(lambda: any("env-1 restarted" in x for x in lines), proc, lines)

        # then the learner, once a checkpoint exists: recreated from it
        _until(lambda: list((run_dir / "checkpoints").glob("ckpt_*.pt")), proc, lines)
        os.kill(ray.get(learner.pid.remote(), timeout=30), signal.SIGKILL)
        killed_at = _counters(coord).counters.updates
        _until(lambda: (s := _counters(coord)).role("learner").starts >= 2 and s, proc, lines)
        # the recreated learner continues the run's iteration count and weight versions
        snap = _until(
            lambda: (s := _counters(coord)).counters.updates >= killed_at + 3 and s, proc, lines
        )
        assert snap.counters.frames == snap.counters.updates * FRAMES_PER_ITERATION
        line = _until(
            lambda: next((x for x in lines if "learner restarted" in x and "from ckpt_" in x), 0),
            proc,
            lines,
        )
        source = run_dir / "checkpoints" / re.search(r"from (ckpt_\d+\.pt)", line)[1]
        restored = torch.load(source, weights_only=True)["state"]["learner"]
    finally:
        ray.shutdown()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
        reader.join(timeout=30)
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    assert "interrupted: stopping actors and writing a checkpoint" in out
    first = _checkpoint(run_dir)
    c1 = first["counters"]
    assert c1["updates"] >= killed_at + 3 and c1["frames"] == c1["updates"] * FRAMES_PER_ITERATION
    # the run's update count goes on counting the iterations the dead learner did after its
    # checkpoint; the agent's own count (its learning-rate schedule) is that of its weights
    lost = killed_at - restored["agent"]["num_updates"]
    assert restored["agent"]["num_updates"] == restored["updates"] and lost >= 0
    assert first["learner"]["agent"]["num_updates"] + lost == c1["updates"]
    assert c1["updates"] == first["learner"]["updates"]
    assert first["replay_snapshots"] == []
    # the evaluator ran SDPG's mean-action policy on a state nominal (no video: nothing renders)
    evals = (run_dir / "eval.csv").read_text().splitlines()
    assert len(evals) >= 2 and evals[0].startswith("frame,eval_return"), evals
    assert not list((run_dir / "videos").glob("*.gif"))

    target = c1["frames"] + 2 * FRAMES_PER_ITERATION
    second = subprocess.run(
        _cmd("--resume", str(run_dir), "--frames", str(target), "--plain", "--metrics-port", "0"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from" in second.stdout and f"at frame {c1['frames']:,}" in second.stdout
    c2 = _checkpoint(run_dir)["counters"]
    assert c2["frames"] >= target and c2["updates"] == c2["frames"] // FRAMES_PER_ITERATION
    agent = _checkpoint(run_dir)["learner"]["agent"]
    assert agent["num_updates"] + lost == c2["updates"]  # the iteration count continued
