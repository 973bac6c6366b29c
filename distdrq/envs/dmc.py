"""DeepMind Control Suite tasks rendered to pixels with DrQ-v2's wrappers, in one class.

:class:`PixelEnv` does what DrQ-v2's wrapper stack does (``ActionDTypeWrapper``,
``ActionRepeatWrapper``, ``action_scale.Wrapper``, ``pixels.Wrapper``, ``FrameStackWrapper``)
with the same numbers, but renders once per agent step (after the last repeat) through one
reused ``dm_control.mujoco.Camera`` and keeps the frame stack in a preallocated ring.

dm_control is imported lazily so that ``MUJOCO_GL`` can be set from the config first.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import numpy as np

from distdrq.config import EnvConfig
from distdrq.envs.tasks import TASKS, TaskSpec
from distdrq.types import TimeStep

_LUMA = np.array([299, 587, 114], dtype=np.uint32)  # ITU-R 601, in thousandths
_FLOOR_NAMES = ("floor", "ground")


class _KnownModelWarnings(logging.Filter):
    """Drops MuJoCo's compiler notice that dm_control's own model files (cheetah, ...) use the
    deprecated ``settotalmass`` attribute: it is about dm_control's XML, not the user's run,
    and it was printed once per env (dozens of lines for SDPG's clones)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'settotalmass' is deprecated" not in record.getMessage()


logging.getLogger("absl").addFilter(_KnownModelWarnings())


class GLBackendError(RuntimeError):
    """MuJoCo cannot render with the selected OpenGL backend; the message names the fix."""


def _gl_error(exc: BaseException, configured: str) -> GLBackendError:
    backend = os.environ.get("MUJOCO_GL", configured)
    reason = " ".join(str(exc).split()) or type(exc).__name__
    fix = {
        "osmesa": "install OSMesa (apt-get install libosmesa6) or set env.gl_backend=egl",
        "glfw": "glfw needs a display; set env.gl_backend=egl for headless rendering",
    }.get(backend, "install EGL (apt-get install libegl1 libgl1) or set env.gl_backend=osmesa")
    if backend != configured:
        fix += f" (MUJOCO_GL={backend} from the environment overrides env.gl_backend={configured})"
    return GLBackendError(f"cannot render with MUJOCO_GL={backend} ({reason}); {fix}")


class PixelEnv:
    """DeepMind Control Suite task rendered to pixels, DrQ-v2 style.

    - Loading: ``suite.load(domain, task, task_kwargs={"random": seed},
      visualize_reward=False)``; ``reach_duplo`` is ``manipulation.load("reach_duplo_vision",
      seed=seed)`` rendered from its ``front_close`` camera (the pixels DrQ-v2 reads), with that
      camera observable switched off so that dm_control does not render it on its own.
    - Actions live in [-1, 1] (clipped there) and are mapped linearly onto the action spec
      bounds, as ``action_scale.Wrapper`` does.
    - One agent step is ``cfg.action_repeat`` physics control steps; ``reward += r * discount;
      discount *= d`` over the repeats, stopping early when the episode ends.
    - Observations stack ``cfg.frame_stack`` uint8 frames [C, H, W] along channels, oldest
      first; at reset the first frame fills every slot. Returned arrays are fresh copies.
    - Rendering: camera ``cfg.camera_id``, or the task's DrQ-v2 camera when it is -1.
      ``fast_render`` turns off shadows and reflections; ``grayscale`` keeps one luminance
      channel (ITU-R 601 weights, rounded); ``black_floor`` makes the textured ground plane
      (the geom named ``floor`` or ``ground``) matte black: its material loses its texture,
      specular highlight and reflectance (skybox and other planes, e.g. reacher's walls, stay).
    - ``os.environ.setdefault("MUJOCO_GL", cfg.gl_backend)`` runs before dm_control is first
      imported; a ``MUJOCO_GL`` already set in the environment wins over the config, and
      once dm_control is imported the backend cannot change in this process.

    Raises:
        ValueError: unknown task name.
        GLBackendError: no OpenGL context can be created with the backend.
    """

    obs_shape: tuple[int, int, int]
    """(frame_stack * C, H, W)"""
    frame_shape: tuple[int, int, int]
    """(C, H, W); C = 3, or 1 with grayscale"""
    action_dim: int
    """number of action dimensions; actions are float32 in [-1, 1]"""

    def __init__(self, cfg: EnvConfig, seed: int) -> None:
        spec = TASKS.get(cfg.task)
        if spec is None:
            raise ValueError(f"unknown task {cfg.task!r}; run `distdrq tasks` to list the tasks")
        self.cfg = cfg
        self.task: TaskSpec = spec
        self.seed = seed
        self._env = _load(spec, seed, cfg.gl_backend)
        self._composer = spec.domain == "manipulation"
        self._camera_id: int | str = cfg.camera_id if cfg.camera_id >= 0 else spec.camera_id
        if self._composer and cfg.camera_id < 0:
            self._camera_id = "front_close"

        aspec = self._env.action_spec()
        self._act_min = np.broadcast_to(np.asarray(aspec.minimum, np.float64), aspec.shape)
        self._act_scale = (np.asarray(aspec.maximum, np.float64) - self._act_min) / 2.0
        self.action_dim = int(np.prod(aspec.shape))
        self._act_shape = tuple(aspec.shape)

        channels = 1 if cfg.grayscale else 3
        size = cfg.image_size
        self.frame_shape = (channels, size, size)
        self.obs_shape = (cfg.frame_stack * channels, size, size)
        self._frames = np.zeros((cfg.frame_stack, *self.frame_shape), dtype=np.uint8)
        self._head = 0
        self._camera: Any = None
        self._needs_reset = True

    # -- public API -----------------------------------------------------------------------

    @property
    def dm_env(self) -> Any:
        """The ``dm_control`` Environment underneath (its task, physics and action spec)."""
        return self._env

    @property
    def physics(self) -> Any:
        """The live ``dm_control`` Physics (for reach_duplo a new one after every reset)."""
        return self._env.physics

    def check_rendering(self) -> None:
        """Create the OpenGL context now, so that a backend that cannot render fails here
        (:class:`GLBackendError`) rather than at the first ``reset``."""
        if self._camera is None:
            self._bind_physics()

    def reset(self) -> TimeStep:
        """Start an episode; every stack slot holds the first frame."""
        self._env.reset()
        if self._camera is None or self._composer:  # composer recompiles physics every reset
            self._bind_physics()
        self._render_into(0)
        self._frames[1:] = self._frames[0]
        self._head = 0
        self._needs_reset = False
        return self._timestep(0.0, 1.0, first=True, last=False)

    def step(self, action: np.ndarray) -> TimeStep:
        """Apply ``action`` (shape [action_dim], in [-1, 1]) for ``action_repeat`` control steps.

        Raises:
            ValueError: wrong shape or non-finite values.
            RuntimeError: called before ``reset`` or after the episode ended.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (the episode has ended or not begun)")
        act = np.asarray(action)
        if act.size != self.action_dim or act.ndim != 1:
            raise ValueError(
                f"{self.task.name}: action has shape {act.shape}, expected ({self.action_dim},)"
            )
        if not np.all(np.isfinite(act)):
            raise ValueError(f"{self.task.name}: action has non-finite values: {act}")
        act = np.clip(act.astype(np.float64), -1.0, 1.0)
        env_action = (self._act_min + self._act_scale * (act + 1.0)).reshape(self._act_shape)

        reward, discount, last = 0.0, 1.0, False
        for _ in range(self.cfg.action_repeat):
            ts = self._env.step(env_action)
            reward += (ts.reward or 0.0) * discount
            discount *= ts.discount
            if ts.last():
                last = True
                break
        return self.advance_frame(float(reward), float(discount), last)

    def advance_frame(self, reward: float, discount: float, last: bool) -> TimeStep:
        """Render the physics as it is now into the next stack slot and return the time step:
        what :meth:`step` does after its physics steps, for callers that step :attr:`physics`
        themselves (SDPG's nominals, :class:`distdrq.envs.clones.NominalEnv`)."""
        self._head = (self._head + 1) % self.cfg.frame_stack
        self._render_into(self._head)
        self._needs_reset = last
        return self._timestep(float(reward), float(discount), first=False, last=last)

    def physics_state(self) -> np.ndarray:
        """``physics.get_state()``: qpos, qvel, act (not the episode step count)."""
        return self._env.physics.get_state()

    def set_physics_state(self, state: np.ndarray) -> None:
        """``physics.set_state(state)`` inside ``reset_context`` (recomputes positions)."""
        physics = self._env.physics
        with physics.reset_context():
            physics.set_state(state)

    def render(self) -> np.ndarray:
        """Render the current state as one frame [C, H, W] (uint8, a new array)."""
        if self._camera is None:
            self._bind_physics()
        out = np.empty(self.frame_shape, dtype=np.uint8)
        self._render_frame(out)
        return out

    def close(self) -> None:
        """Free the renderer and the physics."""
        self._camera = None
        env, self._env = self._env, None
        if env is None:
            return
        if self._composer:
            env.close()
        else:
            env.physics.free()

    # -- internals ------------------------------------------------------------------------

    def _bind_physics(self) -> None:
        from dm_control.mujoco import Camera

        physics = self._env.physics
        try:
            _ = physics.contexts  # creates the GL context
        except Exception as exc:
            raise _gl_error(exc, self.cfg.gl_backend) from exc
        if self.cfg.black_floor:
            _blacken_floor(physics.model)
        size = self.cfg.image_size
        camera = Camera(physics, height=size, width=size, camera_id=self._camera_id)
        if self.cfg.fast_render:
            import mujoco

            camera.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            camera.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._camera = camera

    def _render_into(self, slot: int) -> None:
        self._render_frame(self._frames[slot])

    def _render_frame(self, out: np.ndarray) -> None:
        image = self._camera.render()  # [H, W, 3] view of the camera's buffer
        if self.cfg.grayscale:
            luma = (image @ _LUMA + 500) // 1000
            np.copyto(out[0], luma, casting="unsafe")
        else:
            np.copyto(out, image.transpose(2, 0, 1))

    def _timestep(self, reward: float, discount: float, first: bool, last: bool) -> TimeStep:
        k = self.cfg.frame_stack
        order = (np.arange(1, k + 1) + self._head) % k
        return TimeStep(
            observation=self._frames[order].reshape(self.obs_shape),
            frame=self._frames[self._head].copy(),
            reward=reward,
            discount=discount,
            first=first,
            last=last,
        )


def make_env(cfg: EnvConfig, seed: int) -> PixelEnv:
    """Build the pixel env for ``cfg.task`` seeded with ``seed``."""
    return PixelEnv(cfg, seed)


def load_task(name: str, seed: int, cfg: EnvConfig) -> Any:
    """The ``dm_control`` Environment of task ``name`` (DrQ-v2's name), seeded, not rendered
    (for envs that need only its physics, such as SDPG's state-only nominals)."""
    spec = TASKS.get(name)
    if spec is None:
        raise ValueError(f"unknown task {name!r}; run `distdrq tasks` to list the tasks")
    return _load(spec, seed, cfg.gl_backend)


def check_display_for(cfg: EnvConfig) -> None:
    """:func:`check_display` for the envs of ``cfg`` (a local launch's actors inherit this
    process's environment); tasks that are not MuJoCo's (point_reach) never open GL."""
    if cfg.task in TASKS:
        check_display(cfg.gl_backend)


def check_display(configured: str) -> None:
    """glfw opens a window: without a display it fails only after GLFW's warnings and a
    traceback from dm_control's half-made context, so refuse it first, in one line. The
    backend is MUJOCO_GL, else ``configured`` (what this process's envs will use; a local
    launch checks it before starting Ray, whose actors inherit this environment)."""
    on_linux = sys.platform.startswith("linux")
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if os.environ.get("MUJOCO_GL", configured) == "glfw" and on_linux and not display:
        raise _gl_error(RuntimeError("no display: DISPLAY is not set"), configured)


def _import_dm_control(configured: str) -> tuple[Any, Any]:
    """dm_control's ``manipulation`` and ``suite``. With glfw, a failed ``glfw.init()`` (which
    pyGLFW reports only as warnings, dm_control going on to fail later with a traceback of its
    half-made context) is a :class:`GLBackendError` naming GLFW's own reason."""
    if os.environ.get("MUJOCO_GL") != "glfw":
        from dm_control import manipulation, suite

        return manipulation, suite
    import glfw  # pyGLFW, dm_control's binding

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", glfw.GLFWError)
        from dm_control import manipulation, suite
    failures = [str(w.message) for w in caught if issubclass(w.category, glfw.GLFWError)]
    for w in caught:
        if not issubclass(w.category, glfw.GLFWError):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if failures:
        raise _gl_error(RuntimeError(f"GLFW: {'; '.join(failures)}"), configured)
    return manipulation, suite


def _load(spec: TaskSpec, seed: int, gl_backend: str) -> Any:
    os.environ.setdefault("MUJOCO_GL", gl_backend)
    check_display(gl_backend)
    try:
        manipulation, suite = _import_dm_control(gl_backend)
    except (ImportError, RuntimeError, AttributeError, OSError) as exc:
        if isinstance(exc, GLBackendError):
            raise
        if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.startswith("dm_control"):
            raise
        raise _gl_error(exc, gl_backend) from exc
    if spec.domain == "manipulation":
        env = manipulation.load(spec.task, seed=seed)
        # DrQ-v2 reads the 'front_close' observable; we render that camera ourselves, once
        env.task.observables["front_close"].enabled = False
        return env
    return suite.load(spec.domain, spec.task, task_kwargs={"random": seed}, visualize_reward=False)


def _blacken_floor(model: Any) -> None:
    import mujoco

    for geom in range(model.ngeom):
        name = model.id2name(geom, "geom") or ""
        is_plane = model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_PLANE
        if not (is_plane and model.geom_bodyid[geom] == 0 and name in _FLOOR_NAMES):
            continue
        mat = model.geom_matid[geom]
        if mat >= 0 and np.count_nonzero(model.geom_matid == mat) == 1:
            model.mat_texid[mat] = -1
            model.mat_rgba[mat] = (0.0, 0.0, 0.0, 1.0)
            model.mat_specular[mat] = 0.0
            model.mat_reflectance[mat] = 0.0
            model.mat_emission[mat] = 0.0
        else:  # shared material: drop it for this geom (default specular remains)
            model.geom_matid[geom] = -1
            model.geom_rgba[geom] = (0.0, 0.0, 0.0, 1.0)
