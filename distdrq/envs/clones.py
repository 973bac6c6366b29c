"""Physics clones of DMC tasks for SDPG: a nominal env and physics-only copies of it.

SDPG (:mod:`distdrq.agent.sdpg`) runs N *nominal* envs with the mean action and, for each, P
*clones* that start every window from the nominal's state and replay its mean actions plus
Gaussian noise. Here:

- :class:`TaskPhysics` steps one ``dm_control`` Physics of a suite task exactly as
  ``Environment.step`` does (``task.before_step``, ``physics.step(n_sub_steps)``,
  ``task.after_step``, ``task.get_reward`` (or its exact equal in
  :mod:`distdrq.envs.fast_rewards`), the 1000-control-step limit), over
  ``env.action_repeat`` control steps per agent step with the rewards summed, as
  :class:`~distdrq.envs.dmc.PixelEnv` does. It never auto-resets and never renders: clones are
  *not* stepped through ``Environment.step``, which resets by itself after the last step and
  owns the step counter (SDPG.md section 5). Nominals are stepped by the same code, so a clone
  with zero noise is the nominal, bit for bit (tested, and tested against ``PixelEnv.step``).
- :class:`PhysicsState` is everything a clone copies from its nominal: MuJoCo's full
  integration state (``mj_getState(mjSTATE_INTEGRATION)``: time, qpos, qvel, act, warm-start,
  ctrl, applied forces, mocap), the model fields the suite's tasks write at episode start (task
  state outside ``mjData``: reacher's target in ``geom_pos``, finger's in ``site_pos``), and
  the episode's control step count (SDPG copies ``progress_buf``, so clones truncate with
  their nominal). :meth:`TaskPhysics.restore` writes it and runs ``mj_forward``: dm_control's
  legacy step starts with ``mj_step2`` and assumes fresh ``mj_step1`` products, and rewards
  read ``xpos``/``xmat``; without the forward pass a clone drifts (tested).
- :class:`NominalEnv` is a nominal: a :class:`TaskPhysics` plus, for the pixel actor,
  :class:`~distdrq.envs.dmc.PixelEnv`'s camera and frame stack (clones never render). It has
  ``reset``/``step`` returning :class:`~distdrq.types.TimeStep`, so evaluation uses it too.
- :func:`check_clonable` refuses, in one line, tasks whose physics cannot be cloned
  faithfully.

A MuJoCo ``PhysicsError`` (divergence) or a non-finite state ends the env's episode as a
termination with reward 0 for that step, as SDPG treats NaN states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distdrq.config import ConfigError, EnvConfig
from distdrq.envs.tasks import EXTRA_TASKS, TASKS
from distdrq.types import TimeStep

UNCLONABLE: dict[str, str] = {
    "reach_duplo": (
        "a composer task: its props, arena and observables live outside the MuJoCo state and "
        "its physics is rebuilt at every reset"
    ),
    **{name: "not a MuJoCo task" for name in EXTRA_TASKS},
}
"""Tasks SDPG refuses, with the reason their physics cannot be cloned faithfully."""

MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "reacher": ("geom_pos", "geom_size"),  # initialize_episode moves and sizes the target geom
    "finger": ("site_pos", "site_size"),  # turn_easy/hard: the target site
}
"""Per dm_control domain, the ``physics.model`` arrays its tasks write at episode start: task
state outside ``mjData`` that a clone must copy (clones of one nominal share its model, but a
clone stepped in another process does not)."""


def check_clonable(task: str) -> None:
    """Raise a one-line :class:`~distdrq.config.ConfigError` if SDPG cannot clone ``task``."""
    if task in UNCLONABLE:
        clonable = ", ".join(sorted(n for n in TASKS if n not in UNCLONABLE)[:6])
        raise ConfigError(
            f"agent.algo=sdpg cannot clone the physics of {task!r} ({UNCLONABLE[task]}); "
            f"choose a dm_control suite task such as {clonable}, ..."
        )


@dataclass
class PhysicsState:
    """What a clone copies from its nominal (see the module docstring)."""

    integration: np.ndarray
    """float64 [mj_stateSize(mjSTATE_INTEGRATION)]"""
    model: dict[str, np.ndarray] = field(default_factory=dict)
    """model arrays the task writes at episode start (:data:`MODEL_FIELDS`), copies"""
    step: int = 0
    """control steps since the episode's reset"""


@dataclass
class StepResult:
    """One agent step of one env."""

    reward: float
    """reward summed over the action repeat (0 for a step that failed)"""
    terminated: bool
    """the episode ended in a way that does not bootstrap (a physics error, a non-finite
    state, or a task termination with discount 0)"""
    truncated: bool
    """the episode hit its time limit (bootstraps)"""

    @property
    def done(self) -> bool:
        """terminated or truncated"""
        return self.terminated or self.truncated


