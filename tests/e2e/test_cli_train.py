"""End to end through the `distdrq` console script on a real DMC task (CPU, real rendering)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from distdrq.checkpoint import list_checkpoints
from distdrq.progress import _fmt
from distdrq.tblog import read_events

SMALL = [
    "--plain",
    "env.image_size=32",
    "env.fast_render=true",
    "train.seed_frames=200",
    "train.eval_every_frames=100000",
    "train.eval_episodes=1",
    "train.log_every_frames=100",
    "agent.batch_size=32",
    "agent.hidden_dim=64",
    "agent.feature_dim=16",
    "agent.num_expl_steps=50",
    "agent.device=cpu",
]


def distdrq(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    return subprocess.run(
        [sys.executable, "-m", "distdrq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _newest_frame(run_dir) -> int:
    """the frame of the run's newest main checkpoint"""
    return int(list_checkpoints(run_dir)[0].stem.split("_")[1])


def _evens(start: int, stop: int) -> int:
    """agent steps in [start, stop) with an update (update_every_steps=2, after seeding)"""
    return len(range(start + start % 2, stop, 2))


@pytest.mark.slow
def test_train_checkpoint_sigkill_resume_and_plot(tmp_path):
    """A run's life through the CLI: a short run checkpoints; resumed for longer, it is killed
    with SIGKILL mid-run; resumed again, the rows the dead process wrote after its last
    checkpoint are dropped, so frames only go forward, no evaluation appears twice, and the
    counters are those of a run that never stopped. Then its curves are plotted."""
    import signal
    import time

    run_dir = tmp_path / "run"
    small = [x for x in SMALL if not x.startswith("train.eval_every_frames")]
    small += ["env.action_repeat=8", "train.eval_every_frames=400"]  # seeding: 25 steps
    small += ["train.checkpoint_every_frames=400", "train.log_every_frames=200"]
    args = ["train", "--task", "cartpole_swingup", "--run-dir", str(run_dir), *small]
    first = distdrq(*args, "--frames", "400")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done at frame 400" in first.stdout
    # the evaluation at frame 0 (minutes on a CPU) is announced before it runs
    lines = first.stdout.splitlines()
    announced = lines.index(next(x for x in lines if x.startswith("evaluating at frame 0:")))
    assert any(x.startswith("eval at frame 0") for x in lines[announced + 1 :])
    # the final line shows the final evaluation, not the one before it
    final = float((run_dir / "eval.csv").read_text().splitlines()[-1].split(",")[4])
    assert f"eval return {_fmt(final)}" in [x for x in lines if x.startswith("[")][-1]
    s1 = _summary(run_dir)
    assert s1["frames"] == 400 and s1["steps"] == 50 and s1["updates"] == _evens(25, 50) > 0
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))
    main = [p for p in ckpts if p.name.count(".") == 1]
    assert [p.name for p in main] == ["ckpt_000000000400.pt"]
    raw = torch.load(main[0], weights_only=True)  # plain data only
    assert raw["state"]["counters"]["frames"] == 400
    assert (run_dir / "eval.csv").read_text().count("\n") >= 2  # header + evals
    assert (run_dir / "videos" / "eval_000000000000.gif").stat().st_size > 1000

    # resumed with a far budget, then killed once it has evaluated past a newer checkpoint
    # (checkpoints fall on episode ends: every 1000 frames for cartpole)
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    killed_log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distdrq.cli", "train", "--resume", str(run_dir), "--frames",
         "100000", "--plain"],
        stdout=killed_log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            text = (run_dir / "eval.csv").read_text()
            evals = [int(r.split(",")[0]) for r in text.splitlines()[1:]]
            newest = _newest_frame(run_dir)
            if newest > 400 and evals[-1] > newest:
                break
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_log.close()
    assert "resumed from" in (killed := (tmp_path / "killed.log").read_text()), killed[-2000:]
    assert "at frame 400" in killed and "Traceback" not in killed
    # the checkpoint the resume starts from: the newest one the dead process finished
    newest = _newest_frame(run_dir)
    before = (run_dir / "eval.csv").read_text().splitlines()
    resumed = distdrq("train", "--resume", str(run_dir), "--frames", "2400", "--plain")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and f"at frame {newest:,}" in resumed.stdout
    assert "eval.csv: dropped" in resumed.stdout, resumed.stdout[-2000:]
    evals = [int(r.split(",")[0]) for r in (run_dir / "eval.csv").read_text().splitlines()[1:]]
    assert evals == sorted(set(evals)) and evals[-1] == 2400, (before, evals)
    s2 = _summary(run_dir)
    assert s2["frames"] == 2400 and s2["steps"] == 300
    assert s2["updates"] == _evens(25, 300)  # as if the run had never stopped
    assert s2["wall_time"] > s1["wall_time"]
    rows = (run_dir / "train.csv").read_text().splitlines()
    frames = [int(r.split(",")[0]) for r in rows[1:]]
    walls = [float(r.split(",")[4]) for r in rows[1:]]
    assert frames == sorted(frames) and frames[-1] == 2400 and min(frames) < 400
    assert walls == sorted(walls)  # wall time continues across the resumes
    # TensorBoard's events hold the same points, each once (rebuilt on resume from the records)
    points = read_events(run_dir)
    assert [step for step, _ in points["eval/eval_return"]] == evals
    assert [step for step, _ in points["train/wall_time"]] == frames
    assert [value for _, value in points["train/wall_time"]] == pytest.approx(walls, rel=1e-6)
    videos = [step for step, _ in points["eval/video"]]
    assert videos[0] == 0 and set(videos) <= set(evals)

    # learning curves of this real run, with DrQ-v2's published curve of the same task
    reference = tmp_path / "ref.csv"
    reference.write_text(
        ",agent,task,seed,frame,episode_reward,hour\n"
        "0,DrQ-v2,cartpole_swingup,1,0,25.0,0.0\n1,DrQ-v2,cartpole_swingup,1,20000,200.0,0.1\n"
        "2,DrQ-v2,walker_walk,1,0,99.0,0.0\n"
    )
    png = tmp_path / "curves.png"
    plotted = distdrq("plot", str(run_dir), "--reference", str(reference), "--out", str(png))
    assert plotted.returncode == 0, plotted.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bad = distdrq("plot", str(tmp_path / "missing"))
    assert bad.returncode == 2 and "no such run directory" in bad.stderr


