"""DrQ (SAC) agent, nano encoder, gradient checkpointing, drq Policy (tiny nets, CPU)."""

from __future__ import annotations

import copy
import dataclasses
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
from distdrq.agent import drq as drq_module
from distdrq.agent.augment import shift_crop
from distdrq.config import AgentConfig, ConfigError, DrQConfig, load_config
from distdrq.types import Batch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and never stalls on a busy machine (two
    threads made each update ~100x slower while other processes held the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


OBS_SHAPE = (9, 32, 32)
ACTION_DIM = 3


def tiny_cfg(**overrides) -> AgentConfig:
    """A tiny drq agent config; keys of ``agent.drq`` (e.g. ``init_temperature``) go there."""
    cfg = AgentConfig(
        algo="drq", encoder="nano", hidden_dim=32, feature_dim=16, num_expl_steps=5, device="cpu"
    )
    drq_keys = {f.name for f in dataclasses.fields(DrQConfig)}
    for key, value in overrides.items():
        setattr(cfg.drq if key in drq_keys else cfg, key, value)
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


class _StubActor(nn.Module):
    """mu = h[:, :1], log_std = h[:, 1:2]: a policy whose outputs are read off its input."""

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h[:, :1], h[:, 1:2]


class _StubCritic(nn.Module):
    """Q1 = h[:, 0] + a, Q2 = h[:, 1] - a (one action dimension)."""

    def forward(self, h: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h[:, :1] + a, h[:, 1:2] - a


def _squashed_log_prob(u: float, mu: float, log_std: float) -> float:
    """log pi(tanh u) of a 1-d tanh-squashed Normal(mu, exp(log_std)), by hand."""
    std = math.exp(log_std)
    normal = -((u - mu) ** 2) / (2 * std**2) - log_std - 0.5 * math.log(2 * math.pi)
    return normal - math.log(1 - math.tanh(u) ** 2)


def test_target_averages_k_entropy_regularised_targets_by_hand() -> None:
    """K = 2 copies of B = 2 next observations: target = mean_k [r + d (min(Q1', Q2') - alpha
    log pi)], with a' = tanh(mu + std * noise) per copy (published ``target_Q`` and
    ``target_Q_aug``, averaged)."""
    agent = tiny_agent(init_temperature=0.2)
    agent.actor, agent.critic_target = _StubActor(), _StubCritic()
    reward, discount = torch.tensor([[1.0], [0.5]]), torch.tensor([[0.99], [0.9]])
    # rows: copy 0 of samples 0, 1, then copy 1 of samples 0, 1; columns: mu, log_std
    next_h = torch.tensor([[0.1, -1.0], [0.3, 0.2], [-0.2, -0.5], [0.0, 0.1]])
    next_h_target = torch.tensor([[2.0, 1.5], [-1.0, 0.5], [0.3, 0.4], [1.0, 1.2]])
    noise = torch.tensor([[0.5], [-1.0], [1.5], [0.2]])
    expected = []
    for b in range(2):
        per_copy = []
        for k in range(2):
            row = 2 * k + b
            mu, log_std = next_h[row].tolist()
            u = mu + math.exp(log_std) * noise[row].item()
            a = math.tanh(u)
            q1, q2 = next_h_target[row, 0].item() + a, next_h_target[row, 1].item() - a
            entropy_term = -0.2 * _squashed_log_prob(u, mu, log_std)
            per_copy.append(reward[b].item() + discount[b].item() * (min(q1, q2) + entropy_term))
        expected.append(sum(per_copy) / 2)
    target = agent.target_q(reward, discount, next_h, next_h_target, noise)
    assert target.shape == (2, 1)
    np.testing.assert_allclose(target[:, 0].numpy(), expected, rtol=1e-5)
    # the entropy term is there: with alpha -> 0 the target is the plain min-Q target
    with torch.no_grad():
        agent.temperature.log_alpha.fill_(-30.0)
    plain = agent.target_q(reward, discount, next_h, next_h_target, noise)
    assert not torch.allclose(plain, target, rtol=1e-3)


def test_critic_loss_sums_the_m_augmented_copies_by_hand() -> None:
    """M = 2: loss = mse(Q1(obs), t) + mse(Q2(obs), t) + mse(Q1(obs_aug), t) + mse(Q2(obs_aug), t)
    with the stub critic Q1 = h0 + a, Q2 = h1 - a."""
    agent = tiny_agent()
    agent.critic = _StubCritic()
    h = torch.tensor([[1.0, 2.0], [0.0, -1.0], [0.5, 1.5], [3.0, 0.0]], requires_grad=True)
    action = torch.tensor([[0.5], [-0.5]])
    target = torch.tensor([[1.0], [-2.0]])
    loss = 0.0
    for k in range(2):
        for b in range(2):
            h0, h1 = h[2 * k + b].tolist()
            a, t = action[b].item(), target[b].item()
            loss += ((h0 + a - t) ** 2 + (h1 - a - t) ** 2) / 2  # mean over B = 2
    metrics = agent.update_critic(h, action, target)
    assert metrics["critic_loss"].item() == pytest.approx(loss, rel=1e-6)
    assert metrics["critic_target_q"].item() == pytest.approx(-0.5)
    assert h.grad is not None  # the loss reaches the features (the encoder)


def test_actor_loss_is_alpha_logpi_minus_min_q() -> None:
    agent = tiny_agent(init_temperature=0.5)
    h = agent.encoder(torch.as_tensor(random_batch().obs)).detach()
    noise = torch.randn(h.shape[0], ACTION_DIM)
    with torch.no_grad():
        mu, log_std = agent.actor(h)
        u = mu + log_std.exp() * noise
        a = torch.tanh(u)
        log_pi = (normal_log_prob(u, mu, log_std.exp()) - torch.log(1 - a**2)).sum(1, keepdim=True)
        q1, q2 = agent.critic(h, a)
        expected = (0.5 * log_pi - torch.min(q1, q2)).mean()
    critic, encoder, actor = params(agent.critic), params(agent.encoder), params(agent.actor)
    metrics = agent.update_actor(h, noise)
    assert metrics["actor_loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert metrics["actor_logprob"].item() == pytest.approx(log_pi.mean().item(), rel=1e-4)
    assert metrics["actor_ent"].item() == pytest.approx(-log_pi.mean().item(), rel=1e-4)
    for before, module in ((critic, agent.critic), (encoder, agent.encoder)):
        assert all(torch.equal(a, b) for a, b in zip(before, params(module), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actor, params(agent.actor), strict=True))


def test_temperature_loss_and_adam_step_by_hand() -> None:
    """alpha_loss = mean_b alpha * (-log pi_b - target_entropy), gradient alpha * (-mean log pi
    - target_entropy) w.r.t. log alpha; Adam's first step moves log alpha by lr against its sign.
    """
    agent = tiny_agent(init_temperature=0.1)
    assert agent.target_entropy == -ACTION_DIM
    log_pi = torch.tensor([4.0, 6.0])  # mean entropy -5 < target -3: alpha must grow
    expected = sum(0.1 * (-lp + ACTION_DIM) for lp in (4.0, 6.0)) / 2  # = -0.2
    metrics = agent.update_alpha(log_pi.mean())
    assert metrics["alpha_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert metrics["alpha"].item() == pytest.approx(0.1, rel=1e-6)
    lr = agent.cfg.lr
    assert agent.temperature.log_alpha.item() == pytest.approx(math.log(0.1) + lr, rel=1e-5)
    grown = agent.alpha.item()
    agent.update_alpha(torch.tensor(-10.0))  # entropy 10 > target: alpha shrinks
    assert agent.alpha.item() < grown


# ---- the whole update against the published one


class _FixedShifts:
    """Stands in for the agent's augmentation: hands out given shifts in call order."""

    def __init__(self, shifts: list[torch.Tensor]) -> None:
        self.shifts = list(shifts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shifts = self.shifts.pop(0)
        assert shifts.shape[0] == x.shape[0]
        return shift_crop(x, shifts, pad=4)


class _PublishedDrQ:
    """denisyarats/drq ``DRQAgent.update`` written out as published (``obs``/``obs_aug`` and
    ``next_obs``/``next_obs_aug`` as separate copies, one Adam for encoder and critic, the
    actor on obs encoded again after the critic step), on copies of the agent's networks."""

    def __init__(self, agent: DrQAgent, fresh_actor_features: bool = True) -> None:
        self.encoder = copy.deepcopy(agent.encoder)
        self.encoder_target = copy.deepcopy(agent.encoder_target)
        self.actor = copy.deepcopy(agent.actor)
        self.critic = copy.deepcopy(agent.critic)
        self.critic_target = copy.deepcopy(agent.critic_target)
        self.log_alpha = agent.temperature.log_alpha.detach().clone().requires_grad_(True)
        lr = agent.cfg.lr
        params = [*self.encoder.parameters(), *self.critic.parameters()]
        self.critic_optimizer = torch.optim.Adam(params, lr=lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.log_alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.target_entropy = -ACTION_DIM
        self.tau = agent.cfg.critic_tau
        self.fresh = fresh_actor_features

    def sample(self, h: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.actor(h)
        std = log_std.exp()
        x = mu + std * noise  # SquashedNormal.rsample
        log_prob = torch.distributions.Normal(mu, std).log_prob(x)
        log_prob = log_prob - 2.0 * (math.log(2.0) - x - torch.nn.functional.softplus(-2.0 * x))
        return torch.tanh(x), log_prob.sum(-1, keepdim=True)

    def update(self, batch: Batch, shifts: list, noise: list, step: int) -> dict[str, float]:
        obs, action, reward, discount, next_obs = batch_to_tensors(batch, torch.device("cpu"))
        b = obs.shape[0]
        (s_obs, s_next), (n_target, n_actor) = shifts, noise
        obs_1, obs_2 = shift_crop(obs, s_obs[:b]), shift_crop(obs, s_obs[b:])
        next_1, next_2 = shift_crop(next_obs, s_next[:b]), shift_crop(next_obs, s_next[b:])
        alpha = self.log_alpha.exp()
        h_stale = self.encoder(obs_1).detach()

        # update_critic
        with torch.no_grad():
            targets = []
            for next_k, noise_k in ((next_1, n_target[:b]), (next_2, n_target[b:])):
                next_action, log_prob = self.sample(self.encoder(next_k), noise_k)
                q1, q2 = self.critic_target(self.encoder_target(next_k), next_action)
                targets.append(reward + discount * (torch.min(q1, q2) - alpha * log_prob))
            target_q = (targets[0] + targets[1]) / 2
        mse = torch.nn.functional.mse_loss
        q1, q2 = self.critic(self.encoder(obs_1), action)
        critic_loss = mse(q1, target_q) + mse(q2, target_q)
        q1_aug, q2_aug = self.critic(self.encoder(obs_2), action)
        critic_loss = critic_loss + mse(q1_aug, target_q) + mse(q2_aug, target_q)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        metrics = {"critic_loss": critic_loss.item(), "critic_target_q": target_q.mean().item()}

        if step % 2 == 0:  # update_actor_and_alpha(obs)
            h = self.encoder(obs_1).detach() if self.fresh else h_stale
            action_pi, log_prob = self.sample(h, n_actor)
            q1, q2 = self.critic(h, action_pi)
            actor_loss = (alpha.detach() * log_prob - torch.min(q1, q2)).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            self.log_alpha_optimizer.zero_grad()
            alpha_loss = (self.log_alpha.exp() * (-log_prob - self.target_entropy).detach()).mean()
            alpha_loss.backward()
            self.log_alpha_optimizer.step()
            metrics.update(actor_loss=actor_loss.item(), alpha_loss=alpha_loss.item())

        if step % 2 == 0:  # soft_update_params(critic, critic_target, critic_tau)
            with torch.no_grad():
                for net, target in ((self.critic, self.critic_target),
                                    (self.encoder, self.encoder_target)):  # fmt: skip
                    for p, tp in zip(net.parameters(), target.parameters(), strict=True):
                        tp.copy_(self.tau * p + (1 - self.tau) * tp)
        return metrics


def test_update_matches_the_published_drq_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four updates (actor, alpha and targets at 0 and 2) with the same shifts and noise as the
    published update: same losses and the same networks, to float rounding."""
    agent = tiny_agent(seed=3, lr=1e-3, encoder="drqv2")
    reference = _PublishedDrQ(agent)
    stale = _PublishedDrQ(agent, fresh_actor_features=False)
    b = 8
    gen = torch.Generator().manual_seed(0)
    noise_queue: list[torch.Tensor] = []

    def queued_sample(mu, log_std, noise=None):
        return squashed_normal_sample(mu, log_std, noise_queue.pop(0) if noise is None else noise)

    monkeypatch.setattr(drq_module, "squashed_normal_sample", queued_sample)
    for step in range(4):
        batch = random_batch(b, seed=step)
        shifts = [torch.randint(0, 9, (2 * b, 2), generator=gen) for _ in range(2)]
        noise = [torch.randn(2 * b, ACTION_DIM, generator=gen), torch.randn(b, ACTION_DIM,
                                                                            generator=gen)]  # fmt: skip
        agent.aug = _FixedShifts(shifts)
        noise_queue[:] = noise if step % 2 == 0 else noise[:1]
        got = agent.update(batch, step)
        assert not noise_queue and not agent.aug.shifts
        want = reference.update(batch, shifts, noise, step)
        other = stale.update(batch, shifts, noise, step)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
        if step == 2:  # the stale-feature actor (DrQ-v2's order) is measurably different
            assert abs(other["actor_loss"] - want["actor_loss"]) > 1e-3 * abs(want["actor_loss"])
    for name in ("encoder", "encoder_target", "actor", "critic", "critic_target"):
        for got_p, want_p in zip(getattr(agent, name).parameters(),
                                 getattr(reference, name).parameters(), strict=True):  # fmt: skip
            torch.testing.assert_close(got_p, want_p, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(agent.temperature.log_alpha, reference.log_alpha.detach())


def test_drq_encoders_scale_pixels_to_the_unit_range() -> None:
    """DrQ's encoder sees obs / 255 (published), drqv2's obs / 255 - 0.5; so do their Policies."""
    obs = torch.randint(0, 256, (2, *OBS_SHAPE), dtype=torch.uint8)
    for encoder_name in ("drqv2", "nano"):
        for algo, offset in (("drq", 0.0), ("drqv2", 0.5)):
            cfg = tiny_cfg(algo=algo, encoder=encoder_name)
            torch.manual_seed(0)
            agent = make_agent(OBS_SHAPE, ACTION_DIM, cfg)
            conv = next(m for m in agent.encoder.convnet if isinstance(m, nn.Conv2d))
            seen = []
            conv.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0]))
            with torch.no_grad():
                agent.encoder(obs)
            torch.testing.assert_close(seen[0], obs.float() / 255.0 - offset)
            policy = Policy(OBS_SHAPE, ACTION_DIM, cfg)
            policy.load_policy_state_dict(agent.policy_state_dict(), version=0)
            with torch.no_grad():
                torch.testing.assert_close(policy.encoder(obs), agent.encoder(obs))


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


def test_invalid_drq_settings_are_rejected_by_the_agent() -> None:
    """The agent checks its section by the config's rules (validate_agent), with their words."""
    with pytest.raises(ValueError, match="agent.drq.actor_update_every=0 must be > 0"):
        tiny_agent(actor_update_every=0)
    with pytest.raises(ValueError, match="agent.drq.target_augs=0 must be > 0"):
        tiny_agent(target_augs=0)


@pytest.mark.parametrize(("k", "m"), [(1, 1), (1, 3), (3, 2)])
def test_other_k_and_m_run(k: int, m: int) -> None:
    agent = tiny_agent(target_augs=k, critic_augs=m)
    for step in range(2):
        metrics = agent.update(random_batch(seed=step), step)
    assert all(np.isfinite(v) for v in metrics.values())


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


# ---- config: agent.algo=drq means DrQ's published defaults


def test_algo_drq_selects_the_published_defaults() -> None:
    cfg = load_config("cheetah_run", overrides=["agent.algo=drq"])
    agent, replay = cfg.agent, cfg.replay
    assert (agent.lr, agent.batch_size, agent.update_every_steps) == (1e-3, 128, 1)
    assert (agent.num_expl_steps, agent.critic_tau, agent.feature_dim) == (1000, 0.01, 50)
    assert (replay.capacity, replay.nstep, replay.discount) == (100_000, 1, 0.99)
    assert (cfg.env.action_repeat, cfg.train.seed_frames) == (4, 4000)  # 1000 agent steps
    assert cfg.agent.drq == DrQConfig(
        init_temperature=0.1, actor_update_every=2, target_update_every=2, encoder_tau=0.01,
        log_std_min=-10.0, log_std_max=2.0, target_augs=2, critic_augs=2,
    )  # fmt: skip
    assert cfg.train.frames == 3_100_000  # run length stays the task preset's
    # the paper's per-task action repeat, seeding still 1000 agent steps
    for task, repeat in (("cartpole_swingup", 8), ("walker_walk", 2), ("finger_spin", 2),
                         ("reacher_easy", 4), ("cup_catch", 4)):  # fmt: skip
        cfg = load_config(task, overrides=["agent.algo=drq"])
        assert (cfg.env.action_repeat, cfg.train.seed_frames) == (repeat, 1000 * repeat), task


def test_algo_preset_lies_under_task_preset_file_and_overrides(tmp_path) -> None:
    drqv2 = load_config("cheetah_run")  # DrQ-v2 untouched
    assert (drqv2.agent.lr, drqv2.agent.batch_size, drqv2.env.action_repeat) == (1e-4, 256, 2)
    assert (drqv2.replay.capacity, drqv2.replay.nstep) == (1_000_000, 3)
    walker = load_config("walker_walk", overrides=["agent.algo=drq"])
    assert walker.agent.batch_size == 512  # the task preset's (also DrQ's paper batch)
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: cheetah_run\nagent:\n  algo: drq\n  batch_size: 32\n")
    cfg = load_config(config_file=mine, overrides=["agent.lr=3e-4", "env.action_repeat=6"])
    assert (cfg.agent.algo, cfg.agent.batch_size, cfg.agent.lr) == ("drq", 32, 3e-4)
    assert cfg.env.action_repeat == 6 and cfg.replay.capacity == 100_000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["agent.drq.target_augs=0"], "agent.drq.target_augs=0 must be > 0"),
        (["agent.drq.init_temperature=0"], "agent.drq.init_temperature=0.0 must be > 0"),
        (["agent.drq.encoder_tau=1.5"], "agent.drq.encoder_tau=1.5 must be in (0, 1]"),
        (["agent.drq.log_std_min=3"], "agent.drq.log_std_min=3.0 must be < agent.drq.log_std_max"),
        (["agent.drq.init_temprature=1"], "'agent.drq.init_temprature' (did you mean init_temp"),
        (["agent.init_temperature=0.2"], "(moved to agent.drq.init_temperature)"),
        (["agent.drq=3"], "agent.drq must be a mapping of init_temperature"),
        (["agent.drq.critic_augs=two"], "agent.drq.critic_augs='two' is not an integer"),
    ],
)
def test_bad_drq_settings_are_one_line_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("cheetah_run", overrides=["agent.algo=drq", *overrides])
    assert message in str(info.value) and "\n" not in str(info.value)
