"""DrQ agent (Kostrikov, Yarats & Fergus 2020): SAC from pixels with random shifts, as published
in denisyarats/drq (``drq.py``, ``config.yaml``).

Step for step as the published ``DRQAgent.update``:
- augment: K = ``drq.target_augs`` independent random shifts of next_obs and M = ``drq.critic_augs``
  of obs (published: K = M = 2, hard-coded as ``next_obs``/``next_obs_aug``, ``obs``/``obs_aug``);
- critic target, per copy k of next_obs: r + discount * (min(Q1', Q2')(s'_k, a'_k) - alpha *
  log pi(a'_k|s'_k)), a'_k sampled from the current actor (tanh-squashed diagonal Gaussian, log
  std tanh-rescaled into [log_std_min, log_std_max]) on the online encoder's features of s'_k,
  Q' from the target critic on its target encoder's features (DrQ's ``critic_target`` holds an
  encoder copy); the K targets are averaged;
- critic loss: the sum over the M copies of obs of mse(Q1, target) + mse(Q2, target); it trains
  the encoder and the critic;
- every ``drq.actor_update_every`` updates, after the critic step: obs (its first augmented
  copy) is encoded again by the just-updated encoder, detached; the actor (its own trunk, as
  DrQ's actor has its own head on the tied convs) minimises alpha * log pi - min(Q1, Q2) of the
  updated critic; then alpha = exp(log_alpha) minimises alpha * (-log pi - target_entropy),
  log pi of that actor step detached, target entropy -|A|;
- every ``drq.target_update_every`` updates: soft update of the critic (``critic_tau``) and of
  the target encoder (``drq.encoder_tau``; published: the critic's tau, as one module);
- pixels scaled to [0, 1] (``obs / 255``), not drqv2's [-0.5, 0.5].

Remaining differences from the published code:
- the update cadence counts learner updates (``num_updates % 2``), not env steps (``step % 2``):
  the same phase in ``distdrq train`` with one update per agent step from an even seed step (as
  DrQ's 1000), but under ``distdrq launch`` updates are decoupled from env steps (rate limiter,
  policy lag);
- the encoder and the critic have one Adam each where DrQ has one for both (the same
  per-parameter update: Adam is elementwise with one lr); DrQ's actor Adam also holds the tied
  convs, which get zero gradients and stay unchanged, so ours holds the actor's parameters only;
- the actor loss back-propagates into the actor only (DrQ also fills, then discards, critic
  gradients), the K target copies and the M critic copies run as one batch each, the twin Q
  heads as one batched matmul (the same function; float rounding differs);
- K and M are configurable (DrQ: 2 and 2); with M copies the critic loss is summed over copies,
  as published, so its scale grows with M;
- optional autocast (bf16, or fp16 with gradient scalers; LayerNorm and log-probs in fp32),
  gradient checkpointing of the conv stack (the same maths), ``torch.compile``; published: fp32;
- ``agent.encoder=nano`` (DrQ-Nano's encoder) is not DrQ's; the default ``drqv2`` encoder is
  (four convs; the critic's and the actor's trunks are DrQ's encoder heads Linear-LayerNorm-tanh);
- the seed phase and action repeat are the trainer's and the config's: ``configs/algos/drq.yaml``
  holds DrQ's published values, task presets and profiles may change them.

Plumbing (devices, precision and grad scalers, channels_last, compile, checkpoints, weight
export) is :class:`~distdrq.agent.base.Agent`'s, shared with DrQ-v2.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distdrq.agent.base import Agent, batch_to_tensors
from distdrq.agent.networks import SACActor, squashed_normal_sample
from distdrq.config import AgentConfig
from distdrq.types import Batch

_ACTOR_METRICS = ("actor_loss", "actor_logprob", "actor_ent", "alpha_loss", "alpha")


def sac_action(
    mu: torch.Tensor, log_std: torch.Tensor, eval_mode: bool, uniform: bool
) -> torch.Tensor:
    """DrQ's action rule: tanh(mu) in eval; else tanh(mu + std * N(0, 1)) or, while ``uniform``
    (the first ``num_expl_steps`` agent steps), uniform noise in [-1, 1]."""
    if eval_mode:
        return torch.tanh(mu)
    if uniform:
        return torch.empty_like(mu).uniform_(-1.0, 1.0)
    return torch.tanh(mu + log_std.exp() * torch.randn_like(mu))


class Temperature(nn.Module):
    """SAC's learned temperature: ``log_alpha`` (a scalar parameter); ``forward()`` -> alpha."""

    def __init__(self, init_temperature: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()


class DrQAgent(Agent):
    """DrQ (SAC) learner and policy: squashed Gaussian actor, learned temperature, target
    encoder; pixels in [0, 1]. Plumbing is :class:`~distdrq.agent.base.Agent`'s."""

    pixel_offset = 0.0

    @staticmethod
    def make_actor(repr_dim: int, action_dim: int, cfg: AgentConfig) -> SACActor:
        """DrQ's actor: (mu, log_std), log std within [drq.log_std_min, drq.log_std_max]."""
        bounds = (cfg.drq.log_std_min, cfg.drq.log_std_max)
        return SACActor(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim, *bounds)

    @staticmethod
    def action(
        actor_out: tuple[torch.Tensor, torch.Tensor], cfg: AgentConfig, step: int, eval_mode: bool
    ) -> torch.Tensor:
        """eval: tanh(mu); else a sample of the squashed Gaussian, replaced by uniform noise in
        [-1, 1] for the first ``num_expl_steps`` agent steps."""
        mu, log_std = actor_out
        return sac_action(mu, log_std, eval_mode, step < cfg.num_expl_steps)

    def build_extra(self, action_dim: int) -> None:
        """The target encoder (DrQ's ``critic_target`` holds an encoder copy) and the SAC
        temperature with its own Adam (DrQ's; plain: its loss is a fp32 scalar)."""
        self.encoder_target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.temperature = Temperature(self.cfg.drq.init_temperature).to(self.device)
        self.target_entropy = -float(action_dim)
        self.alpha_opt = torch.optim.Adam(self.temperature.parameters(), lr=self.cfg.lr)
        self._encoder_params = list(self.encoder.parameters())
        self._encoder_target_params = list(self.encoder_target.parameters())
        nan = torch.full((), float("nan"), device=self.device)
        self._actor_metrics: dict[str, torch.Tensor] = dict.fromkeys(_ACTOR_METRICS, nan)

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature exp(log_alpha) (with grad to log_alpha)."""
        return self.temperature()

    @torch.no_grad()
    def target_q(
        self,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_h: torch.Tensor,
        next_h_target: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over the K copies of r + discount * (min(Q1', Q2')(s', a') - alpha * log pi(a'|s')),
        a' ~ pi(next_h); [B, 1].

        ``next_h``: online encoder features of the K augmented copies of s', stacked [K * B, D]
        (the actor's input); ``next_h_target``: the target encoder's features of the same copies
        (the target critic's input); ``noise`` [K * B, A] fixes the samples (tests).
        """
        k = next_h.shape[0] // reward.shape[0]
        with self._autocast():
            mu, log_std = self.actor(next_h)
            next_action, log_prob = squashed_normal_sample(mu, log_std, noise)
            target_q1, target_q2 = self.critic_target(next_h_target, next_action)
        target_v = torch.min(target_q1, target_q2) - self.alpha.detach() * log_prob
        target_q = reward.repeat(k, 1) + discount.repeat(k, 1) * target_v  # one per copy
        return target_q.view(k, -1, 1).mean(0)

    def update_critic(
        self, h: torch.Tensor, action: torch.Tensor, target_q: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One encoder + critic step: ``h`` [M * B, D] (with grad) holds the features of the M
        augmented copies of obs; loss sum over copies of mse(Q1, target) + mse(Q2, target)."""
        m = h.shape[0] // action.shape[0]
        with self._autocast():
            q1, q2 = self.critic(h, action.repeat(m, 1))
        target = target_q.repeat(m, 1)
        # M times the mean over all M * B rows = the sum of the M copies' means (published)
        critic_loss = m * (F.mse_loss(q1, target) + F.mse_loss(q2, target))

        # optimize encoder and critic
        return self.optimize_critic(critic_loss, target_q, q1, q2)

    def update_actor(
        self, h: torch.Tensor, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One actor step on detached features: loss alpha * log pi(a|s) - min(Q1, Q2)(s, a)."""
        with self._autocast():
            mu, log_std = self.actor(h)
            action, log_prob = squashed_normal_sample(mu, log_std, noise)
            q1, q2 = self.critic(h, action)
        actor_loss = (self.alpha.detach() * log_prob - torch.min(q1, q2)).mean()

        # optimize actor; inputs= leaves the critic's gradients alone
        self.optimize(actor_loss, self.actor_scaler, self.actor_opt, inputs=self._actor_params)

        log_prob = log_prob.detach().mean()
        return {
            "actor_loss": actor_loss.detach(),
            "actor_logprob": log_prob,
            "actor_ent": -log_prob,
        }

    def update_alpha(self, log_prob: torch.Tensor) -> dict[str, torch.Tensor]:
        """One temperature step: loss mean(alpha * (-log pi - target_entropy)), log pi detached.

        The loss is linear in log pi, so the batch mean ``log_prob`` gives the same loss.
        """
        alpha = self.alpha
        alpha_loss = alpha * (-log_prob.detach() - self.target_entropy)

        # optimize log_alpha
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        return {"alpha_loss": alpha_loss.detach(), "alpha": alpha.detach()}

    @torch.no_grad()
    def update_critic_target(self) -> None:
        """Soft target updates: critic at critic_tau, target encoder at encoder_tau."""
        torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.critic_tau)
        torch._foreach_lerp_(
            self._encoder_target_params, self._encoder_params, self.cfg.drq.encoder_tau
        )

    def learn(self, batch: Batch | Any, step: int) -> dict[str, torch.Tensor]:
        """One learner update on ``batch``; metrics as tensors on the device, the actor/alpha
        ones those of the last actor update (every ``drq.actor_update_every`` calls). ``step`` is
        unused (no schedules)."""
        obs, action, reward, discount, next_obs = batch_to_tensors(batch, self.device)
        drq = self.cfg.drq

        # augment: M independent shifts of obs, K of next_obs (published: K = M = 2)
        obs = self.aug(obs.repeat(drq.critic_augs, 1, 1, 1))
        next_obs = self.aug(next_obs.repeat(drq.target_augs, 1, 1, 1))

        # encode: obs with grad; next_obs by the online encoder (actor) and the target encoder
        with self._autocast():
            h = self.encoder(obs)
            with torch.no_grad():
                next_h = self.encoder(next_obs)
                next_h_target = self.encoder_target(next_obs)

        metrics = {"batch_reward": reward.mean()}
        target_q = self.target_q(reward, discount, next_h, next_h_target)
        metrics.update(self.update_critic(h, action, target_q))
        del h  # its graph is freed; the actor sees fresh features

        # update actor and temperature on obs's first copy, encoded by the updated encoder
        if self.num_updates % drq.actor_update_every == 0:
            with torch.no_grad(), self._autocast():
                h_actor = self.encoder(obs[: action.shape[0]])
            actor_metrics = self.update_actor(h_actor)
            actor_metrics.update(self.update_alpha(actor_metrics["actor_logprob"]))
            self._actor_metrics = actor_metrics
        metrics.update(self._actor_metrics)

        # update critic target
        if self.num_updates % drq.target_update_every == 0:
            self.update_critic_target()
        self.num_updates += 1

        return metrics

    # ---- checkpoints: the target encoder, the temperature and its optimizer join the base's

    def _named_networks(self) -> Iterator[tuple[str, nn.Module]]:
        yield from super()._named_networks()
        yield ("encoder_target", self.encoder_target)

    def _named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        yield from super()._named_modules()
        yield ("temperature", self.temperature)

    def _named_optimizers(self) -> Iterator[tuple[str, torch.optim.Optimizer]]:
        yield from super()._named_optimizers()
        yield ("alpha_opt", self.alpha_opt)
