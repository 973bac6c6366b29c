"""DrQ-v2 agent (Yarats et al. 2021), as facebookresearch/drqv2's ``drqv2.py``, made fast.

Same algorithm, step for step: random shift of obs and next_obs; next_obs encoded by the online
encoder under no_grad (no target encoder); critic target r + discount * min(Q1', Q2')(next_obs,
a' ~ pi with clipped noise); encoder and critic trained on the critic loss; actor trained on
detached features with -min(Q1, Q2); soft target update of the critic. What is faster:
- the shift is an exact integer crop of the uint8 frames (one gather), not grid_sample on floats;
- the twin Q heads run as one batched matmul per layer (:class:`~distdrq.agent.networks.TwinQ`);
- autocast (bf16, or fp16 with gradient scaling) on GPU, channels_last convolutions, fused Adam,
  optional ``torch.compile``;
- the actor loss back-propagates into the actor's parameters only (drqv2 also fills the critic's
  gradients there and throws them away at the next critic ``zero_grad``);
- metrics are stacked and read back once per update (one device sync instead of eight).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distdrq.agent.augment import RandomShiftsAug
from distdrq.agent.networks import Actor, Critic, TruncatedNormal, make_encoder
from distdrq.agent.policy import policy_action
from distdrq.config import AgentConfig
from distdrq.types import Batch

log = logging.getLogger(__name__)

_NUMPY_TO_TORCH = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.int64): torch.int64,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda if available, else cpu; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype (None = fp32) and whether to scale gradients, for ``precision`` on ``device``.

    auto: bf16 on a CUDA GPU that supports it, else fp16 with gradient scaling; fp32 on CPU.
    fp16 on CPU falls back to bf16 with a warning (CPU autocast has no fp16 gradient scaling).
    """
    cuda = device.type == "cuda"
    if precision == "fp32":
        return None, False
    if precision == "auto":
        if not cuda:
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("agent.precision=bf16: this GPU has no bf16; use fp16 or auto")
        return torch.bfloat16, False
    if precision == "fp16":
        if cuda:
            return torch.float16, True
        log.warning("agent.precision=fp16 is not supported on %s; using bf16 instead", device)
        return torch.bfloat16, False
    raise ValueError(f"agent.precision={precision!r} is not allowed; choose auto, bf16, fp16, fp32")


def _to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    x = np.asarray(x)
    if device.type == "cuda" and x.dtype in _NUMPY_TO_TORCH:
        # copy into pinned host memory (numpy-side, so read-only arrays are fine), then async H2D
        pinned = torch.empty(x.shape, dtype=_NUMPY_TO_TORCH[x.dtype], pin_memory=True)
        pinned.numpy()[...] = x
        return pinned.to(device, non_blocking=True)
    return torch.from_numpy(x if x.flags.writeable else x.copy()).to(device, non_blocking=True)


