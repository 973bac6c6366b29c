"""What every learning agent shares: device and precision, the networks' plumbing, acting,
checkpoints and policy export.

:class:`AgentBase` is what the registry holds and checkpoints need: acting, policy export, and a
state dict over the agent's named modules, optimizers and loss scalers. A replay-based pixel
actor-critic subclasses :class:`Agent` with its pixel scaling, actor, action rule and update
(:mod:`~distdrq.agent.drqv2`, :mod:`~distdrq.agent.drq`); an on-policy algorithm with networks
of its own subclasses :class:`AgentBase` directly (:mod:`~distdrq.agent.sdpg`). Either is
named in :mod:`~distdrq.agent.registry`. The base builds the networks every algorithm here has (encoder,
actor, twin-Q critic and its target; one Adam each; one fp16 loss scaler per scaled backward);
an algorithm adds its own in :meth:`Agent.build_extra`. The config is validated by
:func:`~distdrq.config.validate_agent`, not here.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from distdrq.agent.augment import RandomShiftsAug
from distdrq.agent.networks import Critic, make_encoder
from distdrq.config import AgentConfig, validate_agent
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


def to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; numpy arrays go to a GPU through pinned memory (asynchronously)."""
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
    obs = to_device(batch.obs, device)
    action = to_device(batch.action, device).float()
    reward = to_device(batch.reward, device).float().view(-1, 1)
    discount = to_device(batch.discount, device).float().view(-1, 1)
    next_obs = to_device(batch.next_obs, device)
    return obs, action, reward, discount, next_obs


def read_back(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar metric tensors as floats, read from the device in one transfer."""
    if not metrics:
        return {}
    values = torch.stack([v.float() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))


def policy_weights(encoder: nn.Module, actor: nn.Module) -> dict[str, torch.Tensor]:
    """Encoder and actor weights as contiguous CPU copies (``encoder.*``, ``actor.*``)."""
    return {
        f"{name}.{key}": t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for name, module in (("encoder", encoder), ("actor", actor))
        for key, t in module.state_dict().items()
    }


def load_policy_weights(
    state: dict[str, torch.Tensor], encoder: nn.Module, actor: nn.Module
) -> None:
    """Load what :func:`policy_weights` gave into ``encoder`` and ``actor`` (tensors, or the
    NumPy arrays a launch's learner publishes)."""
    for name, module in (("encoder", encoder), ("actor", actor)):
        prefix = f"{name}."
        module.load_state_dict(
            {k[len(prefix) :]: torch.as_tensor(v) for k, v in state.items() if k.startswith(prefix)}
        )


class UpdateAbandoned(Exception):
    """An update was given up before it changed the agent (:meth:`Agent.abandonable`)."""


class AgentBase(ABC):
    """A learner and policy in plain PyTorch (no Ray): what every algorithm has.

    A subclass sets :attr:`device` and :attr:`num_updates` and names its modules, optimizers
    and (fp16) loss scalers; checkpoints (:meth:`state_dict`) and train/eval mode follow.
    """

    device: torch.device
    num_updates: int
    experience: ClassVar[str] = "replay"
    """how experience reaches the learner (DESIGN.md's two data flows): ``replay`` (actors
    and learner never wait for each other) or ``iterations`` (synchronous on-policy windows);
    the launch picks its roles by it (:mod:`distdrq.distributed.roles`)"""

    @abstractmethod
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] in [-1, 1] for one observation."""

    @abstractmethod
    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The acting half's weights as contiguous CPU copies (for actors and evaluators)."""

    @abstractmethod
    def load_policy_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`policy_state_dict` gave."""

    @abstractmethod
    def _named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """Every module in a checkpoint: the networks and any other learned state."""

    @abstractmethod
    def _named_optimizers(self) -> Iterator[tuple[str, torch.optim.Optimizer]]:
        """Every optimizer in a checkpoint."""

    def _named_scalers(self) -> Iterator[tuple[str, torch.amp.GradScaler]]:
        """Loss scalers in a checkpoint (none by default)."""
        yield from ()

    def train(self, training: bool = True) -> None:
        """Set train/eval mode of the networks (they behave the same in both: no dropout/BN)."""
        for _, module in self._named_modules():
            module.train(training)

    def state_dict(self) -> dict:
        """Modules, optimizers, loss scalers and the update count.

        Tensors (on the agent's device) and plain Python only: loadable with
        ``torch.load(..., weights_only=True)``.
        """
        state: dict[str, Any] = {name: m.state_dict() for name, m in self._named_modules()}
        state.update({name: opt.state_dict() for name, opt in self._named_optimizers()})
        state.update({name: scaler.state_dict() for name, scaler in self._named_scalers()})
        state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (from any device and precision)."""
        for name, module in self._named_modules():
            module.load_state_dict(state[name])
        for name, opt in self._named_optimizers():
            load_optimizer_state(opt, state[name])
        for name, scaler in self._named_scalers():
            if scaler.is_enabled() and state.get(name):
                scaler.load_state_dict(state[name])
        self.num_updates = int(state.get("num_updates", 0))


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Load a saved optimizer state, keeping this optimizer's kernel choice (fused on GPU, not
    on CPU) over the saved one."""
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


class Agent(AgentBase):
    """A replay-based pixel actor-critic (DrQ-v2, DrQ) in plain PyTorch (no Ray), used by the
    trainer and the learner.

    An algorithm defines :attr:`pixel_offset`, :meth:`make_actor`, :meth:`action` and
    :meth:`learn`, and may add networks in :meth:`build_extra`; the first three also build
    and drive the env actors' CPU :class:`~distdrq.agent.policy.Policy`.
    """

    pixel_offset: ClassVar[float] = 0.5
    """what the encoder subtracts from obs / 255 (0.5: pixels in [-0.5, 0.5], as drqv2)"""

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        action_dim: int,
        cfg: AgentConfig,
        device: str | torch.device | None = None,
    ) -> None:
        self.cfg = validate_agent(cfg)
        self.device = resolve_device(cfg.device if device is None else device)
        self.amp_dtype, use_scaler = resolve_precision(cfg.precision, self.device)
        cuda = self.device.type == "cuda"
        self.channels_last = cfg.channels_last and cuda
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed conv shapes: pick the fastest kernels
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format

        self.encoder = self.make_encoder(obs_shape, cfg, cfg.grad_checkpointing)
        self.encoder.to(self.device, memory_format=memory_format)
        repr_dim = self.encoder.repr_dim
        self.actor = self.make_actor(repr_dim, action_dim, cfg).to(self.device)
        dims = (repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic = Critic(*dims).to(self.device)
        self.critic_target = Critic(*dims).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.build_extra(action_dim)

        # optimizers: one Adam each; fused kernels on GPU (no host sync with a scaler)
        self.encoder_opt = self.adam(self.encoder)
        self.actor_opt = self.adam(self.actor)
        self.critic_opt = self.adam(self.critic)
        # fp16 only: one loss scaler per backward pass (critic+encoder, actor), so an overflow
        # in one loss neither skips nor rescales the other's step; disabled scalers are no-ops
        self.critic_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.actor_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self.aug = RandomShiftsAug(pad=4, channels_last=self.channels_last)
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self.num_updates = 0
        self._give_up: Callable[[], bool] | None = None
        self._stepped = False
        if cfg.compile:
            for _, module in self._named_networks():
                module.compile()  # in place: state_dict keys stay unprefixed
        else:  # each network's call is a point where a stopping learner may give up
            for _, module in self._named_networks():
                module.register_forward_pre_hook(self._maybe_give_up)

    # ---- what an algorithm defines

    @classmethod
    def make_encoder(
        cls, obs_shape: tuple[int, int, int], cfg: AgentConfig, grad_checkpointing: bool = False
    ) -> nn.Module:
        """The encoder ``cfg.encoder`` with this algorithm's pixel scaling."""
        return make_encoder(obs_shape, cfg.encoder, grad_checkpointing, cls.pixel_offset)

    @staticmethod
    @abstractmethod
    def make_actor(repr_dim: int, action_dim: int, cfg: AgentConfig) -> nn.Module:
        """The actor network on encoder features [B, repr_dim]."""

    @staticmethod
    @abstractmethod
    def action(actor_out: Any, cfg: AgentConfig, step: int, eval_mode: bool) -> torch.Tensor:
        """The action rule: actions [B, A] from the actor's output at agent step ``step``."""

    def build_extra(self, action_dim: int) -> None:
        """The algorithm's own modules beyond encoder, actor and critic; called before the
        shared optimizers are made and the networks compiled. None by default."""
        return None

    @abstractmethod
    def learn(self, batch: Batch | Any, step: int) -> dict[str, torch.Tensor]:
        """One learner update on ``batch`` (numpy :class:`Batch` or tensors); its metrics as
        scalar tensors on the device, so that nothing waits for the device to finish."""

    def update(self, batch: Batch | Any, step: int) -> dict[str, float]:
        """:meth:`learn`, its metrics read back at once as floats (one device sync)."""
        return read_back(self.learn(batch, step))

    # ---- plumbing

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )

    def adam(self, module: nn.Module) -> torch.optim.Adam:
        """Adam at ``cfg.lr`` over ``module``'s parameters; fused kernels on GPU."""
        fused = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.Adam(module.parameters(), lr=self.cfg.lr, **fused)

    @contextlib.contextmanager
    def abandonable(self, give_up: Callable[[], bool]) -> Iterator[None]:
        """The one update in this block raises :class:`UpdateAbandoned` as soon as
        ``give_up()`` is true at one of its checks, as long as it has not stepped an
        optimizer: the agent is then exactly as before it (a stopping learner on a busy CPU,
        where one update takes seconds, need not finish it for its checkpoint). The checks:
        each network's call and the moment before the first optimizer step; an update past
        that step runs to its end. Not with ``agent.compile`` (a GPU update is milliseconds)."""
        self._give_up, self._stepped = give_up, False
        try:
            yield
        finally:
            self._give_up = None

    def _maybe_give_up(self, *_: Any) -> None:
        if self._give_up is not None and not self._stepped and self._give_up():
            raise UpdateAbandoned

    def optimize(
        self,
        loss: torch.Tensor,
        scaler: torch.amp.GradScaler,
        *optimizers: torch.optim.Optimizer,
        inputs: list[torch.Tensor] | None = None,
    ) -> None:
        """One step of ``optimizers`` on ``loss``: zero their gradients, back-propagate the
        scaled loss (into ``inputs`` only, if given), step each, update the scaler."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(inputs=inputs)
        self._maybe_give_up()
        self._stepped = True
        for opt in optimizers:
            scaler.step(opt)
        scaler.update()

    def optimize_critic(
        self,
        critic_loss: torch.Tensor,
        target_q: torch.Tensor,
        q1: torch.Tensor,
        q2: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One encoder + critic step on ``critic_loss``; the critic's metrics (``target_q``
        [B, 1], ``q1`` and ``q2`` the online Q values the loss was computed from)."""
        self.optimize(critic_loss, self.critic_scaler, self.critic_opt, self.encoder_opt)
        return {
            "critic_target_q": target_q.mean(),
            "critic_q1": q1.detach().mean(),
            "critic_q2": q2.detach().mean(),
            "critic_loss": critic_loss.detach(),
        }

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] for one uint8 observation [C, H, W] (:meth:`action`'s rule)."""
        obs_t = to_device(np.asarray(obs), self.device).unsqueeze(0)
        # On a CPU, autocast means bf16, which most CPUs emulate: one action of the nano
        # encoder took 13 ms under it and 3 ms in fp32. Acting there is fp32, as the
        # distributed runtime's actors and evaluator act (agent.Policy); training keeps autocast.
        cpu = self.device.type == "cpu"
        with contextlib.nullcontext() if cpu else self._autocast():
            actor_out = self.actor(self.encoder(obs_t))
        action = self.action(actor_out, self.cfg, step, eval_mode)
        return action.float().cpu().numpy()[0]

    # ---- checkpoints and weight broadcast

    def _named_networks(self) -> Iterator[tuple[str, nn.Module]]:
        """The networks (compiled with ``cfg.compile``)."""
        yield from (
            ("encoder", self.encoder),
            ("actor", self.actor),
            ("critic", self.critic),
            ("critic_target", self.critic_target),
        )

    def _named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """Every module in a checkpoint: the networks and any other learned state."""
        yield from self._named_networks()

    def _named_optimizers(self) -> Iterator[tuple[str, torch.optim.Optimizer]]:
        yield from (
            ("encoder_opt", self.encoder_opt),
            ("actor_opt", self.actor_opt),
            ("critic_opt", self.critic_opt),
        )

    def _named_scalers(self) -> Iterator[tuple[str, torch.amp.GradScaler]]:
        yield from (("critic_scaler", self.critic_scaler), ("actor_scaler", self.actor_scaler))

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and actor weights as contiguous CPU copies (``encoder.*``, ``actor.*``)."""
        return policy_weights(self.encoder, self.actor)

    def load_policy_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights from :meth:`policy_state_dict` (e.g. into an env actor's CPU copy)."""
        load_policy_weights(state, self.encoder, self.actor)
