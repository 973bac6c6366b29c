"""Data that crosses component boundaries: env time steps, replay chunks and sampled batches.

Conventions (one episode of L transitions has L + 1 frames):
- frame 0 is the reset frame; action t is chosen looking at the stack ending at frame t and
  yields reward t, env discount t and frame t + 1;
- an observation at frame t stacks frames t-k+1 .. t (k = frame_stack), repeating frame 0 for
  negative indices, as the env does at reset;
- an n-step sample at transition t (0 <= t <= T - n, T transitions stored so far) has
  reward = sum_{j<n} gamma^j (prod_{i<j} d_{t+i}) r_{t+j}, discount = prod_{j<n} gamma d_{t+j},
  next_obs = the stack ending at frame t + n; windows never cross episode ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TimeStep:
    """What a pixel env returns from ``reset`` and ``step``."""

    observation: np.ndarray
    """uint8 [frame_stack * C, H, W], channels first, oldest frame first"""
    frame: np.ndarray
    """uint8 [C, H, W], the newest rendered frame (the one replay stores)"""
    reward: float
    """reward summed over the action repeat (0.0 at reset)"""
    discount: float
    """env discount, product over the action repeat (1.0 at reset)"""
    first: bool
    """True for the reset step"""
    last: bool
    """True for the final step of the episode"""


@dataclass
class Chunk:
    """A contiguous piece of one episode, written by one env writer and inserted into replay."""

    episode_key: int
    """unique id of the episode across all writers"""
    first_step: int
    """index within the episode of the first transition in this chunk"""
    frames: np.ndarray
    """uint8 [F, C, H, W]: frames first_step+1 .. first_step+T, preceded by frame 0 when first_step == 0"""
    actions: np.ndarray
    """float32 [T, A]"""
    rewards: np.ndarray
    """float32 [T]"""
    discounts: np.ndarray
    """float32 [T], env discounts"""
    versions: np.ndarray
    """int64 [T], weight version of the policy that chose each action"""
    last: bool
    """True if this chunk ends the episode"""
    encoded: Any = None
    """EncodedFrames from the writer's FrameEncoder (with its checksum); when set, `frames` may be
    an empty array and the shard stores these bytes as they are, once verified"""

    @property
    def num_transitions(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class Batch:
    """A sampled batch of n-step transitions; contiguous numpy arrays."""

    obs: np.ndarray
    """uint8 [B, frame_stack * C, H, W]"""
    action: np.ndarray
    """float32 [B, A]"""
    reward: np.ndarray
    """float32 [B], discounted n-step reward sum"""
    discount: np.ndarray
    """float32 [B], gamma^n times the product of env discounts"""
    next_obs: np.ndarray
    """uint8 [B, frame_stack * C, H, W]"""
    version: np.ndarray
    """int64 [B], weight version that produced each transition"""

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @classmethod
    def random(
        cls,
        obs_shape: tuple[int, ...],
        action_dim: int,
        batch_size: int,
        seed: int = 0,
        discount: float = 0.99,
    ) -> Batch:
        """Uniformly random pixels, actions in [-1, 1], rewards in [0, 1] and a fixed discount
        (benchmarks and tests of the learner)."""
        rng = np.random.default_rng(seed)
        return cls(
            obs=rng.integers(0, 256, (batch_size, *obs_shape), dtype=np.uint8),
            action=rng.uniform(-1, 1, (batch_size, action_dim)).astype(np.float32),
            reward=rng.uniform(0, 1, batch_size).astype(np.float32),
            discount=np.full(batch_size, discount, np.float32),
            next_obs=rng.integers(0, 256, (batch_size, *obs_shape), dtype=np.uint8),
            version=np.zeros(batch_size, np.int64),
        )


@dataclass
class SkippedFile:
    """A snapshot or checkpoint that a restore could not use, set aside as ``*.broken``."""

    path: Path
    """where the file was"""
    moved_to: Path | None
    """where it is now (None if it could not be renamed)"""
    reason: str
    """why it was skipped, one line"""
    transitions: int | None = None
    """replay transitions it held, when known (its header or its readable replay state)"""
    episodes: int | None = None
    """replay episodes it held, when known"""

    def describe(self) -> str:
        """One line for a log: the reason, where the file went and what it held."""
        where = f"moved it to {self.moved_to.name}" if self.moved_to else "could not move it"
        held = ""
        if self.transitions is not None:
            held = f"; it held {self.transitions:,} replay transitions"
            if self.episodes is not None:
                held += f" in {self.episodes:,} episodes"
        return f"{self.reason}; {where}{held}"
