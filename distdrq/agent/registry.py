"""The learning algorithms by name (``agent.algo``): the one place that maps a name to an agent.

:func:`make_agent`, the env actors' :class:`~distdrq.agent.policy.Policy` and config validation
(:func:`~distdrq.config.validate`: the allowed ``agent.algo`` values) all look names up here.
Adding an algorithm is a module with an :class:`~distdrq.agent.base.AgentBase` subclass (an
:class:`~distdrq.agent.base.Agent` for a replay-based pixel actor-critic) and one entry here
(:func:`register` for one defined elsewhere); its published defaults, if not DrQ-v2's, go in
``configs/algos/<name>.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch

from distdrq.agent.base import AgentBase
from distdrq.agent.drq import DrQAgent
from distdrq.agent.drqv2 import DrQV2Agent
from distdrq.agent.sdpg import SDPGAgent
from distdrq.config import AgentConfig, ConfigError

ALGORITHMS: dict[str, type[AgentBase]] = {
    "drqv2": DrQV2Agent,  # DDPG from pixels, Yarats et al. 2021 (the config's defaults)
    "drq": DrQAgent,  # SAC from pixels, Kostrikov, Yarats & Fergus 2020 (configs/algos/drq.yaml)
    "sdpg": SDPGAgent,  # on-policy through physics clones, You et al. 2026 (configs/algos/sdpg.yaml)
}


def register(name: str, agent_class: type[AgentBase]) -> type[AgentBase]:
    """Make ``agent_class`` selectable as ``agent.algo=<name>``; returns it."""
    if not (isinstance(agent_class, type) and issubclass(agent_class, AgentBase)):
        raise TypeError(f"algorithm {name!r}: {agent_class!r} is not an AgentBase subclass")
    ALGORITHMS[name] = agent_class
    return agent_class


def algorithm(name: str) -> type[AgentBase]:
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
    **extra: Any,
) -> AgentBase:
    """Build the agent named by ``cfg.algo`` (:data:`ALGORITHMS`); ``extra`` keywords go to
    its constructor (SDPG: ``sdpg=`` its config section, ``state_dim=`` the critic's input)."""
    return algorithm(cfg.algo)(tuple(obs_shape), action_dim, cfg, device, **extra)  # type: ignore[call-arg]