class TaskPhysics:
    """One ``dm_control`` suite Physics stepped as ``Environment.step`` steps it, without
    auto-reset; actions in [-1, 1] are mapped onto the action spec as ``PixelEnv`` maps them.

    ``env`` is the ``dm_control`` Environment whose task, physics, sub-steps and step limit are
    used; ``physics`` (default: ``env.physics``) may be a copy of it (a clone).
    """

    def __init__(self, env: Any, action_repeat: int, physics: Any = None) -> None:
        import mujoco

        self.task = env.task
        self.physics = env.physics if physics is None else physics
        self.action_repeat = action_repeat
        self.n_sub_steps = int(getattr(env, "_n_sub_steps", 0))
        self.step_limit = float(getattr(env, "_step_limit", 0.0))
        if self.n_sub_steps < 1 or self.step_limit <= 0:  # dm_control's Environment internals
            raise RuntimeError("this dm_control version's Environment has no step limit to copy")
        self.control_timestep = float(env.control_timestep())
        self.step_count = 0
        spec = env.action_spec()
        self._act_min = np.broadcast_to(np.asarray(spec.minimum, np.float64), spec.shape)
        self._act_scale = (np.asarray(spec.maximum, np.float64) - self._act_min) / 2.0
        self._act_shape = tuple(spec.shape)
        self._sig = mujoco.mjtState.mjSTATE_INTEGRATION
        domain = type(self.task).__module__.rsplit(".", 1)[-1]
        self._model_fields = MODEL_FIELDS.get(domain, ())
        from distdrq.envs.fast_rewards import fast_reward

        self._reward = fast_reward(self.task, self.physics) or self.task.get_reward
        from dm_control.mujoco.engine import Physics
        from dm_control.rl.control import PhysicsError
        from dm_control.suite.base import Task

        self._physics_error = PhysicsError
        self._mujoco = mujoco
        kind, physics_kind = type(self.task), type(self.physics)
        self._direct = (
            kind.before_step is Task.before_step  # physics.set_control(action)
            and kind.after_step is Task.after_step  # nothing unless rewards are visualised
            and not self.task.visualize_reward
            and physics_kind.set_control is Physics.set_control
            and physics_kind.step is Physics.step
        )
        """step the task's control steps without dm_control's Python wrappers (about a fifth
        of a state-actor SDPG iteration on cheetah_run); the same MuJoCo calls, so the same
        state, bit for bit"""
        self._rk4 = self.physics.model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4.value

    def copy(self, env: Any, share_model: bool = True) -> TaskPhysics:
        """A clone: a new Physics (sharing this one's model unless ``share_model`` is False:
        restoring a state writes the task's model fields), stepped by the same rules."""
        clone = TaskPhysics(env, self.action_repeat, self.physics.copy(share_model=share_model))
        clone.restore(self.capture())
        return clone

    # -- state --------------------------------------------------------------------------------

    def capture(self) -> PhysicsState:
        """This env's state (copies)."""
        model = {name: getattr(self.physics.model, name).copy() for name in self._model_fields}
        return PhysicsState(self.physics.get_state(sig=self._sig), model, self.step_count)

    def restore(self, state: PhysicsState, forward: bool = True) -> None:
        """Become ``state``; ``forward=False`` skips ``mj_forward`` (only to show the drift)."""
        for name, value in state.model.items():
            np.copyto(getattr(self.physics.model, name), value)
        self.physics.set_state(state.integration, sig=self._sig)
        if forward:
            self.physics.forward()
        self.step_count = state.step

    def observation(self) -> np.ndarray:
        """The task's observation vector (the critic's privileged input), float32."""
        parts = self.task.get_observation(self.physics).values()
        return np.concatenate([np.asarray(v, np.float32).ravel() for v in parts])

    def reset_count(self) -> None:
        """Start counting a new episode (after the caller reset the physics)."""
        self.step_count = 0

    # -- stepping -----------------------------------------------------------------------------

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """``action`` in [-1, 1] (clipped) mapped onto the action spec's bounds, float64."""
        act = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        return (self._act_min + self._act_scale * (act + 1.0)).reshape(self._act_shape)

    def step(self, action: np.ndarray) -> StepResult:
        """One agent step: ``action_repeat`` control steps, rewards summed; stops at the end of
        the episode. A physics error or a non-finite state is a termination with reward 0."""
        env_action = self.env_action(action)
        reward = 0.0
        physics = self.physics
        if self._direct:
            data = physics.data
            ctrl, warnings, pointers = data.ctrl, data.warning.number, (physics.model.ptr, data.ptr)
        try:
            for _ in range(self.action_repeat):
                if self._direct:
                    np.copyto(ctrl, env_action)  # task.before_step: physics.set_control
                    self._physics_step(*pointers, warnings)
                else:
                    self.task.before_step(env_action, physics)
                    physics.step(self.n_sub_steps)
                    self.task.after_step(physics)
                reward += self._reward(physics)
                self.step_count += 1
                if self.step_count >= self.step_limit:
                    return StepResult(float(reward), False, True)
                discount = self.task.get_termination(self.physics)
                if discount is not None:
                    return StepResult(float(reward), discount == 0.0, discount != 0.0)
        except self._physics_error:
            return StepResult(0.0, True, False)
        if not np.isfinite(reward) or not np.all(np.isfinite(self.physics.data.qpos)):
            return StepResult(0.0, True, False)
        return StepResult(float(reward), False, False)

    def _physics_step(self, model: Any, data: Any, warnings: np.ndarray) -> None:
        """``physics.step(n_sub_steps)``: dm_control's MuJoCo calls (its legacy step: finish
        the step begun by the last ``mj_step1``, then ``mj_step1`` again) and its check that no
        MuJoCo warning was raised (``PhysicsError``), without its context manager."""
        mj, n = self._mujoco, self.n_sub_steps
        before = warnings.copy()
        if not self.physics.legacy_step:
            mj.mj_step(model, data, n)
        else:
            if self._rk4:
                mj.mj_step(model, data, n)
            else:
                mj.mj_step2(model, data)
                if n > 1:
                    mj.mj_step(model, data, n - 1)
            mj.mj_step1(model, data)
        if (warnings > before).any():
            raise self._physics_error(f"MuJoCo warnings {np.flatnonzero(warnings > before)}")


