"""A tiny pixel task for fast learning tests: steer a dot to the centre of the image.

``point_reach``: a white square on a dark background at position p in [-1, 1]^2; the action
(2-d, in [-1, 1]) moves it by ``0.25 * a`` per physics step; the reward per physics step is
``1 - min(|p|, 1)``. Episodes last 40 physics steps. A uniform random policy scores about a
third of the optimum, and a policy that learned to read the dot's position from pixels scores
near the optimum within a few thousand updates on a CPU.
"""

from __future__ import annotations

import numpy as np

from distdrq.config import EnvConfig
from distdrq.types import TimeStep

EPISODE_PHYSICS_STEPS = 40
STEP_SIZE = 0.25


class PointReachEnv:
    """Pixel env with the same interface as :class:`distdrq.envs.dmc.PixelEnv`."""

    def __init__(self, cfg: EnvConfig, seed: int) -> None:
        self._cfg = cfg
        self._rng = np.random.default_rng(seed)
        size = cfg.image_size
        channels = 1 if cfg.grayscale else 3
        self.frame_shape = (channels, size, size)
        self.obs_shape = (cfg.frame_stack * channels, size, size)
        self.action_dim = 2
        yy, xx = np.mgrid[0:size, 0:size]
        background = 40 + 20 * (((yy // 4) + (xx // 4)) % 2)  # a static checkerboard
        self._background = np.broadcast_to(background.astype(np.uint8), self.frame_shape)
        self._stack = np.zeros(self.obs_shape, np.uint8)
        self._pos = np.zeros(2)
        self._t = 0

    def _render(self) -> np.ndarray:
        size = self._cfg.image_size
        frame = self._background.copy()
        half = max(size // 16, 1)
        cy, cx = ((self._pos + 1.0) / 2.0 * (size - 1)).round().astype(int)
        frame[:, max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1] = 255
        return frame

    def _push(self, frame: np.ndarray, first: bool) -> np.ndarray:
        c = self.frame_shape[0]
        if first:
            self._stack[:] = np.tile(frame, (self._cfg.frame_stack, 1, 1))
        else:
            self._stack[:-c] = self._stack[c:]
            self._stack[-c:] = frame
        return self._stack.copy()

    def check_rendering(self) -> None:
        """Nothing to check: numpy draws the frames (no OpenGL)."""

    def reset(self) -> TimeStep:
        """Start an episode with the dot at a uniform random position."""
        self._pos = self._rng.uniform(-1.0, 1.0, size=2)
        self._t = 0
        frame = self._render()
        return TimeStep(self._push(frame, True), frame, 0.0, 1.0, True, False)

    def step(self, action: np.ndarray) -> TimeStep:
        """Move the dot ``action_repeat`` times; rewards are summed."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        reward = 0.0
        for _ in range(self._cfg.action_repeat):
            self._pos = np.clip(self._pos + STEP_SIZE * action, -1.0, 1.0)
            reward += 1.0 - min(float(np.linalg.norm(self._pos)), 1.0)
            self._t += 1
            if self._t >= EPISODE_PHYSICS_STEPS:
                break
        frame = self._render()
        last = self._t >= EPISODE_PHYSICS_STEPS
        return TimeStep(self._push(frame, False), frame, reward, 1.0, False, last)

    def close(self) -> None:
        """Nothing to release."""
