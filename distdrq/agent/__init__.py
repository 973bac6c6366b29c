"""Learning agents (DrQ-v2, DrQ, SDPG): networks, random shift augmentation, updates (plain
PyTorch).

:class:`AgentBase` (``base.py``) holds what every algorithm shares (acting, policy export,
checkpoints), :class:`Agent` what the replay-based pixel actor-critics share; each algorithm is
a sibling module with its own update (``drqv2.py``, ``drq.py``, ``sdpg.py``), named in
:data:`ALGORITHMS` (``registry.py``).
"""

from distdrq.agent.augment import RandomShiftsAug, random_shifts, shift_crop, shift_grid_sample
from distdrq.agent.base import Agent, AgentBase, batch_to_tensors, resolve_device, resolve_precision
from distdrq.agent.drq import DrQAgent, Temperature, sac_action
from distdrq.agent.drqv2 import DrQV2Agent, policy_action
from distdrq.agent.networks import (
    Actor,
    Critic,
    Encoder,
    NanoEncoder,
    SACActor,
    TruncatedNormal,
    TwinQ,
    enable_grad_checkpointing,
    make_encoder,
    squashed_normal_sample,
)
from distdrq.agent.policy import Policy
from distdrq.agent.registry import ALGORITHMS, algorithm, make_agent, register
from distdrq.agent.sdpg import SDPGAgent

__all__ = [
    "ALGORITHMS",
    "Actor",
    "Agent",
    "AgentBase",
    "Critic",
    "DrQAgent",
    "DrQV2Agent",
    "Encoder",
    "NanoEncoder",
    "RandomShiftsAug",
    "SACActor",
    "Temperature",
    "TruncatedNormal",
    "TwinQ",
    "algorithm",
    "batch_to_tensors",
    "enable_grad_checkpointing",
    "make_agent",
    "make_encoder",
    "Policy",
    "policy_action",
    "random_shifts",
    "register",
    "resolve_device",
    "resolve_precision",
    "SDPGAgent",
    "sac_action",
    "shift_crop",
    "shift_grid_sample",
    "squashed_normal_sample",
]
