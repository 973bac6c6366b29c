"""SDPG's estimators as pure functions (shared/reference/SDPG.md sections 2.4-2.8).

Shapes: N nominals, M = P + 1 envs per group (index 0 the nominal, 1..P its clones), H steps
of a window, A action dims, d state dims. Everything here is plain PyTorch on any device,
except :class:`RunningMeanStd` (numpy float64, updated from the actors' state batches).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def lambda_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """TD(lambda) returns J [..., H], backwards over the last axis.

    ``next_values`` [..., H] is V(s_{t+1}) of the post-step, pre-reset state, already 0 where
    the step terminated (so truncation and the window's end bootstrap, termination does not);
    ``dones`` [..., H] (bool) cuts the recursion, and must be set at H - 1:

    - done_t: J_t = r_t + gamma * V_{t+1}
    - else:   J_t = r_t + gamma * ((1 - lam) * V_{t+1} + lam * J_{t+1})
    """
    if not bool(dones[..., -1].all()):
        raise ValueError("dones must be set at the last step of the window (it bootstraps)")
    returns = torch.empty_like(rewards)
    cut = dones.to(rewards.dtype)
    following = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        blended = (1.0 - lam) * next_values[..., t] + lam * following
        bootstrap = cut[..., t] * next_values[..., t] + (1.0 - cut[..., t]) * blended
        following = rewards[..., t] + gamma * bootstrap
        returns[..., t] = following
    return returns


def td_lambda_targets(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """SDPG's returns [..., H]: :func:`lambda_returns` with V(s') = 0 where the step terminated
    (``terminated``), cut at every done (``dones``: a reset or re-sync after the step) and at
    the window's last step, which bootstraps unless it terminated."""
    cut = dones.clone()
    cut[..., -1] = True
    return lambda_returns(rewards, next_values.masked_fill(terminated, 0.0), cut, gamma, lam)


def normalized_differences(
    returns: torch.Tensor, floor: float, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-slot normalised return differences (SDPG's "reward-invariant normalisation").

    ``returns`` [N, M, H]. dJ = J - J[:, :1] (the nominal's row is 0); s [N, H] = the unbiased
    std of dJ over all M rows (the zero row included); dJ_hat = dJ / (s + eps). Slots with
    s < floor * (|J_nominal| + 1) are *dead* (motionless states: the differences are round-off)
    and get dJ_hat = 0; ``floor=0`` is the published rule. Returns (dJ_hat, s, dead [N, H]).
    """
    diff = returns - returns[:, :1]
    std = diff.std(dim=1, unbiased=True)
    dead = std < floor * (returns[:, 0].abs() + 1.0)
    scaled = diff / (std + eps).unsqueeze(1)
    return scaled.masked_fill(dead.unsqueeze(1), 0.0), std, dead


def ascent_directions(
    scaled_diff: torch.Tensor, noise: torch.Tensor, log_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascent directions for the action mean and the log std, as the published code defines
    them (not the score function: the mean's is *not* divided by sigma, the log std's *is*
    multiplied by sigma, both on purpose for stability).

    ``scaled_diff`` [N, M, H] (dJ_hat), ``noise`` [N, M, H, A] (epsilon, 0 in the nominal's
    row), ``log_std`` [A] (or broadcastable to [N, H, A]). Means over all M rows:
    d_mu = mean_k dJ_hat * eps; d_log_std = mean_k dJ_hat * (eps^2 - 1) * sigma. Each [N, H, A].
    """
    weights = scaled_diff.unsqueeze(-1)
    d_mean = (weights * noise).mean(dim=1)
    d_log_std = (weights * (noise.square() - 1.0)).mean(dim=1) * log_std.exp()
    return d_mean, d_log_std


def actor_lr_factor(iteration: int, warmup: int, decay_end: int, min_ratio: float) -> float:
    """The actor learning rate at ``iteration`` (0-based) over its base value: linear from 0
    over the first ``warmup`` iterations (reaching 1 at ``warmup - 1``), then a cosine from 1
    down to ``min_ratio`` at ``decay_end``, then ``min_ratio`` (the published LambdaLR)."""
    if warmup > 0 and iteration < warmup:
        return 1.0 if warmup == 1 else iteration / (warmup - 1)
    span = decay_end - warmup
    done = iteration - warmup
    if done >= span:
        return min_ratio
    return min_ratio + (1.0 - min_ratio) * (1.0 + math.cos(math.pi * done / span)) / 2.0


class RunningMeanStd:
    """Running mean and (population) variance of state vectors, combined batch by batch
    (Chan et al.'s parallel rule, as the published code); starts at mean 0, var 1, count 1e-4.
    Normalised values are (x - mean) / sqrt(var + 1e-5). Kept in float64."""

    def __init__(self, dim: int) -> None:
        self.mean = np.zeros(dim, np.float64)
        self.var = np.ones(dim, np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        """Fold in one batch [B, dim]."""
        batch = np.asarray(batch, np.float64).reshape(-1, self.mean.size)
        n = batch.shape[0]
        if n == 0:
            return
        delta = batch.mean(axis=0) - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch.var(axis=0) * n + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total

    def normalize(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(x - mean) / sqrt(var + 1e-5) as float32 (on x's device for tensors)."""
        x = torch.as_tensor(x)
        mean, scale = self.tensors(x.device)
        return (x.float() - mean) / scale

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sqrt(var + 1e-5)) as float32 tensors."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device)
        scale = torch.as_tensor(np.sqrt(self.var + 1e-5), dtype=torch.float32, device=device)
        return mean, scale

    def state_dict(self) -> dict[str, np.ndarray | float]:
        """Plain data for checkpoints."""
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave."""
        self.mean = np.asarray(state["mean"], np.float64).copy()
        self.var = np.asarray(state["var"], np.float64).copy()
        self.count = float(state["count"])
