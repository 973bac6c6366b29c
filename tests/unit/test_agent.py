"""DrQ-v2 agent: networks, augmentation, critic target, updates, checkpoints (tiny nets, CPU)."""

from __future__ import annotations

import copy
import io
import logging

import numpy as np
import pytest
import torch
from torch import nn

from distdrq.agent import (
    ALGORITHMS,
    Agent,
    AgentBase,
    DrQAgent,
    DrQV2Agent,
    Encoder,
    Policy,
    RandomShiftsAug,
    SDPGAgent,
    TruncatedNormal,
    TwinQ,
    batch_to_tensors,
    make_agent,
    random_shifts,
    register,
    shift_crop,
    shift_grid_sample,
)
from distdrq.config import AgentConfig, ConfigError, LinearSchedule, load_config
from distdrq.types import Batch

torch.set_num_threads(min(2, torch.get_num_threads()))

OBS_SHAPE = (9, 32, 32)
ACTION_DIM = 3


def tiny_cfg(**overrides) -> AgentConfig:
    cfg = AgentConfig(hidden_dim=32, feature_dim=16, num_expl_steps=5, device="cpu")
    cfg.stddev_schedule = LinearSchedule(1.0, 0.1, 100)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_agent(seed: int = 0, **overrides) -> DrQV2Agent:
    torch.manual_seed(seed)
    return make_agent(OBS_SHAPE, ACTION_DIM, tiny_cfg(**overrides))


def random_batch(batch_size: int = 8, seed: int = 0) -> Batch:
    return Batch.random(OBS_SHAPE, ACTION_DIM, batch_size, seed, discount=0.99**3)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ---- encoder


@pytest.mark.parametrize(
    ("size", "expected"), [(84, 32 * 35 * 35), (64, 32 * 25 * 25), (32, 32 * 9 * 9)]
)
def test_encoder_output_size_is_inferred(size: int, expected: int) -> None:
    encoder = Encoder((9, size, size))
    assert encoder.repr_dim == expected
    out = encoder(torch.randint(0, 256, (2, 9, size, size), dtype=torch.uint8))
    assert out.shape == (2, expected)


def test_weight_init_is_orthogonal_with_zero_bias() -> None:
    encoder = Encoder(OBS_SHAPE)
    conv = encoder.convnet[2]
    w = conv.weight.detach().flatten(1)  # [32, 288]: orthogonal rows scaled by the ReLU gain
    gain = nn.init.calculate_gain("relu")
    assert torch.allclose(w @ w.T, gain**2 * torch.eye(32), atol=1e-4)
    assert torch.count_nonzero(conv.bias) == 0


# ---- augmentation


def test_shift_crop_is_an_integer_shift_of_the_padded_input() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8, generator=gen)
    out = RandomShiftsAug(pad=4)(x, generator=gen)
    padded = nn.functional.pad(x.float(), (4, 4, 4, 4), mode="replicate")
    found = []
    for i in range(x.shape[0]):
        matches = [
            (dx, dy)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i].float(), padded[i, :, dy : dy + 20, dx : dx + 20])
        ]
        assert matches, f"sample {i} is not a shift of the padded input"
        found.append(matches[0])
    assert out.dtype == torch.uint8
    assert len(set(found)) > 1  # per-sample shifts


@pytest.mark.parametrize("channels_last", [False, True])
def test_shift_crop_equals_grid_sample_reference(channels_last: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (32, 9, 24, 24), dtype=torch.uint8, generator=gen)
    shifts = random_shifts(32, 4, "cpu", gen)
    fast = shift_crop(x, shifts, pad=4, channels_last=channels_last)
    assert fast.is_contiguous(memory_format=torch.channels_last) == channels_last
    reference64 = shift_grid_sample(x.double(), shifts, pad=4)
    torch.testing.assert_close(fast.double(), reference64, atol=1e-5, rtol=0)
    # drqv2 runs grid_sample in fp32: sampling points are off-centre by float rounding only
    reference32 = shift_grid_sample(x.float(), shifts, pad=4)
    torch.testing.assert_close(fast.float() / 255, reference32 / 255, atol=1e-4, rtol=0)


# ---- distributions and schedules


def test_std_schedule_values() -> None:
    schedule = LinearSchedule(initial=1.0, final=0.1, duration=100)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(0.55)
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(10_000) == pytest.approx(0.1)


