"""DrQ-v2 networks (facebookresearch/drqv2): encoder, actor, fused twin-Q critic, truncated normal;
plus DrQ-Nano's low-memory encoder, encoder gradient checkpointing and DrQ's SAC actor.

Differences from the official code, none of which changes the function computed:
- the encoder's output size is inferred from the image size instead of hard-coded (39,200 at 84);
- the twin Q heads are one module (:class:`TwinQ`) evaluated with batched matmuls;
- the actor returns the tanh mean; the agent builds :class:`TruncatedNormal` from it, so the
  std (a Python float that changes every step) stays outside ``torch.compile``'d code;
- LayerNorm, the tanh mean and the Q values are computed in fp32 under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def weight_init(m: nn.Module) -> None:
    """drqv2's ``utils.weight_init``: orthogonal weights (ReLU gain for convs), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.orthogonal_(m.weight.data, nn.init.calculate_gain("relu"))
        if m.bias is not None:
            m.bias.data.fill_(0.0)


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (CUDA autocast does this; CPU doesn't)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


def trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> Tanh, as drqv2's actor and critic trunks (same state_dict keys)."""
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), LayerNormFP32(feature_dim), nn.Tanh())


class Encoder(nn.Module):
    """obs / 255 - 0.5, Conv(C->32, 3, stride 2), 3x Conv(32->32, 3, stride 1), ReLU; flatten.

    ``pixel_offset`` is the 0.5 subtracted (drqv2: 0.5, pixels in [-0.5, 0.5]; DrQ: 0, [0, 1]).
    """

    def __init__(self, obs_shape: tuple[int, int, int], pixel_offset: float = 0.5) -> None:
        super().__init__()
        assert len(obs_shape) == 3, f"obs_shape must be (C, H, W), got {obs_shape}"
        self.pixel_offset = pixel_offset
        self.convnet = nn.Sequential(
            nn.Conv2d(obs_shape[0], 32, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=1),
            nn.ReLU(),
        )
        self.apply(weight_init)
        # flattened output size, inferred by a dummy forward (32 * 35 * 35 = 39,200 at 84x84)
        with torch.no_grad():
            self.repr_dim: int = self.convnet(torch.zeros(1, *obs_shape)).numel()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) [B, C, H, W] -> features [B, repr_dim] in C, H, W order."""
        obs = obs.float() / 255.0 - self.pixel_offset
        h = self.convnet(obs)
        return h.flatten(1)  # copies a channels_last output into drqv2's C-major order


class Actor(nn.Module):
    """Trunk, then MLP feature -> hidden -> ReLU -> hidden -> ReLU -> A; returns tanh mean (fp32)."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, action_dim),
        )
        self.apply(weight_init)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder features [B, repr_dim] -> mean action mu = tanh(policy(trunk(h))) [B, A]."""
        return torch.tanh(self.policy(self.trunk(h)).float())


class TwinQ(nn.Module):
    """Two MLPs in -> hidden -> ReLU -> hidden -> ReLU -> 1 evaluated together.

    Weights are stacked along a leading head axis in ``nn.Linear`` layout ([2, out, in]); head
    ``k`` is the same function as ``Sequential(Linear, ReLU, Linear, ReLU, Linear)`` holding
    ``w1[k], b1[k], w2[k], b2[k], w3[k], b3[k]``. The first layer shares its input, so both heads
    are one ``F.linear`` with 2 * hidden outputs; the other two layers are one ``baddbmm`` each.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.hidden_dim = num_heads, hidden_dim
        self.w1 = nn.Parameter(torch.empty(num_heads, hidden_dim, in_dim))
        self.b1 = nn.Parameter(torch.zeros(num_heads, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_heads, hidden_dim, hidden_dim))
        self.b2 = nn.Parameter(torch.zeros(num_heads, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(num_heads, 1, hidden_dim))
        self.b3 = nn.Parameter(torch.zeros(num_heads, 1))
        with torch.no_grad():
            for k in range(num_heads):  # per head, as weight_init does for each nn.Linear
                for w in (self.w1, self.w2, self.w3):
                    nn.init.orthogonal_(w[k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in] -> Q values [num_heads, B, 1]."""
        n, hid = self.num_heads, self.hidden_dim
        h = F.linear(x, self.w1.reshape(n * hid, -1), self.b1.reshape(n * hid))  # [B, n*hid]
        h = F.relu(h.view(-1, n, hid).transpose(0, 1))  # [n, B, hid] (a strided view)
        h = F.relu(torch.baddbmm(self.b2.unsqueeze(1), h, self.w2.transpose(1, 2)))
        return torch.baddbmm(self.b3.unsqueeze(1), h, self.w3.transpose(1, 2))


class Critic(nn.Module):
    """Own trunk, then twin Q on [trunk(h), action]; returns (q1, q2), each fp32 [B, 1]."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.q = TwinQ(feature_dim + action_dim, hidden_dim)
        self.apply(weight_init)

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_action = torch.cat([self.trunk(h), action.float()], dim=-1)
        q = self.q(h_action).float()
        return q[0], q[1]


class TruncatedNormal:
    """drqv2's ``utils.TruncatedNormal``: a Normal whose samples are clamped to [-1+eps, 1-eps].

    The clamp is straight-through (the gradient w.r.t. the mean is 1 even where it clamps);
    ``sample(clip)`` clips the noise ``scale * N(0, 1)`` to [-clip, clip] before adding the mean.
    ``log_prob`` and ``entropy`` are the untruncated Normal's, as in drqv2.
    """

    def __init__(
        self,
        loc: torch.Tensor,
        scale: float | torch.Tensor,
        low: float = -1.0,
        high: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        self.loc = loc
        self.scale = torch.ones_like(loc) * scale
        self.low, self.high, self.eps = low, high, eps

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        clamped_x = torch.clamp(x, self.low + self.eps, self.high - self.eps)
        return x - x.detach() + clamped_x.detach()

    def sample(
        self, clip: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One sample per element of ``loc``; noise clipped at ``clip`` if given."""
        eps = torch.randn(
            self.loc.shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator
        )
        eps = eps * self.scale
        if clip is not None:
            eps = torch.clamp(eps, -clip, clip)
        return self._clamp(self.loc + eps)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        var = self.scale**2
        return (
            -((value - self.loc) ** 2) / (2 * var)
            - self.scale.log()
            - math.log(math.sqrt(2 * math.pi))
        )

    def entropy(self) -> torch.Tensor:
        return 0.5 + 0.5 * math.log(2 * math.pi) + torch.log(self.scale)


# ---- low-memory encoder, gradient checkpointing, SAC actor (DrQ)


class Normalize(nn.Module):
    """uint8 (or float 0..255) -> float obs / 255 - ``pixel_offset``, as a module (drqv2's
    scaling with the default 0.5: pixels in [-0.5, 0.5]; DrQ's with 0: pixels in [0, 1])."""

    def __init__(self, pixel_offset: float = 0.5) -> None:
        super().__init__()
        self.pixel_offset = pixel_offset

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float() / 255.0 - self.pixel_offset

    def extra_repr(self) -> str:
        return f"pixel_offset={self.pixel_offset}"


class NanoEncoder(nn.Module):
    """DrQ-Nano's low-memory CNN: three 3x3 stride-2 convs (32, 64, 64) with ReLU, flatten,
    Linear to ``latent_dim`` (256), LayerNorm (fp32).

    The flattened conv size is inferred by a dummy forward (64 * 7 * 7 at 64x64, 64 * 9 * 9 at
    84x84). Normalisation (obs / 255 - ``pixel_offset``) is the first module of ``convnet``, so a
    checkpointed conv stack saves only the uint8 input for backward.
    """

    def __init__(
        self, obs_shape: tuple[int, int, int], latent_dim: int = 256, pixel_offset: float = 0.5
    ) -> None:
        super().__init__()
        assert len(obs_shape) == 3, f"obs_shape must be (C, H, W), got {obs_shape}"
        self.convnet = nn.Sequential(
            Normalize(pixel_offset),
            nn.Conv2d(obs_shape[0], 32, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2),
            nn.ReLU(),
        )
        with torch.no_grad():
            self.conv_dim: int = self.convnet(torch.zeros(1, *obs_shape)).numel()
        self.head = nn.Sequential(nn.Linear(self.conv_dim, latent_dim), LayerNormFP32(latent_dim))
        self.repr_dim: int = latent_dim
        self.apply(weight_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> latent [B, latent_dim] (fp32)."""
        return self.head(self.convnet(obs).flatten(1))


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` whose forward is recomputed in backward instead of saving activations
    (``torch.utils.checkpoint``, non-reentrant) whenever autograd is recording; same state_dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        return checkpoint(super().forward, x, use_reentrant=False)


def enable_grad_checkpointing(encoder: nn.Module) -> nn.Module:
    """Checkpoint ``encoder.convnet`` in place (parameters and state_dict keys unchanged)."""
    encoder.convnet = CheckpointedSequential(*encoder.convnet)
    return encoder


ENCODERS = {"drqv2": Encoder, "nano": NanoEncoder}


def make_encoder(
    obs_shape: tuple[int, int, int],
    name: str = "drqv2",
    grad_checkpointing: bool = False,
    pixel_offset: float = 0.5,
) -> nn.Module:
    """The encoder named ``name`` (``drqv2`` or ``nano``) with ``.repr_dim``, scaling pixels to
    obs / 255 - ``pixel_offset``; the conv stack checkpointed if ``grad_checkpointing``."""
    if name not in ENCODERS:
        raise ValueError(
            f"agent.encoder={name!r} is not allowed; choose one of: {', '.join(ENCODERS)}"
        )
    encoder = ENCODERS[name](tuple(obs_shape), pixel_offset=pixel_offset)
    return enable_grad_checkpointing(encoder) if grad_checkpointing else encoder


class SACActor(nn.Module):
    """DrQ's actor: trunk, MLP feature -> hidden -> ReLU -> hidden -> ReLU -> 2A; returns
    (mu, log_std) in fp32, log_std squashed into [log_std_min, log_std_max] by a tanh rescale."""

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        feature_dim: int,
        hidden_dim: int,
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 2 * action_dim),
        )
        self.apply(weight_init)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features [B, repr_dim] -> (mu, log_std), each fp32 [B, A] (pre-tanh)."""
        mu, log_std = self.policy(self.trunk(h)).float().chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return mu, log_std


def squashed_normal_sample(
    mu: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample a = tanh(mu + std * noise) and its log-probability [B, 1].

    log pi(a) = sum_i [log N(u_i; mu_i, std_i) - log(1 - tanh(u_i)^2)], the last term written
    as 2 * (log 2 - u - softplus(-2u)) (numerically stable, as torch's TanhTransform).
    ``noise`` ~ N(0, 1) is drawn if not given.
    """
    if noise is None:
        noise = torch.randn_like(mu)
    u = mu + log_std.exp() * noise
    normal_log_prob = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return torch.tanh(u), (normal_log_prob - log_det).sum(-1, keepdim=True)
