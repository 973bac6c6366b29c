"""DrQ-v2 agent (Yarats et al. 2021), as facebookresearch/drqv2's ``drqv2.py``, made fast.

Same algorithm, step for step: random shift of obs and next_obs; next_obs encoded by the online
encoder under no_grad (no target encoder); critic target r + discount * min(Q1', Q2')(next_obs,
a' ~ pi with clipped noise); encoder and critic trained on the critic loss; actor trained on
detached features with -min(Q1, Q2); soft target update of the critic. What is faster:
- the shift is an exact integer crop of the uint8 frames (one gather), not grid_sample on floats;
- the twin Q heads run as one batched matmul per layer (:class:`~distdrq.agent.networks.TwinQ`);
- autocast (bf16, or fp16 with gradient scaling) on GPU, channels_last convolutions, fused Adam,
  optional ``torch.compile``;
- the actor loss back-propagates into the actor's parameters only (drqv2 also fills the critic's
  gradients there and throws them away at the next critic ``zero_grad``);
- metrics are stacked and read back once per update (one device sync instead of eight).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distdrq.agent.base import Agent, batch_to_tensors
from distdrq.agent.networks import Actor, TruncatedNormal
from distdrq.config import AgentConfig
from distdrq.types import Batch


def policy_action(mu: torch.Tensor, stddev: float, eval_mode: bool, uniform: bool) -> torch.Tensor:
    """DrQ-v2's action rule: the mean in eval; else a sample (unclipped noise) or, while
    ``uniform`` (the first ``num_expl_steps`` agent steps), uniform noise in [-1, 1]."""
    dist = TruncatedNormal(mu, stddev)
    if eval_mode:
        return dist.mean
    action = dist.sample(clip=None)
    if uniform:
        action.uniform_(-1.0, 1.0)
    return action


class DrQV2Agent(Agent):
    """DrQ-v2 learner and policy: deterministic actor, scheduled exploration noise, no target
    encoder; pixels in [-0.5, 0.5]. Plumbing is :class:`~distdrq.agent.base.Agent`'s."""

    pixel_offset = 0.5

    @staticmethod
    def make_actor(repr_dim: int, action_dim: int, cfg: AgentConfig) -> Actor:
        """drqv2's actor: the tanh mean action."""
        return Actor(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)

    @staticmethod
    def action(mu: torch.Tensor, cfg: AgentConfig, step: int, eval_mode: bool) -> torch.Tensor:
        """eval: the mean action; else a sample (unclipped noise, std from the schedule),
        replaced by uniform noise in [-1, 1] for the first ``num_expl_steps`` agent steps."""
        uniform = step < cfg.num_expl_steps
        return policy_action(mu, cfg.stddev_schedule(step), eval_mode, uniform)

    def update_critic(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_obs: torch.Tensor,
        step: int,
    ) -> dict[str, torch.Tensor]:
        """One encoder + critic step on encoded obs (with grad) and next_obs (without)."""
        with torch.no_grad(), self._autocast():
            stddev = self.cfg.stddev_schedule(step)
            dist = TruncatedNormal(self.actor(next_obs), stddev)
            next_action = dist.sample(clip=self.cfg.stddev_clip)
            target_q1, target_q2 = self.critic_target(next_obs, next_action)
            target_v = torch.min(target_q1, target_q2)
            target_q = reward + (discount * target_v)

        with self._autocast():
            q1, q2 = self.critic(obs, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)

        # optimize encoder and critic
        return self.optimize_critic(critic_loss, target_q, q1, q2)

    def update_actor(self, obs: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One actor step on detached features, maximising min(Q1, Q2) of the updated critic."""
        with self._autocast():
            stddev = self.cfg.stddev_schedule(step)
            dist = TruncatedNormal(self.actor(obs), stddev)
            action = dist.sample(clip=self.cfg.stddev_clip)
            log_prob = dist.log_prob(action).sum(-1, keepdim=True)
            q1, q2 = self.critic(obs, action)
            q = torch.min(q1, q2)
        actor_loss = -q.mean()

        # optimize actor; inputs= skips the critic weight gradients drqv2 computes and discards
        self.optimize(actor_loss, self.actor_scaler, self.actor_opt, inputs=self._actor_params)

        return {
            "actor_loss": actor_loss.detach(),
            "actor_logprob": log_prob.detach().mean(),
            "actor_ent": dist.entropy().sum(dim=-1).mean(),
        }

    @torch.no_grad()
    def update_critic_target(self) -> None:
        """target <- (1 - tau) * target + tau * online, every parameter."""
        torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.critic_tau)

    def learn(self, batch: Batch | Any, step: int) -> dict[str, torch.Tensor]:
        """One learner update on ``batch`` (numpy :class:`Batch` or tensors); metrics as tensors
        on the device (nothing waits for it)."""
        obs, action, reward, discount, next_obs = batch_to_tensors(batch, self.device)

        # augment (uint8 in, uint8 out; independent shifts for obs and next_obs)
        obs = self.aug(obs)
        next_obs = self.aug(next_obs)

        # encode: obs with grad, next_obs in its own no_grad pass. One pass over cat(obs,
        # next_obs) with the next half detached would keep next_obs activations alive and run
        # the conv backward over 2B samples (zero gradient for half of them): slower and larger.
        with self._autocast():
            obs = self.encoder(obs)
            with torch.no_grad():
                next_obs = self.encoder(next_obs)

        metrics = {"batch_reward": reward.mean()}
        metrics.update(self.update_critic(obs, action, reward, discount, next_obs, step))
        metrics.update(self.update_actor(obs.detach(), step))

        # update critic target
        self.update_critic_target()
        self.num_updates += 1

        return metrics
