"""Pixel environments: DMC tasks (:mod:`distdrq.envs.dmc`) and distdrq's toy tasks."""

from __future__ import annotations

from typing import Any

from distdrq.config import EnvConfig
from distdrq.envs.tasks import EXTRA_TASKS, TASKS, TaskSpec, known_tasks


def make_env(cfg: EnvConfig, seed: int) -> Any:
    """Build the pixel env for ``cfg.task`` (a DMC task or a distdrq toy task)."""
    if cfg.task in EXTRA_TASKS:
        from distdrq.envs.toy import PointReachEnv

        return PointReachEnv(cfg, seed)
    from distdrq.envs.dmc import PixelEnv

    return PixelEnv(cfg, seed)


__all__ = ["EXTRA_TASKS", "TASKS", "TaskSpec", "known_tasks", "make_env"]
