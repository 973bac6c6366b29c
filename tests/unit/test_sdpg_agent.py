"""SDPG's group runner (distdrq.run.groups) and learner step (distdrq.agent.sdpg) on real
MuJoCo with tiny sizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from distdrq.agent import make_agent
from distdrq.agent.sdpg import SDPGAgent
from distdrq.checkpoint import to_numpy, to_tensors
from distdrq.config import AgentConfig, EnvConfig, SDPGConfig
from distdrq.run.groups import GroupRunner


class _ZeroNoise:
    """Stands in for the runner's generator: every epsilon is 0."""

    def standard_normal(self, shape, dtype):
        return np.zeros(shape, dtype)


def _runner(task="cheetah_run", obs="state", groups=2, clones=3, horizon=8, repeat=2, **env):
    cfg = SDPGConfig(obs=obs, nominals=groups, clones=clones, horizon=horizon)
    env_cfg = EnvConfig(task=task, action_repeat=repeat, **env)
    return GroupRunner(env_cfg, cfg, range(groups), seed=3), cfg


def _agent(runner: GroupRunner, cfg: SDPGConfig) -> SDPGAgent:
    first = runner.nominals[0]
    return make_agent(
        first.obs_shape,
        first.action_dim,
        AgentConfig(algo="sdpg", device="cpu"),
        sdpg=cfg,
        state_dim=runner.state_dim,
    )


def test_window_shapes_and_zero_noise_clones_follow_their_nominal():
    runner, cfg = _runner()
    agent = _agent(runner, cfg)
    runner.set_weights(agent.policy_state_dict(), 7)
    runner.rng = _ZeroNoise()
    for _ in range(2):  # the second window starts where the first ended
        result = runner.run_window()
        assert result.weight_version == 7 and result.horizon == 8
        assert result.states.shape == (2, 4, 9, 17) and result.rewards.shape == (2, 4, 8)
        assert result.means.shape == (2, 8, 6) and result.noise.shape == (2, 3, 8, 6)
        assert not result.dones.any() and result.reset_index.shape == (0, 3)
        for m in range(1, 4):
            assert np.array_equal(result.rewards[:, m], result.rewards[:, 0])
            assert np.array_equal(result.states[:, m], result.states[:, 0])
        # groups differ (their states: cheetah's rewards can all be 0 in the first steps,
        # depending on the untrained policy, which depends on torch's global seed)
        assert not np.array_equal(result.states[0], result.states[1])
    runner.close()


def test_noisy_clones_differ_and_restart_from_their_nominal_each_window():
    runner, cfg = _runner()
    runner.set_weights(_agent(runner, cfg).policy_state_dict(), 0)
    first, second = runner.run_window(), runner.run_window()
    assert not np.array_equal(first.rewards[:, 1], first.rewards[:, 0])
    for m in range(4):  # every env of a group starts the window in its nominal's state
        assert np.array_equal(second.states[:, m, 0], second.states[:, 0, 0])
    assert np.array_equal(second.states[:, 0, 0], first.states[:, 0, -1])
    runner.close()


def test_episode_end_resets_the_group_and_frames_rebuild_the_stacks():
    """cartpole at action repeat 8: 125 agent steps an episode, so the fourth 40-step window
    crosses it. The stacks rebuilt from single frames equal what the policy saw."""
    runner, cfg = _runner(
        "cartpole_swingup", "pixels", clones=2, horizon=40, repeat=8, image_size=16,
        fast_render=True,
    )  # fmt: skip
    runner.set_weights(_agent(runner, cfg).policy_state_dict(), 0)
    seen = []
    means = runner.policy.means
    runner.policy.means = lambda obs: (seen.append(obs.copy()), means(obs))[1]
    results = [runner.run_window() for _ in range(4)]
    last = results[3]
    assert [len(r.episode_returns) for r in results] == [0, 0, 0, 2]
    assert last.episode_lengths == [125, 125]
    t = 125 - 3 * 40 - 1  # the step that ended the episode
    assert last.dones[:, :, t].all() and last.dones.sum() == 2 * 3
    assert {tuple(i) for i in last.reset_index} == {(g, m, t) for g in range(2) for m in range(3)}
    assert np.array_equal(last.next_states()[:, :, t], last.reset_states.reshape(2, 3, -1))
    assert not np.array_equal(last.states[:, :, t + 1], last.next_states()[:, :, t])
    for r, result in enumerate(results):
        rebuilt = result.actor_observations()
        for step in range(40):
            assert np.array_equal(rebuilt[:, step], seen[40 * r + step])
    stack = last.actor_observations()[:, t + 1].reshape(2, 3, 3, 16, 16)
    assert all(np.array_equal(stack[:, k], stack[:, 0]) for k in range(3))  # a reset fills it
    runner.close()


