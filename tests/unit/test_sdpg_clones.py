"""Physics clones of DMC tasks (distdrq.envs.clones) on real MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest

from distdrq.config import ConfigError, EnvConfig, load_config
from distdrq.envs.clones import NominalEnv, TaskPhysics, check_clonable
from distdrq.envs.dmc import PixelEnv


def _nominal(task: str, seed: int = 0, repeat: int = 2) -> NominalEnv:
    env = NominalEnv(EnvConfig(task=task, action_repeat=repeat), seed, pixels=False)
    env.reset()
    return env


def _window(nominal: NominalEnv, clone: TaskPhysics, actions: np.ndarray):
    """Step both with the same actions; their rewards, integration states and observations."""
    trace = {"nominal": [], "clone": []}
    for action in actions:
        for name, env in (("nominal", nominal.physics_stepper), ("clone", clone)):
            result = env.step(action)
            trace[name].append((result.reward, env.capture().integration, env.observation()))
    return trace


def _same(trace) -> bool:
    return all(
        a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
        for a, b in zip(trace["nominal"], trace["clone"], strict=True)
    )


@pytest.mark.parametrize("task", ["walker_walk", "cheetah_run", "quadruped_walk"])
def test_zero_noise_clone_is_its_nominal_bit_for_bit_and_skipping_forward_drifts(task):
    nominal = _nominal(task)
    rng = np.random.default_rng(0)
    for _ in range(5):
        nominal.step(rng.uniform(-1, 1, nominal.action_dim))
    faithful, careless = nominal.make_clone(), nominal.make_clone()
    for clone in (faithful, careless):  # both stray first, so stale derived quantities differ
        for _ in range(3):
            clone.step(rng.uniform(-1, 1, nominal.action_dim))
    start = nominal.capture()
    faithful.restore(start)
    careless.restore(start, forward=False)
    actions = rng.uniform(-1, 1, (32, nominal.action_dim))
    assert _same(_window(nominal, faithful, actions))
    nominal.physics_stepper.restore(start)
    assert not _same(_window(nominal, careless, actions))


@pytest.mark.parametrize("task", ["walker_walk", "cheetah_run", "reacher_easy", "cartpole_swingup"])
def test_clone_stepping_equals_environment_step(task):
    """The stepper clones use is dm_control's Environment.step (via PixelEnv), bit for bit,
    including the episode's end after 1000 control steps: with MuJoCo called directly (cartpole
    integrates with RK4) and, for walker and cheetah, the fast rewards (reacher and cartpole
    keep dm_control's). (The frames PixelEnv
    renders, here without shadows and reflections, 6x faster, do not touch the physics.)"""
    cfg = EnvConfig(task=task, action_repeat=2, image_size=16, fast_render=True)
    pixel_env, nominal = PixelEnv(cfg, 3), NominalEnv(cfg, 3, pixels=False)
    assert nominal.physics_stepper._direct
    pixel_env.reset()
    nominal.reset()
    rng = np.random.default_rng(1)
    lasts = []
    dim = nominal.action_dim
    for _ in range(500):
        action = rng.uniform(-1, 1, dim).astype(np.float32)
        expected, got = pixel_env.step(action), nominal.step(action)
        assert got.reward == expected.reward
        lasts.append((got.last, expected.last))
    assert np.array_equal(
        pixel_env.physics.get_state(), nominal.physics_stepper.physics.get_state()
    )
    assert lasts[-1] == (True, True) and not any(a or b for a, b in lasts[:-1])
    assert nominal.last_result.truncated and not nominal.last_result.terminated
    pixel_env.close()
    nominal.close()


def test_dm_controls_own_step_path_steps_alike():
    """Tasks that override before_step/after_step (or visualise rewards) are stepped through
    dm_control's Task and Physics methods; for a suite task both paths give the same state."""
    direct, wrapped = _nominal("walker_walk"), _nominal("walker_walk")
    wrapped.physics_stepper._direct = False
    actions = np.random.default_rng(4).uniform(-1, 1, (60, 6))
    results = [(direct.step(a).reward, wrapped.step(a).reward) for a in actions]
    assert all(a == b for a, b in results)
    assert np.array_equal(
        direct.physics_stepper.physics.get_state(), wrapped.physics_stepper.physics.get_state()
    )


def test_task_state_outside_mjdata_travels_with_the_clone():
    """reacher keeps its target in the model: a clone in another Physics (another process, as a
    distributed runner would have) needs the copied model fields to reproduce its nominal."""
    nominal, other = _nominal("reacher_easy", seed=0), _nominal("reacher_easy", seed=5)
    stranger = TaskPhysics(other._env, 2)  # its own model, another target
    state, own = nominal.capture(), stranger.capture()
    assert set(state.model) == {"geom_pos", "geom_size"}
    actions = np.random.default_rng(2).uniform(-1, 1, (40, 2))
    stranger.restore(state)
    assert _same(_window(nominal, stranger, actions))
    nominal.physics_stepper.restore(state)
    stranger.restore(own)  # its own target back, then the nominal's state without the model
    stranger.restore(type(state)(state.integration, {}, state.step))
    trace = _window(nominal, stranger, actions)
    assert not _same(trace)
    # the joints move alike; what differs is where the target is (observation "to_target")
    a, b = trace["nominal"][-1], trace["clone"][-1]
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[2], b[2])


def test_clones_share_the_step_count_and_truncate_with_their_nominal():
    nominal = _nominal("cartpole_swingup", repeat=8)  # 125 agent steps an episode
    for _ in range(120):
        nominal.step(np.zeros(1))
    clone = nominal.make_clone()
    assert clone.step_count == nominal.physics_stepper.step_count == 960
    for step in range(5):
        done = clone.step(np.ones(1)).truncated
        assert done == (step == 4)


def test_a_physics_error_is_a_termination_with_reward_zero():
    nominal = _nominal("cheetah_run")
    clone = nominal.make_clone()
    clone.physics.data.qvel[:] = np.nan
    result = clone.step(np.zeros(6))
    assert result.terminated and not result.truncated and result.reward == 0.0
    clone.restore(nominal.capture())  # a re-sync makes it healthy again
    assert not clone.step(np.zeros(6)).done


@pytest.mark.parametrize("task", ["reach_duplo", "point_reach"])
def test_tasks_that_cannot_be_cloned_are_refused_in_one_line(task):
    with pytest.raises(ConfigError) as info:
        check_clonable(task)
    assert "\n" not in str(info.value) and task in str(info.value)
    with pytest.raises(ConfigError, match="cannot clone"):
        load_config(task, None, ["agent.algo=sdpg"])
    load_config(task, None, [])  # other algorithms still run it
