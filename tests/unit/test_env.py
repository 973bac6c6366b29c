"""PixelEnv against real MuJoCo rendering (MUJOCO_GL=egl by default, see tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distdrq.config import EnvConfig
from distdrq.envs.dmc import PixelEnv, make_env


def _env(task: str = "walker_walk", seed: int = 0, **kw) -> PixelEnv:
    return make_env(EnvConfig(task=task, **kw), seed)


def _actions(dim: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, dim)).astype(np.float32)


def test_shapes_and_dtypes_walker_84():
    env = _env()
    assert env.obs_shape == (9, 84, 84) and env.frame_shape == (3, 84, 84)
    assert env.action_dim == 6
    ts = env.reset()
    assert ts.observation.shape == (9, 84, 84) and ts.observation.dtype == np.uint8
    assert ts.frame.shape == (3, 84, 84) and ts.frame.dtype == np.uint8
    assert (ts.reward, ts.discount, ts.first, ts.last) == (0.0, 1.0, True, False)
    ts = env.step(np.zeros(6, np.float32))
    assert ts.observation.shape == (9, 84, 84) and not ts.first
    assert isinstance(ts.reward, float) and isinstance(ts.discount, float)
    env.close()


def test_frame_stack_order_and_copies():
    env = _env(image_size=48)
    first = env.reset()
    obs = first.observation.reshape(3, 3, 48, 48)
    for k in range(3):
        np.testing.assert_array_equal(obs[k], first.frame)
    acts = _actions(env.action_dim, 2)
    second = env.step(acts[0])
    obs = second.observation.reshape(3, 3, 48, 48)
    np.testing.assert_array_equal(obs[0], first.frame)
    np.testing.assert_array_equal(obs[1], first.frame)
    np.testing.assert_array_equal(obs[2], second.frame)
    assert not np.array_equal(second.frame, first.frame)
    third = env.step(acts[1])
    obs = third.observation.reshape(3, 3, 48, 48)
    for k, frame in enumerate((first.frame, second.frame, third.frame)):
        np.testing.assert_array_equal(obs[k], frame)
    # returned arrays are copies: later steps do not change them
    np.testing.assert_array_equal(first.observation.reshape(3, 3, 48, 48)[2], first.frame)
    np.testing.assert_array_equal(second.observation.reshape(3, 3, 48, 48)[2], second.frame)


def test_grayscale_is_rounded_bt601_luma():
    gray, rgb = _env(image_size=48, grayscale=True), _env(image_size=48)
    assert gray.obs_shape == (3, 48, 48) and gray.frame_shape == (1, 48, 48)
    g, c = gray.reset(), rgb.reset()
    assert g.observation.shape == (3, 48, 48) and g.frame.shape == (1, 48, 48)
    expected = np.rint(np.tensordot([0.299, 0.587, 0.114], c.frame.astype(np.float64), 1))
    assert np.abs(g.frame[0].astype(np.float64) - expected).max() <= 0.5 + 1e-9
    assert g.frame.dtype == np.uint8


def test_quadruped_renders_camera_2():
    env = _env("quadruped_walk", image_size=64)
    ts = env.reset()
    direct = env.physics.render(height=64, width=64, camera_id=2).transpose(2, 0, 1)
    np.testing.assert_array_equal(ts.frame, direct)
    cam0 = env.physics.render(height=64, width=64, camera_id=0).transpose(2, 0, 1)
    assert not np.array_equal(ts.frame, cam0)


def test_camera_id_override():
    env = _env("walker_walk", image_size=32, camera_id=1)
    ts = env.reset()
    direct = env.physics.render(height=32, width=32, camera_id=1).transpose(2, 0, 1)
    np.testing.assert_array_equal(ts.frame, direct)


def test_action_repeat_sums_rewards():
    repeat2 = _env("walker_walk", seed=3, image_size=32, fast_render=True, action_repeat=2)
    repeat1 = _env("walker_walk", seed=3, image_size=32, fast_render=True, action_repeat=1)
    repeat2.reset(), repeat1.reset()
    total = 0.0
    for action in _actions(6, 15):
        ts2 = repeat2.step(action)
        ts1a, ts1b = repeat1.step(action), repeat1.step(action)
        assert ts2.reward == ts1a.reward + ts1b.reward  # same float operations
        assert ts2.discount == ts1a.discount * ts1b.discount == 1.0
        np.testing.assert_array_equal(ts2.frame, ts1b.frame)
        total += ts2.reward
    assert total > 0.0


def test_episode_is_500_agent_steps_at_repeat_2():
    env = _env("cartpole_swingup", image_size=16, fast_render=True, action_repeat=2)
    ts = env.reset()
    steps, lasts = 0, 0
    action = np.zeros(env.action_dim, np.float32)
    while not ts.last:
        ts = env.step(action)
        steps += 1
        lasts += ts.last
    assert steps == 500 and lasts == 1
    assert ts.discount == 1.0  # time limit, not termination
    with pytest.raises(RuntimeError):
        env.step(action)
    assert env.reset().first


def test_fast_render_differs_but_same_scene():
    slow, fast = _env(image_size=64), _env(image_size=64, fast_render=True)
    a, b = slow.reset().frame, fast.reset().frame
    assert b.shape == a.shape and b.dtype == np.uint8 and b.std() > 5
    assert not np.array_equal(a, b)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 30


def test_black_floor_darkens_floor():
    plain, black = _env(image_size=64), _env(image_size=64, black_floor=True)
    a, b = plain.reset().frame, black.reset().frame
    bottom = slice(48, 64)  # the walker camera sees floor in the bottom rows
    assert b[:, bottom].mean() < 0.25 * a[:, bottom].mean()
    assert (b.max(axis=0) == 0).mean() > 0.2 > (a.max(axis=0) == 0).mean()
    np.testing.assert_array_equal(a[:, :8], b[:, :8])  # sky untouched


def test_action_validation_and_clipping():
    env = _env(image_size=16, fast_render=True)
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(6, np.nan, np.float32))
    with pytest.raises(RuntimeError):
        _env(image_size=16).step(np.zeros(6, np.float32))
    clipped = _env(image_size=16, fast_render=True)
    clipped.reset()
    big = np.array([3, -3, 0.5, 1, -1, 7], np.float32)
    a, b = env.step(big), clipped.step(np.clip(big, -1, 1))
    np.testing.assert_array_equal(a.frame, b.frame)
    assert a.reward == b.reward


def test_action_scaling_to_spec_bounds():
    env = _env("reach_duplo", image_size=16, fast_render=True)  # bounds are not [-1, 1]
    spec = env._env.action_spec()
    np.testing.assert_allclose(env._act_min, spec.minimum)
    np.testing.assert_allclose(env._act_min + 2 * env._act_scale, spec.maximum)


def test_determinism_same_seed_same_frames():
    actions = _actions(6, 5, seed=1)
    runs = []
    for _ in range(2):
        env = _env(seed=7, image_size=32)
        frames = [env.reset().frame]
        frames += [env.step(a).frame for a in actions]
        runs.append(np.stack(frames))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    other = _env(seed=8, image_size=32).reset().frame
    assert not np.array_equal(other, runs[0][0])


def test_physics_state_roundtrip():
    env = _env(image_size=32)
    env.reset()
    state = env.physics_state()
    before = env.render()
    env.step(np.ones(6, np.float32))
    assert not np.array_equal(env.render(), before)
    env.set_physics_state(state)
    np.testing.assert_array_equal(env.render(), before)


def test_unknown_task_is_value_error():
    with pytest.raises(ValueError, match="distdrq tasks"):
        _env("walker_fly")


def test_gl_failure_raises_gl_backend_error():
    code = textwrap.dedent(
        """
        from distdrq.config import EnvConfig
        from distdrq.envs.dmc import GLBackendError, make_env
        try:
            make_env(EnvConfig(image_size=16), 0).reset()
        except GLBackendError as exc:
            print("GLBackendError:", exc)
        """
    )
    env = {**os.environ, "MUJOCO_GL": "egl", "MUJOCO_EGL_DEVICE_ID": "999"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "GLBackendError: cannot render with MUJOCO_GL=egl" in out.stdout, out.stderr[-2000:]
    assert "apt-get install" in out.stdout


def test_the_display_check_before_a_local_launch_spares_tasks_without_mujoco(monkeypatch):
    """glfw without a display: a MuJoCo task is refused before Ray starts; point_reach, which
    never opens GL, still launches (as it did before the check moved into the driver)."""
    from distdrq.envs.dmc import GLBackendError, check_display_for

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    check_display_for(EnvConfig(task="point_reach"))
    with pytest.raises(GLBackendError, match="no display: DISPLAY is not set"):
        check_display_for(EnvConfig(task="cartpole_swingup"))
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    check_display_for(EnvConfig(task="cartpole_swingup"))
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setenv("MUJOCO_GL", "egl")  # the environment wins over env.gl_backend=glfw
    check_display_for(EnvConfig(task="cartpole_swingup", gl_backend="glfw"))


def test_dm_control_model_deprecation_notice_is_not_printed(caplog):
    """dm_control's cheetah.xml uses MuJoCo's deprecated settotalmass: MuJoCo's notice about
    it (once per env, dozens of lines for SDPG's clones) is dropped; other absl warnings are
    not."""
    import logging

    with caplog.at_level(logging.WARNING):
        env = _env("cheetah_run")
        env.reset()
        logging.getLogger("absl").warning("an unrelated absl warning")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("settotalmass" in m for m in messages)
    assert "an unrelated absl warning" in messages
    env.close()