def test_a_clone_that_fails_is_resynced_to_its_nominal():
    runner, cfg = _runner()
    runner.set_weights(_agent(runner, cfg).policy_state_dict(), 0)

    def failing(physics, job, k, t, action):  # group 1, clone 1 (env m = 2), step 3
        if (job.group, job.first + k, t) == (1, 1, 3):
            physics.physics.data.qvel[:] = np.nan
        return physics.step(action)

    runner.step_clone = failing
    result = runner.run_window()
    assert result.terminated[1, 2, 3] and result.dones[1, 2, 3] and result.rewards[1, 2, 3] == 0
    assert result.terminated.sum() == 1 and result.dones.sum() == 1
    assert np.array_equal(result.states[1, 2, 4], result.states[1, 0, 4])
    assert result.reset_index.tolist() == [[1, 2, 3]] and not result.reset_states.any()
    assert np.isfinite(result.states).all()
    runner.close()


def test_learner_step_updates_and_resumes_exactly():
    runner, cfg = _runner()
    agent = _agent(runner, cfg)
    runner.set_weights(agent.policy_state_dict(), 0)
    results = [runner.run_window() for _ in range(2)]
    agent.learn([results[0]])  # warm-up iteration 0 has lr 0: one more to move the actor
    before = {k: v.clone() for k, v in agent.policy_state_dict().items()}
    buffer = io.BytesIO()  # through bytes, as a checkpoint goes through a file
    torch.save(to_tensors(agent.state_dict()), buffer)
    buffer.seek(0)
    saved = to_numpy(torch.load(buffer, weights_only=True))
    twin = _agent(runner, cfg)
    twin.load_state_dict(saved)
    torch.manual_seed(11)
    metrics = agent.learn([results[1]])
    torch.manual_seed(11)
    again = twin.learn([results[1]])
    assert metrics == again  # same state, same window: the same iteration
    for key, value in agent.policy_state_dict().items():
        assert torch.equal(value, twin.policy_state_dict()[key])
    assert agent.num_updates == 2 and metrics["actor_lr"] == pytest.approx(2e-3 / 99)
    assert not torch.equal(before["actor.head.0.weight"], agent.actor.head[0].weight)
    assert agent.obs_rms.count == pytest.approx(1e-4 + 2 * 9 * 2 * 4)  # (H + 1) x G x M a window
    assert all(np.isfinite(v) for v in metrics.values())
    for key in ("critic", "critic_target", "temperature", "actor_opt", "critic_opt", "obs_rms"):
        assert key in saved
    runner.close()


def test_critic_sees_every_env_or_only_nominals():
    runner, cfg = _runner()
    agent = _agent(runner, cfg)
    runner.set_weights(agent.policy_state_dict(), 0)
    result = runner.run_window()
    states = agent.batch([result]).states
    seen = []
    critic = agent.critic.forward
    agent.critic.forward = lambda x: (seen.append(x.shape[0]), critic(x))[1]
    agent.update_critic(states, torch.zeros(states.shape[:3]))
    assert sum(seen) == 2 * 2 * 4 * 8  # 2 passes over G x M x H pairs
    seen.clear()
    agent.sdpg.critic_on_clones = False
    agent.update_critic(states, torch.zeros(states.shape[:3]))
    assert sum(seen) == 2 * 2 * 1 * 8
    runner.close()