class NominalEnv:
    """A nominal env: a DMC task stepped by :class:`TaskPhysics`, rendering a frame stack when
    ``pixels`` (PixelEnv's camera, image size, frame stack and options) and otherwise never.

    ``reset``/``step`` return a :class:`~distdrq.types.TimeStep` whose observation is the uint8
    frame stack (``pixels``) or the float32 state vector; ``step`` also leaves the last
    :class:`StepResult` in :attr:`last_result`. Raises ``GLBackendError`` (one line) when
    ``pixels`` and the machine cannot render.
    """

    def __init__(self, cfg: EnvConfig, seed: int, pixels: bool) -> None:
        from distdrq.envs.dmc import PixelEnv, load_task

        check_clonable(cfg.task)
        self.cfg = cfg
        self.pixels = pixels
        self._pixel_env = PixelEnv(cfg, seed) if pixels else None
        self._env = self._pixel_env.dm_env if self._pixel_env else load_task(cfg.task, seed, cfg)
        self.physics_stepper = TaskPhysics(self._env, cfg.action_repeat)
        self.action_dim = int(np.prod(self._env.action_spec().shape))
        self.state_dim = int(self.physics_stepper.observation().size)
        self.obs_shape: tuple[int, ...] = (
            self._pixel_env.obs_shape if self._pixel_env else (self.state_dim,)
        )
        self.frame_shape = self._pixel_env.frame_shape if self._pixel_env else (0, 0, 0)
        self.last_result = StepResult(0.0, False, False)
        self.render_seconds = 0.0
        """time spent rendering (and resetting, for pixels) since the caller last zeroed it"""

    @property
    def agent_step_seconds(self) -> float:
        """Simulated seconds per agent step (control timestep x action repeat)."""
        return self.physics_stepper.control_timestep * self.cfg.action_repeat

    def reset(self) -> TimeStep:
        """A new episode (the task's own random initial state)."""
        self.physics_stepper.reset_count()
        self.last_result = StepResult(0.0, False, False)
        if self._pixel_env is not None:
            start = time.perf_counter()
            ts = self._pixel_env.reset()
            self.render_seconds += time.perf_counter() - start
            return ts
        self._env.reset()
        return self._timestep(0.0, first=True, last=False)

    def step(self, action: np.ndarray) -> TimeStep:
        """One agent step with ``action`` in [-1, 1]."""
        result = self.physics_stepper.step(action)
        self.last_result = result
        if self._pixel_env is not None:
            start = time.perf_counter()
            ts = self._pixel_env.advance_frame(result.reward, 1.0, result.done)
            self.render_seconds += time.perf_counter() - start
            return ts
        return self._timestep(result.reward, first=False, last=result.done)

    def state(self) -> np.ndarray:
        """The critic's privileged input now (the task's observation vector), float32 [d]."""
        return self.physics_stepper.observation()

    def capture(self) -> PhysicsState:
        """This nominal's physics state, for its clones."""
        return self.physics_stepper.capture()

    def make_clone(self, share_model: bool = True) -> TaskPhysics:
        """A physics-only clone of this nominal at its current state, sharing its model
        unless ``share_model`` is False (a clone that restores other states than this
        nominal's current one must not: restoring writes the task's model fields)."""
        return self.physics_stepper.copy(self._env, share_model)

    def close(self) -> None:
        """Free the renderer and the physics."""
        if self._pixel_env is not None:
            self._pixel_env.close()
        else:
            self._env.physics.free()

    def _timestep(self, reward: float, first: bool, last: bool) -> TimeStep:
        frame = np.zeros(self.frame_shape, np.uint8)
        return TimeStep(self.state(), frame, float(reward), 1.0, first, last)
