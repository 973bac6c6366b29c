"""SDPG's estimators against independent definitions (issue 11, "How it is checked")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distdrq.agent.sdpg_math import (
    RunningMeanStd,
    actor_lr_factor,
    ascent_directions,
    lambda_returns,
    normalized_differences,
    td_lambda_targets,
)


def _forward_view(rewards, next_values, dones, gamma, lam):
    """lambda-returns as the weighted sum of n-step returns up to the first done at or after t:
    G = (1 - lam) sum_{n<L} lam^(n-1) G^(n) + lam^(L-1) G^(L), with G^(n) the n-step return
    bootstrapped with V(s_{t+n})."""
    horizon = len(rewards)
    out = np.empty(horizon)
    for t in range(horizon):
        end = next(e for e in range(t, horizon) if dones[e])
        length = end - t + 1

        def n_step(n, t=t):
            ret = sum(gamma**k * rewards[t + k] for k in range(n))
            return ret + gamma**n * next_values[t + n - 1]

        weighted = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, length))
        out[t] = weighted + lam ** (length - 1) * n_step(length)
    return out


def test_lambda_returns_equal_the_forward_view_with_interior_dones():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 4, 12))
    values = rng.normal(size=(5, 4, 12))
    dones = rng.random((5, 4, 12)) < 0.2
    dones[..., -1] = True
    assert dones[..., :-1].any()  # interior dones present
    got = lambda_returns(*map(torch.as_tensor, (rewards, values, dones)), 0.99, 0.95).numpy()
    for index in np.ndindex(rewards.shape[:2]):
        expected = _forward_view(rewards[index], values[index], dones[index], 0.99, 0.95)
        np.testing.assert_allclose(got[index], expected, rtol=0, atol=1e-12)


def test_lambda_returns_need_a_done_at_the_window_end():
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="last step"):
        lambda_returns(zeros, zeros, torch.zeros(2, 3, dtype=torch.bool), 0.99, 0.95)


def test_truncation_bootstraps_and_termination_does_not():
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    values = torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64)
    no = torch.zeros(1, 3, dtype=torch.bool)
    at_1 = torch.tensor([[False, True, False]])
    # the episode ends after step 1: truncated (bootstraps V(s_2) = 20) or terminated (no value)
    truncated = td_lambda_targets(rewards, values, no, at_1, 0.9, 0.5)
    terminated = td_lambda_targets(rewards, values, at_1, at_1, 0.9, 0.5)
    assert truncated[0, 1] == pytest.approx(2.0 + 0.9 * 20.0)
    assert terminated[0, 1] == pytest.approx(2.0)
    # step 0 sees the cut at 1 either way; the window's end (step 2) always bootstraps
    assert truncated[0, 0] == pytest.approx(1.0 + 0.9 * (0.5 * 10.0 + 0.5 * truncated[0, 1]))
    assert terminated[0, 0] == pytest.approx(1.0 + 0.9 * (0.5 * 10.0 + 0.5 * 2.0))
    assert truncated[0, 2] == terminated[0, 2] == pytest.approx(3.0 + 0.9 * 30.0)
    # without any done, step 1 blends into step 2 instead of cutting
    uncut = td_lambda_targets(rewards, values, no, no, 0.9, 0.5)
    assert uncut[0, 1] == pytest.approx(2.0 + 0.9 * (0.5 * 20.0 + 0.5 * uncut[0, 2]))


def _toy(n: int = 6, p: int = 255, a: int = 3, seed: int = 0):
    """One-step problem: reward -|u - a*|^2 for the pre-tanh action u = mu + eps * sigma."""
    gen = torch.Generator().manual_seed(seed)
    optimum = torch.randn(a, generator=gen, dtype=torch.float64)
    mean = torch.randn(n, 1, a, generator=gen, dtype=torch.float64)
    log_std = torch.full((a,), math.log(0.3), dtype=torch.float64)
    noise = torch.randn(n, p + 1, 1, a, generator=gen, dtype=torch.float64)
    noise[:, 0] = 0.0
    actions = mean.unsqueeze(1) + noise * log_std.exp()
    returns = -(actions - optimum).square().sum(-1)  # [N, M, 1]: H = 1, no bootstrap
    return optimum, mean, log_std, noise, returns


def test_one_step_toy_target_mean_moves_toward_the_optimum():
    optimum, mean, log_std, noise, returns = _toy()
    scaled, _, dead = normalized_differences(returns, floor=1e-3)
    assert not dead.any()
    d_mean, d_log_std = ascent_directions(scaled, noise, log_std)
    target = mean + d_mean  # [N, 1, A]
    before = (mean - optimum).norm(dim=-1)
    after = (target - optimum).norm(dim=-1)
    assert (after < before).all(), (before, after)
    # the direction points at the optimum (cosine close to 1 with 255 perturbations)
    cosine = torch.nn.functional.cosine_similarity(d_mean, optimum - mean, dim=-1)
    assert (cosine > 0.8).all(), cosine
    assert d_log_std.shape == d_mean.shape


def test_normalised_differences_have_unit_variance_per_slot():
    _, _, _, _, returns = _toy(n=4, p=31)
    returns = returns.repeat(1, 1, 5) * torch.linspace(0.01, 100.0, 5)  # scales differ by slot
    scaled, spread, dead = normalized_differences(returns, floor=1e-3)
    assert scaled.shape == returns.shape and spread.shape == (4, 5) and not dead.any()
    variance = scaled.var(dim=1)
    assert (variance > 0.999).all() and (variance <= 1.0).all()
    # exactly 1 but for the 1e-6 added to the std: (s / (s + 1e-6))^2
    np.testing.assert_allclose(variance.numpy(), (spread / (spread + 1e-6)).square().numpy())
    assert (scaled[:, 0] == 0).all()  # the nominal's own row


def test_motionless_slots_give_no_direction_unless_the_floor_is_off():
    returns = torch.full((2, 8, 3), 5.0, dtype=torch.float64)
    returns[1] += torch.randn(8, 3, dtype=torch.float64)  # group 1 moves
    returns[0, 1:] += 1e-4 * torch.randn(7, 3, dtype=torch.float64)  # group 0: float32 round-off
    scaled, _, dead = normalized_differences(returns, floor=1e-3)
    assert dead[0].all() and not dead[1].any()
    assert (scaled[0] == 0).all()
    published, _, none_dead = normalized_differences(returns, floor=0.0)
    assert not none_dead.any()
    assert published[0].var(dim=0).min() > 0.9  # round-off blown up to unit noise


def test_ascent_directions_match_their_definition():
    gen = torch.Generator().manual_seed(1)
    scaled = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    log_std = torch.randn(4, generator=gen, dtype=torch.float64)
    d_mean, d_log_std = ascent_directions(scaled, noise, log_std)
    for b, t, j in np.ndindex(2, 3, 4):
        w, e = scaled[b, :, t], noise[b, :, t, j]
        assert d_mean[b, t, j] == pytest.approx(float((w * e).sum() / 5))
        expected = float((w * (e**2 - 1)).sum() / 5 * log_std[j].exp())
        assert d_log_std[b, t, j] == pytest.approx(expected)


def test_actor_learning_rate_schedule():
    factor = [actor_lr_factor(i, 100, 20000, 1e-5 / 2e-3) for i in (0, 50, 99, 100, 20000, 30000)]
    assert factor[0] == 0.0 and factor[1] == pytest.approx(50 / 99) and factor[2] == 1.0
    assert factor[3] == 1.0 and factor[4] == factor[5] == pytest.approx(0.005)
    middle = actor_lr_factor(100 + 9950, 100, 20000, 0.005)
    assert middle == pytest.approx(0.005 + 0.995 * 0.5)
    assert actor_lr_factor(0, 0, 10, 0.1) == 1.0


def test_running_statistics_match_the_whole_data():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 100, 1, 40)]
    rms = RunningMeanStd(4)
    for batch in batches:
        rms.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rms.var, everything.var(0), rtol=1e-5)
    normalised = rms.normalize(everything).numpy()
    np.testing.assert_allclose(normalised.mean(0), 0.0, atol=1e-4)
    copy = RunningMeanStd(4)
    copy.load_state_dict(rms.state_dict())
    assert np.array_equal(copy.mean, rms.mean) and copy.count == rms.count
