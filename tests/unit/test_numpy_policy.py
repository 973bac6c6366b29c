"""The NumPy acting half (env actors and evaluator without torch) computes the torch policy's
function from the same weights and follows the same action rules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from distdrq.agent import Policy, algorithm, make_agent
from distdrq.config import load_config
from distdrq.numpy_policy import (
    ALGORITHMS,
    NumpyPolicy,
    limit_blas_threads,
    make_acting_policy,
    numpy_acting,
)

CASES = [
    ("walker_walk", []),
    ("cheetah_run", ["agent.algo=drq"]),
    ("cheetah_run", ["agent.encoder=nano", "env.image_size=64"]),
    ("cheetah_run", ["agent.algo=drq", "agent.encoder=nano", "agent.grad_checkpointing=true"]),
]


def _pair(task, overrides, seed=0):
    """A torch policy and a NumPy policy holding one agent's (trained a little) weights, the
    NumPy one loaded from NumPy arrays as a launch's learner publishes them."""
    cfg = load_config(task, overrides=[*overrides, "agent.device=cpu"])
    size = cfg.env.image_size
    shape = (3 * cfg.env.frame_stack, size, size)
    torch.manual_seed(seed)
    agent = make_agent(shape, 6, cfg.agent)
    with torch.no_grad():  # away from the orthogonal init: biases and norms not trivial
        for p in [*agent.encoder.parameters(), *agent.actor.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    weights = agent.policy_state_dict()
    theirs = Policy(shape, 6, cfg.agent)
    theirs.load_policy_state_dict(weights, 3)
    mine = NumpyPolicy(shape, 6, cfg.agent, seed=seed)
    mine.load_policy_state_dict({k: v.numpy() for k, v in weights.items()}, 3)
    return cfg, shape, theirs, mine


@pytest.mark.parametrize(("task", "overrides"), CASES)
def test_same_function_as_the_torch_policy(task, overrides):
    cfg, shape, theirs, mine = _pair(task, overrides)
    rng = np.random.default_rng(1)
    for _ in range(3):
        obs = rng.integers(0, 256, shape, dtype=np.uint8)
        with torch.no_grad():
            features = theirs.encoder(torch.as_tensor(obs)[None]).numpy()[0]
        np.testing.assert_allclose(mine.features(obs), features, rtol=1e-4, atol=1e-5)
        eval_action = theirs.act(obs, 10**6, eval_mode=True)
        np.testing.assert_allclose(mine.act(obs, 10**6, eval_mode=True), eval_action, atol=2e-6)
    assert mine.version == theirs.version == 3


def test_pixel_scaling_follows_the_algorithm():
    for name, (offset, _) in ALGORITHMS.items():
        assert algorithm(name).pixel_offset == offset


def test_drqv2_exploration_is_the_scheduled_gaussian_around_the_mean():
    # 32-pixel frames, for speed (6,000 actions): the sampling rule does not depend on the frame
    # size, and the function itself is tested at 84 pixels above
    cfg, shape, theirs, mine = _pair("walker_walk", ["env.image_size=32"])
    obs = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    step = 10**6  # past the schedule: std = its final value
    mu = mine.act(obs, step, eval_mode=True)
    samples = np.stack([mine.act(obs, step, eval_mode=False) for _ in range(4000)])
    std = cfg.agent.stddev_schedule(step)
    inside = np.abs(mu) < 0.5  # far from the clamp at +-1
    np.testing.assert_allclose(samples.mean(0)[inside], mu[inside], atol=4 * std / np.sqrt(4000))
    np.testing.assert_allclose(samples.std(0)[inside], std, rtol=0.06)
    assert np.abs(samples).max() <= 1 - 1e-6 + 1e-7 and samples.dtype == np.float32
    uniform = np.stack([mine.act(obs, 0, eval_mode=False) for _ in range(2000)])
    assert uniform.min() >= -1 and uniform.max() <= 1 and abs(uniform.mean()) < 0.05
    assert abs(uniform.std() - 1 / np.sqrt(3)) < 0.02  # U(-1, 1) during num_expl_steps


def test_drq_exploration_is_the_squashed_gaussian_of_the_sac_actor():
    cfg, shape, theirs, mine = _pair("cheetah_run", ["agent.algo=drq", "env.image_size=32"])
    obs = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    with torch.no_grad():
        mu, log_std = theirs.actor(theirs.encoder(torch.as_tensor(obs)[None]))
    mu, std = mu.numpy()[0], log_std.exp().numpy()[0]
    pre = np.arctanh(np.stack([mine.act(obs, 10**6, eval_mode=False) for _ in range(4000)]))
    ok = np.abs(mu) + 3 * std < 3  # samples that tanh does not flatten to +-1 in float32
    assert ok.any()
    assert (np.abs(pre.mean(0) - mu)[ok] < (5 * std / np.sqrt(4000))[ok]).all()
    np.testing.assert_allclose(pre.std(0)[ok], std[ok], rtol=0.06)


def test_algorithms_without_a_numpy_policy_get_the_torch_one():
    sdpg = load_config("cheetah_run", overrides=["agent.algo=sdpg"]).agent
    assert not numpy_acting(sdpg)
    drqv2 = load_config("walker_walk").agent
    assert numpy_acting(drqv2)
    assert isinstance(make_acting_policy((9, 84, 84), 6, drqv2), NumpyPolicy)


def test_env_actor_and_evaluator_processes_load_neither_torch_nor_numba():
    """What an env actor's process imports to act, render, code chunks and evaluate."""
    code = (
        "import sys\n"
        "from distdrq.distributed.env_actor import EnvActor, Evaluator, _numpy_evaluation\n"
        "from distdrq.config import Config\n"
        "from distdrq.replay import EpisodeWriter\n"
        "from distdrq.run.evaluation import evaluate\n"
        "cfg = Config(); cfg.env.task = 'cartpole_swingup'; cfg.env.fast_render = True\n"
        "env, policy = _numpy_evaluation(cfg, 1)\n"
        "loaded = [m for m in ('torch', 'numba') if m in sys.modules]\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr[-3000:]


def test_blas_threads_can_be_limited():
    assert isinstance(limit_blas_threads(1), bool)