def test_truncated_normal_clips_noise_and_clamps() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.linspace(-0.6, 0.6, 13).repeat(1000, 1)  # |mu| + clip < 1: no clamp engages
    sample = TruncatedNormal(mu, 100.0).sample(clip=0.3, generator=gen)
    assert (sample - mu).abs().max() <= 0.3 + 1e-6
    assert (sample - mu).abs().max() >= 0.3 - 1e-6  # the clip was hit
    unclipped = TruncatedNormal(mu, 100.0).sample(generator=gen)
    assert unclipped.abs().max() <= 1 - 1e-6 + 1e-7
    # straight-through clamp: d sample / d mu is 1 even where clamped
    mu_grad = mu.clone().requires_grad_(True)
    TruncatedNormal(mu_grad, 100.0).sample(generator=gen).sum().backward()
    assert torch.equal(mu_grad.grad, torch.ones_like(mu))


def test_truncated_normal_log_prob_and_entropy_are_normal() -> None:
    mu, std = torch.randn(5, 3), 0.7
    dist = TruncatedNormal(mu, std)
    ref = torch.distributions.Normal(mu, torch.full_like(mu, std))
    x = torch.rand(5, 3) * 2 - 1
    torch.testing.assert_close(dist.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(dist.entropy(), ref.entropy())


# ---- critic


def test_fused_twin_q_equals_two_separate_mlps() -> None:
    torch.manual_seed(0)
    in_dim, hidden = 19, 32
    twin = TwinQ(in_dim, hidden)
    with torch.no_grad():  # non-zero biases, so they are checked too
        for b in (twin.b1, twin.b2, twin.b3):
            b.normal_()
    heads = []
    for k in range(2):
        head = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        with torch.no_grad():
            for layer, w, b in zip(
                (head[0], head[2], head[4]),
                (twin.w1, twin.w2, twin.w3),
                (twin.b1, twin.b2, twin.b3),
                strict=True,
            ):
                layer.weight.copy_(w[k])
                layer.bias.copy_(b[k])
        heads.append(head)
    x = torch.randn(64, in_dim)
    q = twin(x)
    assert q.shape == (2, 64, 1)
    torch.testing.assert_close(q[0], heads[0](x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q[1], heads[1](x), atol=1e-5, rtol=1e-5)
    # and the gradients w.r.t. the input agree
    xg = x.clone().requires_grad_(True)
    twin(xg).sum().backward()
    xr = x.clone().requires_grad_(True)
    (heads[0](xr) + heads[1](xr)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_critic_target_is_reward_plus_discount_min_target_q() -> None:
    # std 0: the next action is the clamped actor mean; identity augmentation
    agent = tiny_agent(stddev_schedule=LinearSchedule(0.0, 0.0, 1))
    agent.aug = lambda x: x
    with torch.no_grad():  # make the target differ from the online critic
        for p in agent.critic_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = random_batch(batch_size=5)
    obs, action, reward, discount, next_obs = batch_to_tensors(batch, agent.device)
    with torch.no_grad():
        next_h = agent.encoder(next_obs)
        next_action = agent.actor(next_h).clamp(-1 + 1e-6, 1 - 1e-6)
        tq1, tq2 = agent.critic_target(next_h, next_action)
        target = reward + discount * torch.min(tq1, tq2)
        q1, q2 = agent.critic(agent.encoder(obs), action)
        loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
    assert target.shape == (5, 1)
    metrics = agent.update(batch, step=0)
    assert metrics["critic_target_q"] == pytest.approx(target.mean().item(), rel=1e-5)
    assert metrics["critic_loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert metrics["batch_reward"] == pytest.approx(float(batch.reward.mean()), rel=1e-6)


def test_soft_update_of_critic_target() -> None:
    agent = tiny_agent(critic_tau=0.25)
    old_target = params(agent.critic_target)
    agent.update(random_batch(), step=10)
    for old, online, new in zip(
        old_target, agent.critic.parameters(), agent.critic_target.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online.detach())


# ---- updates


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_update_changes_parameters_and_returns_finite_metrics(precision: str) -> None:
    agent = tiny_agent(precision=precision)
    assert agent.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
    before = {
        name: params(m) for name, m in (("encoder", agent.encoder), ("actor", agent.actor),
                                        ("critic", agent.critic))
    }  # fmt: skip
    for step in range(3):
        metrics = agent.update(random_batch(seed=step), step=step)
    expected = {
        "batch_reward", "critic_loss", "critic_target_q", "critic_q1", "critic_q2",
        "actor_loss", "actor_logprob", "actor_ent",
    }  # fmt: skip
    assert set(metrics) == expected
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    for name, module in (
        ("encoder", agent.encoder),
        ("actor", agent.actor),
        ("critic", agent.critic),
    ):
        changed = [not torch.equal(a, b) for a, b in zip(before[name], params(module), strict=True)]
        assert all(changed), f"{name}: some parameters did not change"


def test_actor_update_leaves_encoder_and_critic_untouched() -> None:
    agent = tiny_agent()
    h = agent.encoder(torch.randint(0, 256, (4, *OBS_SHAPE), dtype=torch.uint8)).detach()
    critic, encoder, actor = params(agent.critic), params(agent.encoder), params(agent.actor)
    agent.update_actor(h, step=10)
    assert all(torch.equal(a, b) for a, b in zip(critic, params(agent.critic), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(encoder, params(agent.encoder), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actor, params(agent.actor), strict=True))
    assert all(p.grad is None for p in agent.critic.parameters())


def test_fp16_on_cpu_falls_back_to_bf16(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        agent = tiny_agent(precision="fp16")
    assert agent.amp_dtype == torch.bfloat16
    assert not agent.critic_scaler.is_enabled()
    assert "fp16" in caplog.text


def test_batch_to_tensors_accepts_numpy_and_tensors() -> None:
    batch = random_batch(batch_size=4)
    batch.obs.setflags(write=False)  # e.g. zero-copy from an object store
    from_numpy = batch_to_tensors(batch, torch.device("cpu"))
    tensors = Batch(
        *(torch.as_tensor(np.array(getattr(batch, f))) for f in batch.__dataclass_fields__)
    )
    from_tensors = batch_to_tensors(tensors, torch.device("cpu"))
    shapes = [(4, *OBS_SHAPE), (4, ACTION_DIM), (4, 1), (4, 1), (4, *OBS_SHAPE)]
    for a, b, shape in zip(from_numpy, from_tensors, shapes, strict=True):
        assert a.shape == shape
        assert torch.equal(a, b)
    assert from_numpy[0].dtype == torch.uint8 and from_numpy[1].dtype == torch.float32


# ---- checkpoints and weight broadcast


def test_state_dict_round_trip_restores_outputs_and_optimizer_state() -> None:
    agent = tiny_agent(seed=0)
    for step in range(2):
        agent.update(random_batch(seed=step), step=step)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    restored = tiny_agent(seed=1)
    restored.load_state_dict(state)
    obs = random_batch(seed=9).obs[0]
    np.testing.assert_array_equal(agent.act(obs, 50, True), restored.act(obs, 50, True))
    assert restored.num_updates == 2
    for name in ("encoder_opt", "actor_opt", "critic_opt"):
        a, b = getattr(agent, name).state_dict(), getattr(restored, name).state_dict()
        for pid, st in a["state"].items():
            for key, value in st.items():
                assert torch.equal(value, b["state"][pid][key]), (name, pid, key)
    # the next update is then identical too (Adam moments and step counts restored)
    batch = random_batch(seed=5)
    torch.manual_seed(7)
    m1 = agent.update(batch, step=3)
    torch.manual_seed(7)
    m2 = restored.update(batch, step=3)
    assert m1 == m2
    for a, b in zip(
        agent.critic_target.parameters(), restored.critic_target.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def test_policy_state_dict_loads_into_a_fresh_agent() -> None:
    agent = tiny_agent(seed=0)
    agent.update(random_batch(), step=0)
    policy = agent.policy_state_dict()
    assert all(k.split(".")[0] in ("encoder", "actor") for k in policy)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in policy.values())
    fresh = tiny_agent(seed=3)
    fresh.load_policy_state_dict(copy.deepcopy(policy))
    for seed in range(3):
        obs = random_batch(seed=seed).obs[0]
        np.testing.assert_array_equal(agent.act(obs, 1000, True), fresh.act(obs, 1000, True))


# ---- acting


def test_act_eval_is_deterministic_and_exploration_is_uniform() -> None:
    agent = tiny_agent(stddev_schedule=LinearSchedule(1e-3, 1e-3, 1), num_expl_steps=100)
    obs = random_batch().obs[0]
    a1, a2 = agent.act(obs, 200, True), agent.act(obs, 200, True)
    assert a1.dtype == np.float32 and a1.shape == (ACTION_DIM,)
    np.testing.assert_array_equal(a1, a2)
    explore = np.stack([agent.act(obs, 10, False) for _ in range(200)])
    assert explore.min() >= -1 and explore.max() <= 1
    assert explore.min() < -0.8 and explore.max() > 0.8  # not the policy's (tiny std) samples
    assert abs(explore.mean()) < 0.15
    after = np.stack([agent.act(obs, 200, False) for _ in range(20)])
    np.testing.assert_allclose(after, np.broadcast_to(a1, after.shape), atol=0.01)


# ---- compile


@pytest.mark.slow
def test_compiled_agent_matches_eager() -> None:
    eager = tiny_agent(seed=0)
    compiled = tiny_agent(seed=0, compile=True)
    batch = random_batch()
    torch.manual_seed(3)
    m1 = eager.update(batch, step=10)
    torch.manual_seed(3)
    m2 = compiled.update(batch, step=10)
    assert m1.keys() == m2.keys()
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-5), key
    assert "_orig_mod" not in "".join(compiled.state_dict()["critic"])


# ---- the algorithm registry


class _ToyAgent(DrQV2Agent):
    """An algorithm registered by a test: DrQ-v2's update on pixels in [0, 1]."""

    pixel_offset = 0.0


@pytest.fixture
def toy_algorithm():
    register("toy", _ToyAgent)
    yield "toy"
    del ALGORITHMS["toy"]


def test_the_agents_are_siblings_on_one_base() -> None:
    assert dict(ALGORITHMS) == {"drqv2": DrQV2Agent, "drq": DrQAgent, "sdpg": SDPGAgent}
    for cls in (DrQV2Agent, DrQAgent):  # the replay actor-critics
        assert cls.__bases__ == (Agent,)
        assert "__init__" not in vars(cls)  # the base builds; the algorithm adds (build_extra)
    assert SDPGAgent.__bases__ == (AgentBase,) and Agent.__bases__ == (AgentBase,)


def test_a_registered_algorithm_is_selectable_by_name(toy_algorithm: str) -> None:
    cfg = load_config("cheetah_run", overrides=[f"agent.algo={toy_algorithm}"])
    assert cfg.agent.algo == "toy" and cfg.agent.lr == 1e-4  # no algorithm preset: defaults
    small = tiny_cfg(algo=toy_algorithm)
    agent = make_agent(OBS_SHAPE, ACTION_DIM, small)
    assert type(agent) is _ToyAgent and agent.encoder.pixel_offset == 0.0
    agent.update(random_batch(), step=0)
    policy = Policy(OBS_SHAPE, ACTION_DIM, small)  # the env actors' copy follows the registry
    assert policy.encoder.pixel_offset == 0.0
    policy.load_policy_state_dict(agent.policy_state_dict(), version=1)
    obs = random_batch(seed=2).obs[0]
    np.testing.assert_allclose(policy.act(obs, 1000, True), agent.act(obs, 1000, True), rtol=1e-5)
    with pytest.raises(ConfigError) as info:
        load_config("cheetah_run", overrides=["agent.algo=tyo"])
    assert (
        str(info.value) == "agent.algo='tyo' is not allowed; choose one of: drqv2, drq, sdpg, toy"
    )


def test_an_unknown_algorithm_is_the_same_one_line_error_everywhere() -> None:
    cfg = tiny_cfg(algo="ppo")
    for build in (
        lambda: load_config("cheetah_run", overrides=["agent.algo=ppo"]),
        lambda: make_agent(OBS_SHAPE, ACTION_DIM, cfg),
        lambda: Policy(OBS_SHAPE, ACTION_DIM, cfg),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        assert str(info.value) == "agent.algo='ppo' is not allowed; choose one of: drqv2, drq, sdpg"


def test_register_takes_agent_classes_only() -> None:
    with pytest.raises(TypeError, match="not an AgentBase subclass"):
        register("toy", object)  # type: ignore[arg-type]
    assert "toy" not in ALGORITHMS
