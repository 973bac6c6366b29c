"""A run that cannot start leaves no run directory that neither a new run nor --resume takes."""

from pathlib import Path

import pytest

from distdrq.config import load_config
from distdrq.envs.dmc import GLBackendError, PixelEnv
from distdrq.run.rundir import CONFIG_FILE, removed_if_unstarted
from distdrq.trainer import Trainer


def _fail_in(run_dir: Path, fresh: bool, files: tuple[str, ...]) -> None:
    with pytest.raises(RuntimeError), removed_if_unstarted(run_dir, fresh):
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)  # empty: nothing ran
        for name in files:
            (run_dir / name).write_text("x")
        raise RuntimeError("could not start")


def test_only_a_fresh_run_dir_holding_nothing_but_its_config_is_removed(tmp_path):
    _fail_in(tmp_path / "a", True, (CONFIG_FILE,))
    assert not (tmp_path / "a").exists()
    _fail_in(tmp_path / "b", True, (CONFIG_FILE, "train.csv"))  # it ran: keep its records
    assert (tmp_path / "b" / "train.csv").exists()
    _fail_in(tmp_path / "c", False, (CONFIG_FILE,))  # --resume: never ours to remove
    assert (tmp_path / "c" / CONFIG_FILE).exists()
    (tmp_path / "d").mkdir()  # existed before the command
    _fail_in(tmp_path / "d", True, (CONFIG_FILE,))
    assert (tmp_path / "d").exists()
    with removed_if_unstarted(tmp_path / "e", True):  # no error: nothing happens
        (tmp_path / "e").mkdir()
    assert (tmp_path / "e").exists()


def test_trainer_checks_rendering_before_it_writes_the_run_dir(tmp_path, monkeypatch):
    def no_context(self):
        raise GLBackendError("cannot render with MUJOCO_GL=egl (test)")

    monkeypatch.setattr(PixelEnv, "_bind_physics", no_context)
    cfg = load_config("cartpole_swingup", overrides=["env.image_size=32", "agent.device=cpu"])
    with pytest.raises(GLBackendError):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
