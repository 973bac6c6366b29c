"""The acting half of DrQ-v2 (encoder + actor) for env actors and evaluators, on CPU."""

from __future__ import annotations

import numpy as np
import torch

from distdrq.agent.networks import Actor, Encoder, TruncatedNormal
from distdrq.config import AgentConfig


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


class Policy:
    """Encoder and actor only, fp32 on CPU; loads what ``DrQV2Agent.policy_state_dict`` gives."""

    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.encoder = Encoder(obs_shape)
        self.actor = Actor(self.encoder.repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.encoder.requires_grad_(False)
        self.actor.requires_grad_(False)
        self.version = -1

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] for one uint8 observation [C, H, W] at agent step ``step``."""
        obs_t = torch.as_tensor(np.asarray(obs)).unsqueeze(0)
        mu = self.actor(self.encoder(obs_t))
        uniform = step < self.cfg.num_expl_steps
        action = policy_action(mu, self.cfg.stddev_schedule(step), eval_mode, uniform)
        return action.numpy()[0].astype(np.float32, copy=False)

    def load_policy_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load encoder and actor weights of weight version ``version``."""
        for name, module in (("encoder", self.encoder), ("actor", self.actor)):
            prefix = f"{name}."
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        self.version = int(version)
