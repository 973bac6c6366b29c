"""DrQ (SAC) agent, nano encoder, gradient checkpointing, drq Policy (tiny nets, CPU)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from distdrq.agent import (
    DrQAgent,
    Encoder,
    NanoEncoder,
    Policy,
    batch_to_tensors,
    make_agent,
    make_encoder,
    squashed_normal_sample,
)
from distdrq.config import AgentConfig
from distdrq.types import Batch

torch.set_num_threads(min(2, torch.get_num_threads()))

OBS_SHAPE = (9, 32, 32)
ACTION_DIM = 3


def tiny_cfg(**overrides) -> AgentConfig:
    cfg = AgentConfig(
        algo="drq", encoder="nano", hidden_dim=32, feature_dim=16, num_expl_steps=5, device="cpu"
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_agent(seed: int = 0, **overrides) -> DrQAgent:
    torch.manual_seed(seed)
    agent = make_agent(OBS_SHAPE, ACTION_DIM, tiny_cfg(**overrides))
    assert isinstance(agent, DrQAgent)
    return agent


def random_batch(batch_size: int = 8, seed: int = 0) -> Batch:
    return Batch.random(OBS_SHAPE, ACTION_DIM, batch_size, seed)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def perturb(module: nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def normal_log_prob(x: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -((x - mu) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)


# ---- encoder and checkpointing


@pytest.mark.parametrize(("size", "conv_dim"), [(64, 64 * 7 * 7), (84, 64 * 9 * 9)])
def test_nano_encoder_infers_its_conv_output_size(size: int, conv_dim: int) -> None:
    encoder = NanoEncoder((9, size, size))
    assert encoder.conv_dim == conv_dim
    assert encoder.head[0].in_features == conv_dim
    assert encoder.repr_dim == 256
    out = encoder(torch.randint(0, 256, (2, 9, size, size), dtype=torch.uint8))
    assert out.shape == (2, 256) and out.dtype == torch.float32
    assert sum(isinstance(m, nn.Conv2d) for m in encoder.convnet) == 3
    assert all(m.stride == (2, 2) for m in encoder.convnet if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["drqv2", "nano"])
def test_grad_checkpointing_gives_the_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    plain = make_encoder(OBS_SHAPE, name)
    ckpt = make_encoder(OBS_SHAPE, name, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())  # same keys with and without checkpointing
    assert type(ckpt.convnet).__name__ == "CheckpointedSequential"
    obs = torch.randint(0, 256, (4, *OBS_SHAPE), dtype=torch.uint8)
    weights = torch.randn(4, plain.repr_dim)
    for encoder in (plain, ckpt):
        (encoder(obs) * weights).sum().backward()
    for a, b in zip(plain.parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(plain(obs), ckpt(obs))


def test_make_encoder_rejects_unknown_names() -> None:
    assert isinstance(make_encoder(OBS_SHAPE, "drqv2"), Encoder)
    with pytest.raises(ValueError, match="nano"):
        make_encoder(OBS_SHAPE, "resnet")


# ---- SAC pieces


def test_squashed_normal_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu, log_std, noise = torch.randn(5, 3), torch.randn(5, 3).clamp(-2, 1), torch.randn(5, 3)
    action, log_prob = squashed_normal_sample(mu, log_std, noise)
    base = torch.distributions.Normal(mu, log_std.exp())
    dist = torch.distributions.TransformedDistribution(
        base, [torch.distributions.transforms.TanhTransform(cache_size=1)]
    )
    u = mu + log_std.exp() * noise
    torch.testing.assert_close(action, torch.tanh(u))
    expected = (base.log_prob(u) - torch.log1p(-(torch.tanh(u) ** 2))).sum(-1, keepdim=True)
    torch.testing.assert_close(log_prob, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_prob, dist.log_prob(action).sum(-1, keepdim=True), rtol=1e-3,
                               atol=1e-3)  # fmt: skip


def test_actor_log_std_is_bounded() -> None:
    agent = tiny_agent(log_std_min=-5.0, log_std_max=1.0)
    with torch.no_grad():
        agent.actor.policy[-1].weight.mul_(1e4)  # saturate the tanh
        h = agent.encoder(torch.as_tensor(random_batch().obs))
        _, log_std = agent.actor(h)
    assert log_std.min() >= -5.0 and log_std.max() <= 1.0
    assert log_std.min() < -4.9 and log_std.max() > 0.9


def test_critic_target_has_the_entropy_term() -> None:
    agent = tiny_agent(init_temperature=0.3)
    perturb(agent.critic_target)
    perturb(agent.encoder_target)
    obs, action, reward, discount, next_obs = batch_to_tensors(random_batch(5), agent.device)
    noise = torch.randn(5, ACTION_DIM)
    with torch.no_grad():
        next_h, next_h_target = agent.encoder(next_obs), agent.encoder_target(next_obs)
        mu, log_std = agent.actor(next_h)
        u = mu + log_std.exp() * noise
        a = torch.tanh(u)
        log_pi = (normal_log_prob(u, mu, log_std.exp()) - torch.log(1 - a**2)).sum(1, keepdim=True)
        q1, q2 = agent.critic_target(next_h_target, a)  # the target encoder's features
        expected = reward + discount * (torch.min(q1, q2) - 0.3 * log_pi)
    target = agent.target_q(reward, discount, next_h, next_h_target, noise)
    assert target.shape == (5, 1)
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)


def test_update_critic_loss_against_the_target() -> None:
    agent = tiny_agent()
    agent.aug = lambda x: x
    perturb(agent.critic_target)
    batch = random_batch(6)
    obs, action, reward, discount, next_obs = batch_to_tensors(batch, agent.device)
    with torch.no_grad():
        h, next_h = agent.encoder(obs), agent.encoder(next_obs)
        next_h_target = agent.encoder_target(next_obs)
        q1, q2 = agent.critic(h, action)
    torch.manual_seed(7)
    noise = torch.randn(6, ACTION_DIM)  # the draw update_critic makes after the same seed
    target = agent.target_q(reward, discount, next_h, next_h_target, noise)
    loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
    torch.manual_seed(7)
    metrics = agent.update(batch, step=0)
    assert metrics["critic_target_q"] == pytest.approx(target.mean().item(), rel=1e-5)
    assert metrics["critic_loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_actor_loss_is_alpha_logpi_minus_min_q() -> None:
    agent = tiny_agent(init_temperature=0.5)
    h = agent.encoder(torch.as_tensor(random_batch().obs)).detach()
    noise = torch.randn(h.shape[0], ACTION_DIM)
    with torch.no_grad():
        mu, log_std = agent.actor(h)
        a, log_pi = squashed_normal_sample(mu, log_std, noise)
        q1, q2 = agent.critic(h, a)
        expected = (0.5 * log_pi - torch.min(q1, q2)).mean()
    critic, encoder, actor = params(agent.critic), params(agent.encoder), params(agent.actor)
    metrics = agent.update_actor(h, noise)
    assert metrics["actor_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["actor_logprob"].item() == pytest.approx(log_pi.mean().item(), rel=1e-5)
    for before, module in ((critic, agent.critic), (encoder, agent.encoder)):
        assert all(torch.equal(a, b) for a, b in zip(before, params(module), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actor, params(agent.actor), strict=True))


def test_temperature_loss_and_step_direction() -> None:
    agent = tiny_agent(init_temperature=0.1)
    assert agent.target_entropy == -ACTION_DIM
    log_pi = torch.tensor(5.0)  # entropy -5 < target -3: alpha must grow
    metrics = agent.update_alpha(log_pi)
    assert metrics["alpha_loss"].item() == pytest.approx(-0.1 * (5.0 - ACTION_DIM), rel=1e-5)
    assert metrics["alpha"].item() == pytest.approx(0.1, rel=1e-6)
    assert agent.alpha.item() > 0.1
    grown = agent.alpha.item()
    agent.update_alpha(torch.tensor(-10.0))  # entropy 10 > target: alpha shrinks
    assert agent.alpha.item() < grown


def test_actor_and_target_update_every_two_critic_updates() -> None:
    agent = tiny_agent(critic_tau=0.25, encoder_tau=0.5)
    for step in range(4):
        actor, alpha = params(agent.actor), agent.alpha.item()
        target, enc_target = params(agent.critic_target), params(agent.encoder_target)
        agent.update(random_batch(seed=step), step)
        due = step % 2 == 0
        assert (not all(map(torch.equal, actor, params(agent.actor)))) == due
        assert (agent.alpha.item() != alpha) == due
        assert (not all(map(torch.equal, target, params(agent.critic_target)))) == due
        if due:
            for old, online, new in zip(
                target, agent.critic.parameters(), agent.critic_target.parameters(), strict=True
            ):
                torch.testing.assert_close(new, 0.75 * old + 0.25 * online.detach())
            for old, online, new in zip(
                enc_target, agent.encoder.parameters(), agent.encoder_target.parameters(),
                strict=True,
            ):  # fmt: skip
                torch.testing.assert_close(new, 0.5 * old + 0.5 * online.detach())
        else:
            assert all(map(torch.equal, enc_target, params(agent.encoder_target)))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_update_runs_in_every_precision_on_cpu(precision: str) -> None:
    agent = tiny_agent(precision=precision, grad_checkpointing=True)
    assert agent.amp_dtype == (None if precision == "fp32" else torch.bfloat16)
    encoder, critic = params(agent.encoder), params(agent.critic)
    for step in range(3):
        metrics = agent.update(random_batch(seed=step), step)
    assert set(metrics) == {
        "batch_reward", "critic_loss", "critic_target_q", "critic_q1", "critic_q2",
        "actor_loss", "actor_logprob", "actor_ent", "alpha_loss", "alpha",
    }  # fmt: skip
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert all(not torch.equal(a, b) for a, b in zip(encoder, params(agent.encoder), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(critic, params(agent.critic), strict=True))


def test_invalid_cadence_is_rejected() -> None:
    with pytest.raises(ValueError, match="actor_update_every"):
        tiny_agent(actor_update_every=0)


# ---- acting, checkpoints, Policy


def test_act_eval_is_tanh_mu_and_exploration_is_uniform() -> None:
    agent = tiny_agent(num_expl_steps=100)
    obs = random_batch().obs[0]
    a1 = agent.act(obs, 200, True)
    assert a1.dtype == np.float32 and a1.shape == (ACTION_DIM,)
    with torch.no_grad():
        mu, _ = agent.actor(agent.encoder(torch.as_tensor(obs).unsqueeze(0)))
    np.testing.assert_allclose(a1, torch.tanh(mu)[0].numpy(), rtol=1e-6)
    explore = np.stack([agent.act(obs, 10, False) for _ in range(200)])
    assert explore.min() >= -1 and explore.max() <= 1
    assert explore.min() < -0.8 and explore.max() > 0.8 and abs(explore.mean()) < 0.15
    sampled = np.stack([agent.act(obs, 200, False) for _ in range(20)])
    assert np.all(np.abs(sampled) < 1) and not np.allclose(sampled, a1)


def test_state_dict_round_trip_with_weights_only_load() -> None:
    agent = tiny_agent(seed=0)
    for step in range(4):
        agent.update(random_batch(seed=step), step)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {"encoder_target", "temperature", "alpha_opt"} <= set(state)
    restored = tiny_agent(seed=5)
    restored.load_state_dict(state)
    assert restored.num_updates == 4
    assert restored.alpha.item() == agent.alpha.item()
    for name, module in agent._named_modules():
        other = dict(restored._named_modules())[name]
        assert all(map(torch.equal, params(module), params(other))), name
    batch = random_batch(seed=9)
    torch.manual_seed(1)
    m1 = agent.update(batch, 4)  # an actor update: all metrics fresh
    torch.manual_seed(1)
    m2 = restored.update(batch, 4)
    assert m1 == pytest.approx(m2, rel=1e-6)


def test_policy_for_drq_acts_as_the_agent() -> None:
    agent = tiny_agent(seed=0, num_expl_steps=100)
    agent.update(random_batch(), step=0)
    state = agent.policy_state_dict()
    assert all(k.split(".")[0] in ("encoder", "actor") for k in state)
    policy = Policy(OBS_SHAPE, ACTION_DIM, agent.cfg)
    policy.load_policy_state_dict(state, version=4)
    assert policy.version == 4
    for seed in range(3):
        obs = random_batch(seed=seed).obs[0]
        np.testing.assert_allclose(policy.act(obs, 1000, True), agent.act(obs, 1000, True),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        sample = policy.act(obs, 1000, False)
        assert sample.dtype == np.float32 and sample.shape == (ACTION_DIM,)
    uniform = np.stack([policy.act(obs, 10, False) for _ in range(100)])
    assert uniform.min() < -0.7 and uniform.max() > 0.7


def test_drqv2_policy_and_agent_accept_the_nano_encoder() -> None:
    cfg = tiny_cfg(algo="drqv2", grad_checkpointing=True)
    torch.manual_seed(0)
    agent = make_agent(OBS_SHAPE, ACTION_DIM, cfg)
    assert isinstance(agent.encoder, NanoEncoder)
    agent.update(random_batch(), step=0)
    policy = Policy(OBS_SHAPE, ACTION_DIM, cfg)
    policy.load_policy_state_dict(agent.policy_state_dict(), version=1)
    obs = random_batch().obs[0]
    np.testing.assert_allclose(policy.act(obs, 1000, True), agent.act(obs, 1000, True), rtol=1e-5)
