"""What a user reads when something is wrong: one line that names the fix, no advice that
would hurt, no third-party warnings or tracebacks, and no run directory nothing accepts."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

HEADLESS = {"DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL"}


def distdrq(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env if env is not None else dict(os.environ, MUJOCO_GL="egl")
    cmd = [sys.executable, "-m", "distdrq.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _one_error_line(proc: subprocess.CompletedProcess, start: str) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "Token authentication" not in x]
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr[-3000:]
    return lines[0]


def _run_dir_with(tmp_path: Path, task: str) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = distdrq("config", "--task", task)
    assert config.returncode == 0, config.stderr
    (run_dir / "config.yaml").write_text(config.stdout)
    return run_dir


@pytest.mark.parametrize("command", ["train", "launch"])
def test_garbage_checkpoints_never_advise_loading_them_unsafely(tmp_path, command):
    run_dir = _run_dir_with(tmp_path, "cartpole_swingup")
    ckpts = run_dir / "checkpoints"
    (ckpts / "ckpt_000000001000.pt").write_bytes(os.urandom(300))
    torch.save({"x": np.arange(3)}, ckpts / "ckpt_000000002000.pt")  # numpy: a Python object
    torch.save({"x": zipfile.ZipInfo("x")}, ckpts / "ckpt_000000003000.pt")
    quiet = ["distributed.dashboard=false"] if command == "launch" else []
    out = distdrq(command, "--resume", str(run_dir), "--plain", *quiet)
    assert out.returncode == 1
    line = _one_error_line(out, f"error: no readable checkpoint in {ckpts} (3 broken")
    text = (out.stdout + out.stderr).lower()
    assert "zipfile.zipinfo" in line.lower()
    for advice in ("weights_only", "arbitrary code", "trust", "traceback"):
        assert advice not in text, (advice, text)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        f"ckpt_00000000{k}000.pt.broken" for k in (1, 2, 3)
    ]


def _launch_small(run_dir: Path) -> list[str]:
    return [
        "launch", "--task", "cartpole_swingup", "--run-dir", str(run_dir), "--plain",
        "--actors", "1", "--shards", "1", "distributed.evaluator=false", "agent.device=cpu",
        "distributed.dashboard=false",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "display", "reason"),
    [
        ("train", None, "no display: DISPLAY is not set"),
        ("train", ":77", "GLFW: (65550) b'X11: Failed to open display :77'"),
        ("launch", None, "no display: DISPLAY is not set"),
    ],
)
def test_glfw_without_a_display_is_one_line_and_leaves_no_run_dir(
    tmp_path, command, display, reason
):
    run_dir = tmp_path / "run"
    args = ["train", "--task", "cartpole_swingup", "--run-dir", str(run_dir), "--plain"]
    if command == "launch":
        args = _launch_small(run_dir)
    env = {k: v for k, v in os.environ.items() if k not in HEADLESS}
    if display:
        env["DISPLAY"] = display  # a display nobody serves
    out = distdrq(*args, "env.gl_backend=glfw", env=env)
    assert out.returncode == 1
    line = _one_error_line(out, f"error: cannot render with MUJOCO_GL=glfw ({reason})")
    assert line.endswith("set env.gl_backend=egl for headless rendering")
    assert "GLFWError" not in out.stderr and "Traceback" not in out.stderr
    assert not run_dir.exists()  # so a fresh start with egl is accepted


def test_a_backend_that_cannot_render_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, MUJOCO_GL="egl", MUJOCO_EGL_DEVICE_ID="999")
    out = distdrq("train", "--task", "cartpole_swingup", "--run-dir", str(run_dir), env=env)
    assert out.returncode == 1
    _one_error_line(out, "error: cannot render with MUJOCO_GL=egl")
    assert not run_dir.exists()


def test_plot_warns_when_the_reference_holds_another_task(tmp_path):
    run_dir = _run_dir_with(tmp_path, "cartpole_swingup")
    (run_dir / "eval.csv").write_text("frame,eval_return,wall_time\n0,10.0,1.0\n1000,30.0,60.0\n")
    reference = tmp_path / "dmc_walker_walk.csv"
    reference.write_text(
        ",agent,task,seed,frame,episode_reward,hour\n0,DrQ-v2,walker_walk,1,0,9,0\n"
    )
    png = tmp_path / "curves.png"
    out = distdrq("plot", str(run_dir), "--reference", str(reference), "--out", str(png))
    assert out.returncode == 0 and png.is_file(), out.stderr
    line = _one_error_line(out, f"warning: --reference {reference} holds walker_walk, not")
    assert "cartpole_swingup" in line and "no reference curve" in line
    same = tmp_path / "dmc_cartpole_swingup.csv"
    same.write_text(reference.read_text().replace("walker_walk", "cartpole_swingup"))
    quiet = distdrq("plot", str(run_dir), "--reference", str(same), "--out", str(png))
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr
