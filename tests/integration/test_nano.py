"""The DrQ-Nano profile end to end on CPU: train a few hundred frames, then the memory report."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distdrq.agent import DrQAgent, NanoEncoder, Policy
from distdrq.bench import add_bench_parser, run_bench
from distdrq.config import load_config
from distdrq.trainer import Trainer

NANO = Path(__file__).resolve().parents[2] / "configs" / "nano_cheetah_run.yaml"

OVERRIDES = [
    "env.fast_render=true",
    "agent.device=cpu",
    "train.frames=300",
    "train.seed_frames=200",
    "agent.num_expl_steps=50",
    "train.eval_every_frames=100000",
    "train.eval_episodes=1",
    "train.log_every_frames=100",
    "train.checkpoint_every_frames=100000",
]


def test_nano_config_is_the_seed_setup() -> None:
    cfg = load_config(config_file=NANO)
    assert (cfg.env.task, cfg.env.image_size) == ("cheetah_run", 64)
    assert (cfg.agent.algo, cfg.agent.encoder, cfg.agent.batch_size) == ("drq", "nano", 64)
    assert cfg.agent.lr == 1e-3 and cfg.agent.init_temperature == 0.1
    assert cfg.agent.precision == "fp16" and cfg.agent.grad_checkpointing
    assert (cfg.agent.actor_update_every, cfg.agent.target_update_every) == (2, 2)
    assert cfg.replay.capacity == 50_000
    assert cfg.train.frames == 300_000  # 150k agent steps at action repeat 2


def test_nano_config_trains_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    cfg = load_config(config_file=NANO, overrides=OVERRIDES)
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        assert isinstance(trainer.agent, DrQAgent)
        assert isinstance(trainer.agent.encoder, NanoEncoder)
        assert trainer.agent.amp_dtype == torch.bfloat16  # fp16 on CPU falls back to bf16
        counters = trainer.train()
    finally:
        trainer.close()
    assert counters.frame == 300
    assert counters.updates == (300 - 200) // 2  # one update per agent step after seeding
    rows = list(csv.DictReader((tmp_path / "run" / "train.csv").open()))
    last = rows[-1]
    for key in ("critic_loss", "actor_loss", "critic_q1"):
        assert math.isfinite(float(last[key])), (key, last)
    assert math.isfinite(counters.last_eval_return)
    assert list((tmp_path / "run").glob("**/*.json"))  # summary (and checkpoint metadata)

    # the distributed runtime's CPU policy copy acts as the learner does
    policy = Policy(trainer.env.obs_shape, trainer.env.action_dim, cfg.agent)
    policy.load_policy_state_dict(trainer.agent.policy_state_dict(), version=1)
    obs = np.zeros(trainer.env.obs_shape, np.uint8)
    np.testing.assert_allclose(
        policy.act(obs, 10_000, True), trainer.agent.act(obs, 10_000, True), atol=0.02
    )  # the learner acts under bf16 autocast, the policy in fp32


def test_bench_memory_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "memory", "--config", str(NANO), "--device", "cpu", "--updates", "1",
         "env.fast_render=true"]
    )  # fmt: skip
    assert run_bench(args) == 0
    out = capsys.readouterr().out
    for text in (
        "algo drq, encoder nano",
        "batch 64",
        "bf16",
        "gradient checkpointing on",
        "encoder_target",
        "optimizer state",
        "activations",
        "CPU estimate",
        "measured peak       n/a",
        "50,000 transitions",
        "DrQ-v2 layout",
    ):
        assert text in out, (text, out)
