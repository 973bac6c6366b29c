"""A run's progress: one type for ``distdrq train`` and ``distdrq launch`` alike."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# names an older distdrq's single-process checkpoints used
_OLD_NAMES = {"frame": "frames", "step": "steps", "episode": "episodes"}


@dataclass
class Counters:
    """Progress of a run; everything needed to continue it exactly (checkpointed)."""

    frames: int = 0
    """env frames over all actors (agent steps x action repeat)"""
    steps: int = 0
    """agent steps (single-process runs; launch counts frames only)"""
    episodes: int = 0
    """completed training episodes"""
    updates: int = 0
    """learner updates"""
    weight_version: int = 0
    """newest published weight version (launch)"""
    wall_time: float = 0.0
    """seconds of training, summed over resumed sessions"""
    next_eval_frame: int = 0
    """frame at or after which the next evaluation runs"""
    last_eval_frame: int = -1
    """frame of the last evaluation (-1: none yet)"""
    evaluations: int = 0
    """evaluations run so far (videos are due every ``train.video_every_evals``)"""
    next_checkpoint_frame: int = 0
    """frame at or after which the next checkpoint is written"""
    last_train_return: float = float("nan")
    """return of the last completed training episode"""
    last_eval_return: float = float("nan")
    """mean return of the last evaluation"""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Counters:
        """Counters from a checkpoint (unknown keys ignored, older names understood)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {_OLD_NAMES.get(k, k): v for k, v in (data or {}).items()}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and replies."""
        return dataclasses.asdict(self)
