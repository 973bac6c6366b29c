"""SDPG's networks (HaoxiangYou/SDPG ``models/*.py``, shared/reference/SDPG.md section 2.9) and
the CPU policy copy the group runners act with.

- Every Linear layer of the heads: orthogonal init with gain sqrt(2), zero bias, including the
  mean's output layer and the critic's; hidden layers are Linear -> ELU -> LayerNorm.
- Actor: input features (the pixel encoder's 128, or the normalised state) -> 128 -> 64 -> 32
  -> A means, and one learned state-independent log std vector.
- Pixel encoder: DrQ-v2's convolutions (:class:`~distdrq.agent.networks.Encoder`: obs / 255 -
  0.5, 32 channels, 39,200 features at 84x84) -> Linear 128 (orthogonal, gain 1) ->
  LayerNorm -> Tanh. With a 9x84x84 input and A = 6 this is 5,075,852 parameters, as published.
- Critic: normalised state -> 64 -> 64 -> 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from distdrq.agent.networks import Encoder, weight_init

ACTOR_HIDDEN = (128, 64, 32)
CRITIC_HIDDEN = (64, 64)
FEATURE_DIM = 128


def mlp(dims: tuple[int, ...] | list[int]) -> nn.Sequential:
    """Linear layers over ``dims``, ELU then LayerNorm after each hidden one; orthogonal init
    with gain sqrt(2) and zero biases everywhere (the output layer too)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2.0))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(dims) - 2:
            layers += [nn.ELU(), nn.LayerNorm(fan_out)]
    return nn.Sequential(*layers)


class PixelEncoder(nn.Module):
    """DrQ-v2's convolutions, then Linear -> LayerNorm -> Tanh to ``FEATURE_DIM`` features."""

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.convnet = Encoder(tuple(obs_shape))  # type: ignore[arg-type]
        self.projection = nn.Sequential(
            nn.Linear(self.convnet.repr_dim, FEATURE_DIM), nn.LayerNorm(FEATURE_DIM), nn.Tanh()
        )
        self.projection.apply(weight_init)  # orthogonal, gain 1
        self.out_dim = FEATURE_DIM

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> features [B, 128]."""
        return self.projection(self.convnet(obs))


class SDPGActor(nn.Module):
    """Pixels (uint8 frame stack) or a normalised state vector -> (means [B, A], log std [A]),
    both unclamped (the caller clamps to the configured bounds)."""

    def __init__(
        self, obs_shape: tuple[int, ...], action_dim: int, pixels: bool, log_std_init: float
    ) -> None:
        super().__init__()
        self.pixels = pixels
        self.encoder: nn.Module = PixelEncoder(obs_shape) if pixels else nn.Identity()
        in_dim = FEATURE_DIM if pixels else int(np.prod(obs_shape))
        self.head = mlp((in_dim, *ACTOR_HIDDEN, action_dim))
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encoder(obs)), self.log_std


class SDPGCritic(nn.Module):
    """Normalised state [B, d] -> value [B]."""

    def __init__(self, state_dim: int) -> None:
        super().__init__()
        self.net = mlp((state_dim, *CRITIC_HIDDEN, 1))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).squeeze(-1)


def bounded(
    means: torch.Tensor,
    log_std: torch.Tensor,
    mean_bound: float,
    log_std_bounds: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means clamped to [-mean_bound, mean_bound] and log std to its bounds (clamped entries
    get no gradient)."""
    return means.clamp(-mean_bound, mean_bound), log_std.clamp(*log_std_bounds)


class SDPGPolicy:
    """The acting half for group runners and evaluators: the actor in fp32 on the CPU, and for
    the state actor the observation statistics it normalises with. Loads what
    :meth:`distdrq.agent.sdpg.SDPGAgent.policy_state_dict` gives."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        pixels: bool,
        mean_bound: float,
        log_std_bounds: tuple[float, float],
    ) -> None:
        self.actor = SDPGActor(obs_shape, action_dim, pixels, 0.0).requires_grad_(False)
        self.pixels = pixels
        self.mean_bound = mean_bound
        self.log_std_bounds = log_std_bounds
        dim = 1 if pixels else int(np.prod(obs_shape))
        self.obs_mean = torch.zeros(dim)
        self.obs_scale = torch.ones(dim)
        self.version = -1

    def load(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load weights (``actor.*``) and statistics (``obs_mean``, ``obs_scale``)."""
        self.actor.load_state_dict(
            {k[len("actor.") :]: v for k, v in state.items() if k.startswith("actor.")}
        )
        self.obs_mean = state["obs_mean"].float()
        self.obs_scale = state["obs_scale"].float()
        self.version = int(version)

    def load_policy_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """:meth:`load` under the name evaluators call."""
        self.load(state, version)

    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """tanh of the bounded mean for one observation (SDPG's nominals and its evaluation
        act with the mean); float32 [A] in [-1, 1]."""
        means, _ = self.means(np.asarray(obs)[None])
        return np.tanh(means[0]).astype(np.float32)

    @torch.no_grad()
    def means(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounded pre-tanh means [B, A] and log std [A] (float32) for a batch of observations
        (uint8 stacks, or raw state vectors that are normalised here)."""
        x = torch.as_tensor(np.asarray(obs))
        if not self.pixels:
            x = (x.float() - self.obs_mean) / self.obs_scale
        means, log_std = bounded(*self.actor(x), self.mean_bound, self.log_std_bounds)
        return means.numpy(), log_std.numpy()
