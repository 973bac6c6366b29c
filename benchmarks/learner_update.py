"""Learner update throughput: the official DrQ-v2 update vs ours (fp32, mixed precision, compiled).

Measures DrQ-v2 updates per second and peak GPU memory on random uint8 batches generated once
on the device: data loading and host-to-device copies are NOT measured, only the update math.

    python benchmarks/learner_update.py --device auto --batch-sizes 256,512 [--compile]

Configurations:
- baseline: facebookresearch/drqv2's update reimplemented below (grid_sample shift on floats,
  obs and next_obs encoded in separate passes, separate Q1/Q2 Sequentials, fp32, NCHW, one
  ``.item()`` per metric, non-fused Adam);
- ours fp32 / ours mixed: :class:`distdrq.agent.DrQV2Agent` eager, precision fp32 / auto (bf16
  on GPUs that have it; bf16 autocast on CPU);
- ours compiled: ours mixed with ``torch.compile`` (only with ``--compile``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributions as pyd
import torch.nn.functional as F
from torch import nn

from distdrq.agent import make_agent, random_shifts, resolve_device, shift_grid_sample
from distdrq.agent.networks import weight_init
from distdrq.config import AgentConfig

# ---- the official implementation's update, as in facebookresearch/drqv2 (drqv2.py, utils.py)


class _TruncatedNormal(pyd.Normal):
    def __init__(self, loc, scale, low=-1.0, high=1.0, eps=1e-6):
        super().__init__(loc, scale, validate_args=False)
        self.low, self.high, self.eps = low, high, eps

    def _clamp(self, x):
        clamped_x = torch.clamp(x, self.low + self.eps, self.high - self.eps)
        return x - x.detach() + clamped_x.detach()

    def sample(self, clip=None, sample_shape=torch.Size()):  # noqa: B008 (as upstream)
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        eps *= self.scale
        if clip is not None:
            eps = torch.clamp(eps, -clip, clip)
        return self._clamp(self.loc + eps)


class _Encoder(nn.Module):
    def __init__(self, obs_shape):
        super().__init__()
        self.convnet = nn.Sequential(
            nn.Conv2d(obs_shape[0], 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1), nn.ReLU(),
        )  # fmt: skip
        self.repr_dim = self.convnet(torch.zeros(1, *obs_shape)).numel()
        self.apply(weight_init)

    def forward(self, obs):
        obs = obs / 255.0 - 0.5
        h = self.convnet(obs)
        return h.view(h.shape[0], -1)


def _mlp(in_dim, hidden_dim, out_dim):
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )  # fmt: skip


def _trunk(repr_dim, feature_dim):
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


class _Actor(nn.Module):
    def __init__(self, repr_dim, action_dim, feature_dim, hidden_dim):
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.policy = _mlp(feature_dim, hidden_dim, action_dim)
        self.apply(weight_init)

    def forward(self, obs, std):
        mu = torch.tanh(self.policy(self.trunk(obs)))
        return _TruncatedNormal(mu, torch.ones_like(mu) * std)


class _Critic(nn.Module):
    def __init__(self, repr_dim, action_dim, feature_dim, hidden_dim):
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.Q1 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.Q2 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.apply(weight_init)

    def forward(self, obs, action):
        h_action = torch.cat([self.trunk(obs), action], dim=-1)
        return self.Q1(h_action), self.Q2(h_action)


class BaselineDrQV2:
    """drqv2's ``DrQV2Agent.update`` (update_every_steps handled by the caller, as in ours)."""

    def __init__(self, obs_shape, action_dim, cfg: AgentConfig, device: torch.device):
        self.device, self.cfg = device, cfg
        self.encoder = _Encoder(obs_shape).to(device)
        dims = (self.encoder.repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.actor = _Actor(*dims).to(device)
        self.critic = _Critic(*dims).to(device)
        self.critic_target = _Critic(*dims).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), lr=cfg.lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)

    def aug(self, x):
        return shift_grid_sample(x, random_shifts(x.shape[0], 4, x.device), pad=4)

    def update_critic(self, obs, action, reward, discount, next_obs, step):
        metrics = {}
        with torch.no_grad():
            stddev = self.cfg.stddev_schedule(step)
            dist = self.actor(next_obs, stddev)
            next_action = dist.sample(clip=self.cfg.stddev_clip)
            target_q1, target_q2 = self.critic_target(next_obs, next_action)
            target_v = torch.min(target_q1, target_q2)
            target_q = reward + (discount * target_v)
        q1, q2 = self.critic(obs, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        metrics["critic_target_q"] = target_q.mean().item()
        metrics["critic_q1"] = q1.mean().item()
        metrics["critic_q2"] = q2.mean().item()
        metrics["critic_loss"] = critic_loss.item()
        self.encoder_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.encoder_opt.step()
        return metrics

    def update_actor(self, obs, step):
        metrics = {}
        stddev = self.cfg.stddev_schedule(step)
        dist = self.actor(obs, stddev)
        action = dist.sample(clip=self.cfg.stddev_clip)
        log_prob = dist.log_prob(action).sum(-1, keepdim=True)
        q1, q2 = self.critic(obs, action)
        actor_loss = -torch.min(q1, q2).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        metrics["actor_loss"] = actor_loss.item()
        metrics["actor_logprob"] = log_prob.mean().item()
        metrics["actor_ent"] = dist.entropy().sum(dim=-1).mean().item()
        return metrics

    def update(self, batch, step):
        metrics = {}
        obs, action, reward, discount, next_obs = (
            batch.obs, batch.action, batch.reward.view(-1, 1), batch.discount.view(-1, 1),
            batch.next_obs,
        )  # fmt: skip
        # augment
        obs = self.aug(obs.float())
        next_obs = self.aug(next_obs.float())
        # encode
        obs = self.encoder(obs)
        with torch.no_grad():
            next_obs = self.encoder(next_obs)
        metrics["batch_reward"] = reward.mean().item()
        metrics.update(self.update_critic(obs, action, reward, discount, next_obs, step))
        metrics.update(self.update_actor(obs.detach(), step))
        with torch.no_grad():
            for param, target in zip(
                self.critic.parameters(), self.critic_target.parameters(), strict=True
            ):
                target.data.copy_(
                    self.cfg.critic_tau * param.data + (1 - self.cfg.critic_tau) * target.data
                )
        return metrics


# ---- measurement


@dataclass
class TensorBatch:
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor


def random_batch(batch_size: int, image_size: int, action_dim: int, device) -> TensorBatch:
    shape = (batch_size, 9, image_size, image_size)
    return TensorBatch(
        obs=torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
        action=torch.rand(batch_size, action_dim, device=device) * 2 - 1,
        reward=torch.rand(batch_size, device=device),
        discount=torch.full((batch_size,), 0.99**3, device=device),
        next_obs=torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    build: Callable[[], Any], batch: TensorBatch, updates: int, warmup: int, device: torch.device
) -> tuple[float, float | None]:
    """(updates per second, peak GPU MiB or None on CPU) for one agent configuration."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    agent = build()
    step = 100_000
    for _ in range(warmup):
        agent.update(batch, step)
        step += 1
    _sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(batch, step)
        step += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del agent
    return updates / elapsed, peak


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", default="256,512", help="comma-separated batch sizes")
    parser.add_argument("--updates", type=int, default=None, help="timed updates (GPU 50, CPU 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed updates (GPU 10, CPU 1)")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--action-dim", type=int, default=6, help="6 = cheetah_run, walker_*")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    updates = args.updates or (50 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    obs_shape = (9, args.image_size, args.image_size)

    def ours(**overrides: Any) -> Callable[[], Any]:
        return lambda: make_agent(obs_shape, args.action_dim, AgentConfig(**overrides), device)

    mixed = "auto" if cuda else "bf16"
    configs: list[tuple[str, Callable[[], Any]]] = [
        (
            "baseline (drqv2)",
            lambda: BaselineDrQV2(obs_shape, args.action_dim, AgentConfig(), device),
        ),
        ("ours fp32", ours(precision="fp32")),
        (f"ours {mixed}", ours(precision=mixed)),
    ]
    if args.compile:
        configs.append((f"ours {mixed} compiled", ours(precision=mixed, compile=True)))

    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({_cpu_name()})"
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"updates {updates}, warmup {warmup}, image {args.image_size}, actions {args.action_dim}")
    print("random uint8 batches resident on the device: data loading is not measured\n")
    print("| config | batch | updates/s | speedup vs baseline | peak GPU MiB |")
    print("|---|---|---|---|---|")
    results = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        torch.manual_seed(0)
        batch = random_batch(batch_size, args.image_size, args.action_dim, device)
        base_rate = None
        for label, build in configs:
            torch.manual_seed(0)
            rate, peak = measure(build, batch, updates, warmup, device)
            base_rate = base_rate or rate
            peak_text = f"{peak:,.0f}" if peak is not None else "n/a"
            print(
                f"| {label} | {batch_size} | {rate:.2f} | {rate / base_rate:.2f}x | {peak_text} |"
            )
            results.append(
                {
                    "config": label,
                    "batch_size": batch_size,
                    "updates_per_s": rate,
                    "speedup": rate / base_rate,
                    "peak_gpu_mib": peak,
                    "device": name,
                    "updates": updates,
                    "warmup": warmup,
                    "image_size": args.image_size,
                }
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