def test_cli_errors_are_one_line(tmp_path):
    bad_task = distdrq("train", "--task", "cheetah_walk", "--run-dir", str(tmp_path / "x"))
    assert bad_task.returncode == 2
    assert (
        bad_task.stderr.strip().splitlines() == [bad_task.stderr.strip()]
        and "unknown task 'cheetah_walk'" in bad_task.stderr
    )
    bad_key = distdrq("train", "agent.learning_rate=1")
    assert bad_key.returncode == 2 and "unknown config key 'agent.learning_rate'" in bad_key.stderr
    missing = distdrq("train", "--resume", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such run directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    no_run = distdrq("train", "--resume", str(tmp_path / "empty"))
    assert no_run.returncode == 2 and "not a distdrq run directory" in no_run.stderr


def test_existing_run_dir_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("env: {task: cheetah_run}\n")
    result = distdrq("train", "--run-dir", str(run_dir))
    assert result.returncode == 2 and f"--resume {run_dir}" in result.stderr
    assert (run_dir / "config.yaml").read_text() == "env: {task: cheetah_run}\n"


def test_tasks_and_help():
    tasks = distdrq("tasks")
    assert tasks.returncode == 0
    for name in ("walker_walk", "cup_catch", "quadruped_run", "humanoid_run", "reach_duplo"):
        assert name in tasks.stdout
    help_text = distdrq("train", "--help").stdout
    assert "--resume" in help_text and "agent.lr" in help_text and "env.fast_render" in help_text
