"""The acting half of an agent (encoder + actor) for env actors and evaluators, on CPU.

Its algorithm (``cfg.algo``, looked up in :mod:`~distdrq.agent.registry`) gives the encoder's
pixel scaling, the actor network and the action rule: DrQ-v2's mean action plus scheduled
Gaussian noise, DrQ's squashed Gaussian.
"""

from __future__ import annotations

import numpy as np
import torch

from distdrq.agent.base import Agent, load_policy_weights
from distdrq.agent.registry import algorithm
from distdrq.config import AgentConfig, ConfigError


class Policy:
    """Encoder and actor only, fp32 on CPU; loads what the agent's ``policy_state_dict`` gives
    (the agent of ``cfg.algo``)."""

    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.algorithm = algorithm(cfg.algo)
        if not issubclass(self.algorithm, Agent):
            raise ConfigError(
                f"agent.algo={cfg.algo} does not act through replay env actors; its own "
                "runners act (see distdrq.run.groups for sdpg)"
            )
        self.encoder = self.algorithm.make_encoder(obs_shape, cfg)
        self.actor = self.algorithm.make_actor(self.encoder.repr_dim, action_dim, cfg)
        self.encoder.requires_grad_(False)
        self.actor.requires_grad_(False)
        self.version = -1

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] for one uint8 observation [C, H, W] at agent step ``step``."""
        obs_t = torch.as_tensor(np.asarray(obs)).unsqueeze(0)
        actor_out = self.actor(self.encoder(obs_t))
        action = self.algorithm.action(actor_out, self.cfg, step, eval_mode)
        return action.numpy()[0].astype(np.float32, copy=False)

    def load_policy_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load encoder and actor weights of weight version ``version``."""
        load_policy_weights(state, self.encoder, self.actor)
        self.version = int(version)
