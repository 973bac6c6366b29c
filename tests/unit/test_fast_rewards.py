"""distdrq.envs.fast_rewards equals dm_control's task.get_reward bit for bit."""

import numpy as np
import pytest

from distdrq.config import load_config
from distdrq.envs.clones import TaskPhysics
from distdrq.envs.dmc import load_task
from distdrq.envs.fast_rewards import (
    VERIFIED_DM_CONTROL,
    _tolerance,
    dm_control_version,
    fast_reward,
)

FAST = ["cheetah_run", "walker_stand", "walker_walk", "walker_run"]


def _same(a, b) -> bool:
    return (np.isnan(a) and np.isnan(b)) or float(a) == float(b)


@pytest.mark.parametrize("task", FAST)
def test_fast_reward_is_dm_controls_on_random_and_visited_states(task):
    env = load_task(task, 0, load_config(task).env)
    physics, rng = env.physics, np.random.default_rng(0)
    reward = fast_reward(env.task, physics, verified_only=False)
    assert reward is not None
    values = []
    # states a policy visits (random actions, from the task's own initial states) ...
    for _ in range(2):
        env.reset()
        for _ in range(300):
            spec = env.action_spec()
            env.step(rng.uniform(spec.minimum, spec.maximum))
            values.append((reward(physics), env.task.get_reward(physics)))
    # ... and states no policy reaches: any pose, fast in either direction
    for _ in range(1500):
        with physics.reset_context():
            physics.data.qpos[:] = rng.uniform(-2, 2, physics.model.nq)
            physics.data.qvel[:] = rng.normal(0, 12, physics.model.nv)
        values.append((reward(physics), env.task.get_reward(physics)))
    assert all(_same(fast, slow) for fast, slow in values), [
        (f, s) for f, s in values if not _same(f, s)
    ][:5]
    rewards = np.array([slow for _, slow in values])
    assert len(np.unique(rewards)) > 500 and rewards.min() < 0.1 and rewards.max() > 0.95


@pytest.mark.parametrize(
    "bounds, margin, sigmoid, value_at_margin",
    [((10.0, np.inf), 10.0, "linear", 0), ((1.2, np.inf), 0.6, "gaussian", 0.1),
     ((8.0, np.inf), 4.0, "linear", 0.5), ((-1.0, 2.0), 0.5, "gaussian", 0.3)],
)  # fmt: skip
def test_fast_tolerance_is_dm_controls_everywhere(bounds, margin, sigmoid, value_at_margin):
    from dm_control.utils.rewards import tolerance

    fast = _tolerance(*bounds, margin, sigmoid, value_at_margin)
    grid = np.random.default_rng(0).normal(0, 10, 5000)
    edges = [*bounds, bounds[0] - margin, bounds[1] + margin, 0.0, -0.0, np.inf, -np.inf, np.nan]
    for x in [*np.float64(grid), *np.float64(edges), *np.nextafter(np.float64(edges), 0)]:
        with np.errstate(over="ignore"):  # the largest finite x
            slow = tolerance(x, bounds=bounds, margin=margin, sigmoid=sigmoid,
                             value_at_margin=value_at_margin)  # fmt: skip
            assert _same(fast(x), slow), (x, fast(x), slow)
    values = [fast(x) for x in np.float64(grid)]
    assert 1.0 in values and any(0 < v < 1 for v in values)  # in bounds, and in the margin


def test_clone_stepping_uses_the_fast_reward_only_where_one_exists():
    cheetah = load_task("cheetah_run", 0, load_config("cheetah_run").env)
    assert TaskPhysics(cheetah, 2)._reward is not cheetah.task.get_reward
    reacher = load_task("reacher_easy", 0, load_config("reacher_easy").env)
    assert TaskPhysics(reacher, 2)._reward == reacher.task.get_reward


def test_fast_tolerance_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="sigmoid 'cosine'"):
        _tolerance(0.0, 1.0, 1.0, "cosine", 0.1)
    with pytest.raises(ValueError, match="margin > 0"):
        _tolerance(0.0, 1.0, 0.0, "linear", 0.1)


def test_the_installed_dm_control_is_one_the_fast_rewards_were_verified_on():
    """The tests above compare against the installed dm-control; once they pass on a new
    release, add it to VERIFIED_DM_CONTROL (until then clones use dm_control's rewards)."""
    assert dm_control_version() in VERIFIED_DM_CONTROL, (
        f"dm-control {dm_control_version()}: if test_fast_rewards.py passes, add it to "
        "distdrq.envs.fast_rewards.VERIFIED_DM_CONTROL"
    )
