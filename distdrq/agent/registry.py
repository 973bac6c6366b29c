"""The learning algorithms by name (``agent.algo``): the one place that maps a name to an agent.

:func:`make_agent`, the env actors' :class:`~distdrq.agent.policy.Policy` and config validation
(:func:`~distdrq.config.validate`: the allowed ``agent.algo`` values) all look names up here.
Adding an algorithm is a module with an :class:`~distdrq.agent.base.Agent` subclass and one
entry here (:func:`register` for one defined elsewhere); its published defaults, if not
DrQ-v2's, go in ``configs/algos/<name>.yaml``.
"""

from __future__ import annotations

import torch

from distdrq.agent.base import Agent
from distdrq.agent.drq import DrQAgent
from distdrq.agent.drqv2 import DrQV2Agent
from distdrq.config import AgentConfig, ConfigError

ALGORITHMS: dict[str, type[Agent]] = {
    "drqv2": DrQV2Agent,  # DDPG from pixels, Yarats et al. 2021 (the config's defaults)
    "drq": DrQAgent,  # SAC from pixels, Kostrikov, Yarats & Fergus 2020 (configs/algos/drq.yaml)
}


def register(name: str, agent_class: type[Agent]) -> type[Agent]:
    """Make ``agent_class`` selectable as ``agent.algo=<name>``; returns it."""
    if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
        raise TypeError(f"algorithm {name!r}: {agent_class!r} is not an Agent subclass")
    ALGORITHMS[name] = agent_class
    return agent_class


def algorithm(name: str) -> type[Agent]:
    """The agent class of ``agent.algo=<name>``; a one-line :class:`ConfigError` naming the
    allowed names if there is none."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(
            f"agent.algo={name!r} is not allowed; choose one of: {', '.join(ALGORITHMS)}"
        ) from None


def make_agent(
    obs_shape: tuple[int, int, int],
    action_dim: int,
    cfg: AgentConfig,
    device: str | torch.device | None = None,
) -> Agent:
    """Build the agent named by ``cfg.algo`` (:data:`ALGORITHMS`)."""
    return algorithm(cfg.algo)(tuple(obs_shape), action_dim, cfg, device)