def batch_to_tensors(
    batch: Batch | Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(obs, action, reward, discount, next_obs) on ``device``.

    ``batch`` has the fields of :class:`~distdrq.types.Batch` as numpy arrays or tensors (on any
    device; tensors already there are not copied). obs and next_obs stay uint8 [B, C, H, W];
    action is float32 [B, A]; reward and discount are float32 [B, 1], as in drqv2.
    """
    obs = _to_device(batch.obs, device)
    action = _to_device(batch.action, device).float()
    reward = _to_device(batch.reward, device).float().view(-1, 1)
    discount = _to_device(batch.discount, device).float().view(-1, 1)
    next_obs = _to_device(batch.next_obs, device)
    return obs, action, reward, discount, next_obs


class DrQV2Agent:
    """DrQ-v2 learner and policy; plain PyTorch (no Ray), used by the trainer and the learner."""

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        action_dim: int,
        cfg: AgentConfig,
        device: str | torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device if device is None else device)
        self.amp_dtype, use_scaler = resolve_precision(cfg.precision, self.device)
        cuda = self.device.type == "cuda"
        self.channels_last = cfg.channels_last and cuda
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed conv shapes: pick the fastest kernels
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format

        self.encoder = make_encoder(obs_shape, cfg.encoder, cfg.grad_checkpointing)
        self.encoder.to(self.device, memory_format=memory_format)
        repr_dim = self.encoder.repr_dim
        dims = (repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.actor = Actor(*dims).to(self.device)
        self.critic = Critic(*dims).to(self.device)
        self.critic_target = Critic(*dims).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)

        # optimizers: one Adam each, as drqv2; fused kernels on GPU (no host sync with a scaler)
        adam = {"lr": cfg.lr, "fused": True} if cuda else {"lr": cfg.lr}
        self.encoder_opt = torch.optim.Adam(self.encoder.parameters(), **adam)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), **adam)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), **adam)
        # fp16 only: one loss scaler per backward pass (critic+encoder, actor), so an overflow
        # in one loss neither skips nor rescales the other's step; disabled scalers are no-ops
        self.critic_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.actor_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self.aug = RandomShiftsAug(pad=4, channels_last=self.channels_last)
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self.num_updates = 0
        if cfg.compile:
            for module in (self.encoder, self.actor, self.critic, self.critic_target):
                module.compile()  # in place: state_dict keys stay unprefixed

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )

    def train(self, training: bool = True) -> None:
        """Set train/eval mode of the networks (they behave the same in both: no dropout/BN)."""
        for module in (self.encoder, self.actor, self.critic, self.critic_target):
            module.train(training)

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] for one uint8 observation [C, H, W].

        eval: the mean action; else a sample (unclipped noise, std from the schedule), replaced by
        uniform noise in [-1, 1] for the first ``num_expl_steps`` agent steps.
        """
        obs_t = _to_device(np.asarray(obs), self.device).unsqueeze(0)
        with self._autocast():
            mu = self.actor(self.encoder(obs_t))
        uniform = step < self.cfg.num_expl_steps
        action = policy_action(mu, self.cfg.stddev_schedule(step), eval_mode, uniform)
        return action.float().cpu().numpy()[0]

    def update_critic(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_obs: torch.Tensor,
        step: int,
    ) -> dict[str, torch.Tensor]:
        """One encoder + critic step on encoded obs (with grad) and next_obs (without)."""
        with torch.no_grad(), self._autocast():
            stddev = self.cfg.stddev_schedule(step)
            dist = TruncatedNormal(self.actor(next_obs), stddev)
            next_action = dist.sample(clip=self.cfg.stddev_clip)
            target_q1, target_q2 = self.critic_target(next_obs, next_action)
            target_v = torch.min(target_q1, target_q2)
            target_q = reward + (discount * target_v)
        return self.critic_step(obs, action, target_q)

    def critic_step(
        self, h: torch.Tensor, action: torch.Tensor, target_q: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Twin-Q regression of the critic (and, through ``h``, the encoder) onto ``target_q``.

        ``h`` may hold M augmented copies of the batch ([M * B, D], DrQ's M): the loss is then
        the sum over copies of each copy's twin-Q loss, as DrQ publishes it (M = 1: DrQ-v2)."""
        m = h.shape[0] // action.shape[0]
        if m > 1:
            action, target_q = action.repeat(m, 1), target_q.repeat(m, 1)
        with self._autocast():
            q1, q2 = self.critic(h, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        if m > 1:  # M times the mean over all M * B rows = the sum of the M copies' means
            critic_loss = m * critic_loss

        # optimize encoder and critic
        self.encoder_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        self.critic_scaler.scale(critic_loss).backward()
        self.critic_scaler.step(self.critic_opt)
        self.critic_scaler.step(self.encoder_opt)
        self.critic_scaler.update()

        return {
            "critic_target_q": target_q[: target_q.shape[0] // m].mean(),
            "critic_q1": q1.detach().mean(),
            "critic_q2": q2.detach().mean(),
            "critic_loss": critic_loss.detach(),
        }

    def update_actor(self, obs: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One actor step on detached features, maximising min(Q1, Q2) of the updated critic."""
        with self._autocast():
            stddev = self.cfg.stddev_schedule(step)
            dist = TruncatedNormal(self.actor(obs), stddev)
            action = dist.sample(clip=self.cfg.stddev_clip)
            log_prob = dist.log_prob(action).sum(-1, keepdim=True)
            q1, q2 = self.critic(obs, action)
            q = torch.min(q1, q2)
        actor_loss = -q.mean()

        # optimize actor; inputs= skips the critic weight gradients drqv2 computes and discards
        self.actor_opt.zero_grad(set_to_none=True)
        self.actor_scaler.scale(actor_loss).backward(inputs=self._actor_params)
        self.actor_scaler.step(self.actor_opt)
        self.actor_scaler.update()

        return {
            "actor_loss": actor_loss.detach(),
            "actor_logprob": log_prob.detach().mean(),
            "actor_ent": dist.entropy().sum(dim=-1).mean(),
        }

    @torch.no_grad()
    def update_critic_target(self) -> None:
        """target <- (1 - tau) * target + tau * online, every parameter."""
        torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.critic_tau)

    def update(self, batch: Batch | Any, step: int) -> dict[str, float]:
        """One learner update on ``batch`` (numpy :class:`Batch` or tensors); metrics as floats."""
        obs, action, reward, discount, next_obs = batch_to_tensors(batch, self.device)

        # augment (uint8 in, uint8 out; independent shifts for obs and next_obs)
        obs = self.aug(obs)
        next_obs = self.aug(next_obs)

        # encode: obs with grad, next_obs in its own no_grad pass. One pass over cat(obs,
        # next_obs) with the next half detached would keep next_obs activations alive and run
        # the conv backward over 2B samples (zero gradient for half of them): slower and larger.
        with self._autocast():
            obs = self.encoder(obs)
            with torch.no_grad():
                next_obs = self.encoder(next_obs)

        metrics = {"batch_reward": reward.mean()}
        metrics.update(self.update_critic(obs, action, reward, discount, next_obs, step))
        metrics.update(self.update_actor(obs.detach(), step))

        # update critic target
        self.update_critic_target()
        self.num_updates += 1

        values = torch.stack([v.float() for v in metrics.values()]).tolist()  # one sync
        return dict(zip(metrics, values, strict=True))

    # ---- checkpoints and weight broadcast

    def _named_modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        yield from (
            ("encoder", self.encoder),
            ("actor", self.actor),
            ("critic", self.critic),
            ("critic_target", self.critic_target),
        )

    def _named_optimizers(self) -> Iterator[tuple[str, torch.optim.Optimizer]]:
        yield from (
            ("encoder_opt", self.encoder_opt),
            ("actor_opt", self.actor_opt),
            ("critic_opt", self.critic_opt),
        )

    def state_dict(self) -> dict:
        """Networks, target, optimizers, loss scalers and the update count.

        Tensors (on the agent's device) and plain Python only: loadable with
        ``torch.load(..., weights_only=True)``.
        """
        state: dict[str, Any] = {name: m.state_dict() for name, m in self._named_modules()}
        state.update({name: opt.state_dict() for name, opt in self._named_optimizers()})
        state["critic_scaler"] = self.critic_scaler.state_dict()
        state["actor_scaler"] = self.actor_scaler.state_dict()
        state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (from any device and precision)."""
        for name, module in self._named_modules():
            module.load_state_dict(state[name])
        for name, opt in self._named_optimizers():
            saved = state[name]
            # keep this optimizer's kernel choice (fused on GPU, not on CPU) over the saved one
            flags = ("fused", "foreach", "capturable")
            groups = [
                {**g, **{k: own[k] for k in flags if k in own}}
                for g, own in zip(saved["param_groups"], opt.param_groups, strict=True)
            ]
            opt.load_state_dict({**saved, "param_groups": groups})
            if not any(g.get("fused") or g.get("capturable") for g in opt.param_groups):
                for st in opt.state.values():  # non-fused Adam keeps its step count on the CPU
                    if isinstance(st.get("step"), torch.Tensor):
                        st["step"] = st["step"].cpu()
        for name, scaler in (
            ("critic_scaler", self.critic_scaler),
            ("actor_scaler", self.actor_scaler),
        ):
            if scaler.is_enabled() and state.get(name):
                scaler.load_state_dict(state[name])
        self.num_updates = int(state.get("num_updates", 0))

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and actor weights as contiguous CPU copies (``encoder.*``, ``actor.*``)."""
        return {
            f"{name}.{key}": t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for name, module in (("encoder", self.encoder), ("actor", self.actor))
            for key, t in module.state_dict().items()
        }

    def load_policy_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights from :meth:`policy_state_dict` (e.g. into an env actor's CPU copy)."""
        for name, module in (("encoder", self.encoder), ("actor", self.actor)):
            prefix = f"{name}."
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )


def make_agent(
    obs_shape: tuple[int, int, int],
    action_dim: int,
    cfg: AgentConfig,
    device: str | torch.device | None = None,
) -> DrQV2Agent:
    """Build the agent named by ``cfg.algo``: :class:`DrQV2Agent` (``drqv2``) or
    :class:`~distdrq.agent.drq.DrQAgent` (``drq``)."""
    if cfg.algo == "drqv2":
        return DrQV2Agent(tuple(obs_shape), action_dim, cfg, device)
    if cfg.algo == "drq":
        from distdrq.agent.drq import DrQAgent  # drq builds on this module

        return DrQAgent(tuple(obs_shape), action_dim, cfg, device)
    raise ValueError(f"agent.algo={cfg.algo!r} is not allowed; choose one of: drqv2, drq")
