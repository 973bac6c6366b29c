"""The DeepMind Control Suite tasks DrQ-v2 supports, with their difficulty groups."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """How a DrQ-v2 task name maps onto dm_control."""

    name: str
    """DrQ-v2 name, e.g. cup_catch"""
    domain: str
    """dm_control domain, e.g. ball_in_cup; 'manipulation' for reach_duplo"""
    task: str
    """dm_control task within the domain"""
    difficulty: str
    """easy, medium or hard (sets frames, exploration schedule and learning rate)"""
    camera_id: int = 0
    """DrQ-v2's camera (quadruped: 2)"""


_EASY = (
    "cartpole_balance",
    "cartpole_balance_sparse",
    "cartpole_swingup",
    "cup_catch",
    "finger_spin",
    "hopper_stand",
    "pendulum_swingup",
    "walker_stand",
    "walker_walk",
)
_MEDIUM = (
    "acrobot_swingup",
    "cartpole_swingup_sparse",
    "cheetah_run",
    "finger_turn_easy",
    "finger_turn_hard",
    "hopper_hop",
    "quadruped_run",
    "quadruped_walk",
    "reach_duplo",
    "reacher_easy",
    "reacher_hard",
    "walker_run",
)
_HARD = ("humanoid_stand", "humanoid_walk", "humanoid_run")


def _spec(name: str, difficulty: str) -> TaskSpec:
    if name == "reach_duplo":
        return TaskSpec(name, "manipulation", "reach_duplo_vision", difficulty)
    domain, task = name.split("_", 1)
    if domain == "cup":
        domain = "ball_in_cup"
    camera = 2 if domain == "quadruped" else 0
    return TaskSpec(name, domain, task, difficulty, camera)


TASKS: dict[str, TaskSpec] = {
    name: _spec(name, difficulty)
    for difficulty, names in (("easy", _EASY), ("medium", _MEDIUM), ("hard", _HARD))
    for name in names
}
"""All 24 DrQ-v2 DMC tasks by DrQ-v2 name."""


EXTRA_TASKS: dict[str, TaskSpec] = {
    "point_reach": TaskSpec("point_reach", "distdrq", "point_reach", "toy"),
}
"""Tasks of distdrq's own for smoke and learning tests (not DMC; see distdrq.envs.toy)."""


def known_tasks() -> dict[str, TaskSpec]:
    """DrQ-v2's DMC tasks followed by distdrq's own test tasks."""
    return {**TASKS, **EXTRA_TASKS}
