"""DrQ-v2 learning agent: networks, random shift augmentation, updates (plain PyTorch, no Ray)."""

from distdrq.agent.augment import RandomShiftsAug, random_shifts, shift_crop, shift_grid_sample
from distdrq.agent.drqv2 import (
    DrQV2Agent,
    batch_to_tensors,
    make_agent,
    resolve_device,
    resolve_precision,
)
from distdrq.agent.networks import Actor, Critic, Encoder, TruncatedNormal, TwinQ
from distdrq.agent.policy import Policy, policy_action

__all__ = [
    "Actor",
    "Critic",
    "DrQV2Agent",
    "Encoder",
    "RandomShiftsAug",
    "TruncatedNormal",
    "TwinQ",
    "batch_to_tensors",
    "make_agent",
    "Policy",
    "policy_action",
    "random_shifts",
    "resolve_device",
    "resolve_precision",
    "shift_crop",
    "shift_grid_sample",
]
