"""The acting half of an agent (encoder + actor) for env actors and evaluators, on CPU.

DrQ-v2's actor gives a mean action and the agent adds scheduled Gaussian noise
(:func:`policy_action`); DrQ's SAC actor gives a squashed Gaussian (:func:`sac_action`).
The two algorithms also scale pixels differently (:data:`PIXEL_OFFSET`).
"""

from __future__ import annotations

import numpy as np
import torch

from distdrq.agent.networks import Actor, SACActor, TruncatedNormal, make_encoder
from distdrq.config import AgentConfig

PIXEL_OFFSET = {"drqv2": 0.5, "drq": 0.0}
"""What the encoder subtracts from obs / 255, per algorithm: drqv2 scales pixels to
[-0.5, 0.5], DrQ's published encoder to [0, 1] (``obs / 255.``)."""


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


def make_agent_encoder(
    obs_shape: tuple[int, int, int], cfg: AgentConfig, grad_checkpointing: bool = False
) -> torch.nn.Module:
    """The encoder ``cfg.encoder`` with ``cfg.algo``'s pixel scaling (:data:`PIXEL_OFFSET`)."""
    if cfg.algo not in PIXEL_OFFSET:
        raise ValueError(f"agent.algo={cfg.algo!r} is not allowed; choose one of: drqv2, drq")
    return make_encoder(obs_shape, cfg.encoder, grad_checkpointing, PIXEL_OFFSET[cfg.algo])


def make_actor(repr_dim: int, action_dim: int, cfg: AgentConfig) -> Actor | SACActor:
    """The actor network of ``cfg.algo``: :class:`Actor` (drqv2) or :class:`SACActor` (drq)."""
    if cfg.algo == "drq":
        bounds = (cfg.drq.log_std_min, cfg.drq.log_std_max)
        return SACActor(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim, *bounds)
    return Actor(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)


class Policy:
    """Encoder and actor only, fp32 on CPU; loads what the agent's ``policy_state_dict`` gives
    (``DrQV2Agent`` or ``DrQAgent``, as ``cfg.algo`` says)."""

    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.encoder = make_agent_encoder(obs_shape, cfg)
        self.actor = make_actor(self.encoder.repr_dim, action_dim, cfg)
        self.encoder.requires_grad_(False)
        self.actor.requires_grad_(False)
        self.version = -1

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] for one uint8 observation [C, H, W] at agent step ``step``."""
        obs_t = torch.as_tensor(np.asarray(obs)).unsqueeze(0)
        h = self.encoder(obs_t)
        uniform = step < self.cfg.num_expl_steps
        if self.cfg.algo == "drq":
            action = sac_action(*self.actor(h), eval_mode, uniform)
        else:
            action = policy_action(
                self.actor(h), self.cfg.stddev_schedule(step), eval_mode, uniform
            )
        return action.numpy()[0].astype(np.float32, copy=False)

    def load_policy_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load encoder and actor weights of weight version ``version``."""
        for name, module in (("encoder", self.encoder), ("actor", self.actor)):
            prefix = f"{name}."
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        self.version = int(version)
