"""``train.stop_at_return``: a run ends at the first evaluation that reaches it, in `train` (any
algorithm) and in `launch`'s supervision loop; without it a run trains to ``train.frames``."""

from __future__ import annotations

import csv
import itertools
from types import SimpleNamespace

import pytest

from distdrq.config import ConfigError, load_config
from distdrq.distributed.launch import _Session
from distdrq.progress import ProgressDisplay
from distdrq.run.counters import Counters
from distdrq.run.session import target_reached

SMALL = [
    "agent.device=cpu",
    "env.image_size=32",
    "agent.batch_size=8",
    "agent.hidden_dim=16",
    "agent.feature_dim=8",
    "train.seed_frames=40",
    "train.eval_every_frames=80",
    "train.eval_episodes=1",
    "train.frames=2000",
]


def _scripted_evaluations(monkeypatch, module, returns):
    """Evaluations that score ``returns`` (an iterable) in turn; the frames they ran at."""
    calls, values = [], iter(returns)

    def fake(agent, env, episodes, step, frame, *args, **kwargs):
        calls.append(frame)
        return {"eval_return": next(values), "eval_return_std": 0.0, "eval_episodes": episodes}

    monkeypatch.setattr(module, "evaluate_and_record", fake)
    return calls


def _eval_rows(run_dir):
    return [
        (int(r["frame"]), float(r["eval_return"]))
        for r in csv.DictReader(open(run_dir / "eval.csv"))
    ]


def test_config_accepts_a_number_or_null():
    assert load_config("point_reach").train.stop_at_return is None
    assert (
        load_config("point_reach", overrides=["train.stop_at_return=25"]).train.stop_at_return
        == 25.0
    )
    cfg = load_config("point_reach", overrides=["train.stop_at_return=null"])
    assert cfg.train.stop_at_return is None
    with pytest.raises(ConfigError, match="stop_at_return"):
        load_config("point_reach", overrides=["train.stop_at_return=high"])


def test_target_reached_needs_an_evaluation_at_or_above_it():
    c = Counters()
    assert not target_reached(c, 5.0)  # no evaluation yet
    c.last_eval_frame, c.last_eval_return = 0, 4.9
    assert not target_reached(c, 5.0) and not target_reached(c, None)
    c.last_eval_return = 5.0
    assert target_reached(c, 5.0)
    c.last_eval_return = float("nan")
    assert not target_reached(c, 5.0)


def test_train_ends_at_the_first_evaluation_that_reaches_the_target(tmp_path, monkeypatch):
    import distdrq.trainer as trainer_module

    calls = _scripted_evaluations(monkeypatch, trainer_module, [1.0, 2.0, 7.0, 9.0])
    cfg = load_config("point_reach", overrides=[*SMALL, "train.stop_at_return=5"])
    progress = ProgressDisplay("point_reach", cfg.train.frames, live=False)
    trainer = trainer_module.Trainer(cfg, tmp_path / "run")
    try:
        counters = trainer.train(progress)
    finally:
        trainer.close()
    assert calls == [0, 80, 160]  # the third evaluation reached 5: no evaluation after it
    assert counters.frames == counters.last_eval_frame == 160 and counters.last_eval_return == 7
    assert counters.updates > 0
    assert _eval_rows(tmp_path / "run") == [(0, 1.0), (80, 2.0), (160, 7.0)]

    # resumed with the target still reached, the run ends at once; without one it trains on
    for overrides, frames in (
        (["train.stop_at_return=5"], 160),
        (["train.stop_at_return=null"], 400),
    ):
        cfg = load_config("point_reach", overrides=[*SMALL, "train.frames=400", *overrides])
        calls = _scripted_evaluations(monkeypatch, trainer_module, itertools.repeat(7.0))
        trainer = trainer_module.Trainer(cfg, tmp_path / "run", resume=True)
        try:
            counters = trainer.train(ProgressDisplay("point_reach", 400, live=False))
        finally:
            trainer.close()
        assert counters.frames == frames, overrides
        assert (calls == []) == (frames == 160), (overrides, calls)


def test_sdpg_train_ends_at_the_target_too(tmp_path, monkeypatch):
    import distdrq.sdpg_trainer as sdpg_module

    calls = _scripted_evaluations(monkeypatch, sdpg_module, [1.0, 6.0, 9.0])
    overrides = [
        "agent.algo=sdpg", "agent.device=cpu", "sdpg.obs=state", "sdpg.nominals=2",
        "sdpg.clones=2", "sdpg.horizon=4", "train.frames=100000", "train.stop_at_return=5",
    ]  # fmt: skip
    cfg = load_config("cheetah_run", overrides=overrides)
    per_iteration = 2 * 4 * cfg.env.action_repeat  # nominals x window x action repeat
    cfg = load_config(
        "cheetah_run", overrides=[*overrides, f"train.eval_every_frames={2 * per_iteration}"]
    )
    trainer = sdpg_module.SDPGTrainer(cfg, tmp_path)
    try:
        counters = trainer.train(ProgressDisplay("cheetah_run", 100000, live=False))
    finally:
        trainer.close()
    assert calls == [0, 2 * per_iteration]
    assert counters.frames == counters.last_eval_frame == 2 * per_iteration


class _Runner:
    """Supervisor ticks whose counters follow ``states`` (frames, last eval frame, return)."""

    def __init__(self, states):
        self._states = iter(states)
        self.ticks = 0

    def step(self, after=None):
        self.ticks += 1
        frames, eval_frame, value = next(self._states)
        c = Counters(frames=frames, last_eval_frame=eval_frame, last_eval_return=value)
        snap = SimpleNamespace(counters=c)
        if after is not None:
            after(snap)
        return snap


@pytest.mark.parametrize(
    ("stop_at", "reason", "ticks"), [(5.0, "target", 3), (None, "done", 4), (50.0, "done", 4)]
)
def test_launch_supervision_ends_at_the_target_or_the_budget(stop_at, reason, ticks):
    target = "null" if stop_at is None else stop_at
    cfg = load_config(
        "point_reach", overrides=["train.frames=400", f"train.stop_at_return={target}"]
    )
    lines = []
    session = _Session.__new__(_Session)
    session.cfg = cfg
    session.progress = SimpleNamespace(message=lines.append)
    states = [(0, -1, float("nan")), (100, 0, 2.0), (200, 200, 6.0), (400, 200, 6.0)]
    runner = _Runner(itertools.chain(states, itertools.repeat(states[-1])))
    assert session._supervise(runner, SimpleNamespace(refresh=None)) == (reason, "")
    assert runner.ticks == ticks
    if reason == "target":
        assert lines == [
            "eval return 6.0 at frame 200 reached train.stop_at_return=5: ending the run"
        ]
