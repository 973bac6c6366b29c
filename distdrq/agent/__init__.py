"""Learning agents (DrQ-v2, DrQ): networks, random shift augmentation, updates (plain PyTorch)."""

from distdrq.agent.augment import RandomShiftsAug, random_shifts, shift_crop, shift_grid_sample
from distdrq.agent.drq import DrQAgent, Temperature
from distdrq.agent.drqv2 import (
    DrQV2Agent,
    batch_to_tensors,
    make_agent,
    resolve_device,
    resolve_precision,
)
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
from distdrq.agent.policy import Policy, make_actor, policy_action, sac_action

__all__ = [
    "Actor",
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
    "batch_to_tensors",
    "enable_grad_checkpointing",
    "make_actor",
    "make_agent",
    "make_encoder",
    "Policy",
    "policy_action",
    "random_shifts",
    "resolve_device",
    "resolve_precision",
    "sac_action",
    "shift_crop",
    "shift_grid_sample",
    "squashed_normal_sample",
]
