"""The acting half of DrQ-v2 and DrQ in NumPy, for env actors and evaluators without torch.

An env actor only runs the encoder and the actor on one observation per step. Importing torch
for that costs a process about 230 MB of its ~600 (torch's libraries, its allocator and thread
pools), the largest share of an env actor's memory, so the replay flow's env actors and
evaluator act with this class instead (:mod:`distdrq.distributed.roles`). It computes the same
function as :class:`distdrq.agent.policy.Policy` in float32 from the same weights (a launch's
learner publishes them as NumPy arrays: ``WeightPublisher`` in :mod:`distdrq.distributed.learner`) and
follows the same action rules; only the random stream of the exploration noise differs
(NumPy's generator instead of torch's), not its distribution. ``tests/unit/test_numpy_policy.py``
pins it to the torch policy for both algorithms and both encoders.

Convolutions run channels last, one matrix product per layer (valid padding, square kernels;
see :func:`_conv_relu`); weights come in torch's layout ``[out, in, k, k]`` and features are
flattened in torch's (C, H, W) order.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from distdrq.config import AgentConfig, ConfigError

# per algorithm: (pixel offset, action rule); tests pin these to the torch classes'
ALGORITHMS = {"drqv2": (0.5, "mean_plus_noise"), "drq": (0.0, "squashed_gaussian")}
# per encoder: the strides of its convolutions (drqv2: 4 convs; nano: 3)
ENCODER_STRIDES = {"drqv2": (2, 1, 1, 1), "nano": (2, 2, 2)}
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default


def _conv_weights(weight: np.ndarray, stride: int) -> np.ndarray:
    """torch's conv weight [O, C, k, k] as the matrix :func:`_conv_relu` multiplies by: for
    stride 1 [C, k*k*O] (every input pixel times every tap), else [C*k*k, O] (im2col)."""
    out_c, in_c, k, _ = weight.shape
    if stride == 1:
        return np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(in_c, k * k * out_c))
    return np.ascontiguousarray(weight.reshape(out_c, in_c * k * k).T)


def _conv_relu(
    x: np.ndarray, wmat: np.ndarray, bias: np.ndarray, k: int, stride: int
) -> np.ndarray:
    """ReLU(conv2d(x) + bias), valid padding, channels last: x [H, W, C] -> [Ho, Wo, O].

    Stride 1: one product of every input pixel with every kernel tap ([H*W, C] x [C, k*k*O],
    contiguous, no copy), then the k*k shifted slices summed. Strided: im2col (the patches of
    the output pixels only, [Ho*Wo, C*k*k] x [C*k*k, O]). Each is the faster one at its
    layers' sizes on one core."""
    h, w, c = x.shape
    out_c = bias.shape[0]
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    if stride != 1:
        windows = sliding_window_view(x, (k, k), axis=(0, 1))[::stride, ::stride]  # Ho,Wo,C,k,k
        out = (windows.reshape(ho * wo, c * k * k) @ wmat).reshape(ho, wo, out_c)
        out += bias
    else:
        taps = (x.reshape(h * w, c) @ wmat).reshape(h, w, k, k, out_c)
        out = np.empty((ho, wo, out_c), np.float32)
        out[:] = bias
        for i in range(k):
            for j in range(k):
                out += taps[i : i + ho, j : j + wo, i, j]
    np.maximum(out, 0.0, out=out)
    return out


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + _LN_EPS) * weight + bias


def _linear(x: np.ndarray, prefix: str, w: dict[str, np.ndarray]) -> np.ndarray:
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


class NumpyPolicy:
    """Encoder and actor of ``cfg.algo`` (drqv2 or drq) with ``cfg.encoder`` (drqv2 or nano);
    loads what the agent's ``policy_state_dict`` gives, as NumPy arrays or tensors."""

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        action_dim: int,
        cfg: AgentConfig,
        seed: int | None = None,
    ) -> None:
        if cfg.algo not in ALGORITHMS:
            raise ConfigError(f"agent.algo={cfg.algo} has no NumPy policy (only drqv2 and drq)")
        if cfg.encoder not in ENCODER_STRIDES:
            raise ConfigError(f"agent.encoder={cfg.encoder} has no NumPy policy (drqv2, nano)")
        self.cfg = cfg
        self.obs_shape = tuple(obs_shape)
        self.action_dim = int(action_dim)
        self.pixel_offset, self.rule = ALGORITHMS[cfg.algo]
        self.strides = ENCODER_STRIDES[cfg.encoder]
        self.rng = np.random.default_rng(seed)
        self.weights: dict[str, np.ndarray] = {}
        self.version = -1

    def load_policy_state_dict(self, state: dict[str, Any], version: int) -> None:
        """Load encoder and actor weights (``encoder.*``, ``actor.*``) of version ``version``."""
        weights = {k: np.asarray(_to_numpy(v), np.float32) for k, v in state.items()}
        convs = sorted(
            (k for k in weights if k.startswith("encoder.convnet.") and k.endswith(".weight")),
            key=lambda k: int(k.split(".")[2]),
        )
        if len(convs) != len(self.strides):
            raise ValueError(
                f"weights hold {len(convs)} encoder convolutions; agent.encoder="
                f"{self.cfg.encoder} has {len(self.strides)}"
            )
        self._convs = [
            (
                _conv_weights(weights[k], s),
                weights[k[: -len("weight")] + "bias"],
                weights[k].shape[-1],
            )
            for k, s in zip(convs, self.strides, strict=True)
        ]
        self.weights = weights
        self.version = int(version)

    def features(self, obs: np.ndarray) -> np.ndarray:
        """Encoder output [repr_dim] for one uint8 observation [C, H, W]."""
        x = np.asarray(obs).transpose(1, 2, 0).astype(np.float32)  # channels last
        x *= np.float32(1 / 255.0)
        x -= np.float32(self.pixel_offset)
        for (wall, bias, k), stride in zip(self._convs, self.strides, strict=True):
            x = _conv_relu(x, wall, bias, k, stride)
        h = x.transpose(2, 0, 1).reshape(-1)  # torch's (C, H, W) flattening
        if self.cfg.encoder == "nano":
            w = self.weights
            h = _layer_norm(
                _linear(h, "encoder.head.0", w),
                w["encoder.head.1.weight"],
                w["encoder.head.1.bias"],
            )
        return h

    def actor_out(self, h: np.ndarray) -> np.ndarray:
        """The actor's MLP output (pre-tanh): [A] (drqv2) or [2A] (drq)."""
        w = self.weights
        z = np.tanh(
            _layer_norm(
                _linear(h, "actor.trunk.0", w), w["actor.trunk.1.weight"], w["actor.trunk.1.bias"]
            )
        )
        z = np.maximum(_linear(z, "actor.policy.0", w), 0.0)
        z = np.maximum(_linear(z, "actor.policy.2", w), 0.0)
        return _linear(z, "actor.policy.4", w)

    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """Action float32 [A] for one uint8 observation [C, H, W] at agent step ``step``."""
        out = self.actor_out(self.features(obs)).astype(np.float32)
        uniform = step < self.cfg.num_expl_steps
        if self.rule == "mean_plus_noise":  # DrQ-v2: TruncatedNormal(tanh(mu), std), no clip
            mu = np.tanh(out)
            if eval_mode:
                return mu
            if uniform:
                return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
            noise = self.rng.standard_normal(self.action_dim).astype(np.float32)
            std = np.float32(self.cfg.stddev_schedule(step))
            return np.clip(mu + noise * std, -1.0 + 1e-6, 1.0 - 1e-6).astype(np.float32)
        mu, log_std = out[: self.action_dim], out[self.action_dim :]
        if eval_mode:
            return np.tanh(mu)
        if uniform:
            return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        lo, hi = self.cfg.drq.log_std_min, self.cfg.drq.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (np.tanh(log_std) + 1)
        noise = self.rng.standard_normal(self.action_dim).astype(np.float32)
        return np.tanh(mu + np.exp(log_std) * noise).astype(np.float32)


def _to_numpy(value: Any) -> np.ndarray:
    """A NumPy array from an array or a CPU tensor (without importing torch here)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def numpy_acting(cfg: AgentConfig) -> bool:
    """Whether :class:`NumpyPolicy` implements ``cfg``'s acting half (drqv2 and drq, with
    either encoder); other algorithms act through their own torch modules."""
    return cfg.algo in ALGORITHMS and cfg.encoder in ENCODER_STRIDES


def make_acting_policy(obs_shape: tuple[int, int, int], action_dim: int, cfg: AgentConfig) -> Any:
    """The policy an env actor or evaluator acts with: :class:`NumpyPolicy` where it applies
    (no torch in the process), else the torch :class:`~distdrq.agent.policy.Policy`."""
    if numpy_acting(cfg):
        return NumpyPolicy(obs_shape, action_dim, cfg)
    from distdrq.agent.policy import Policy

    return Policy(obs_shape, action_dim, cfg)


_BLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
)


def limit_blas_threads(threads: int = 1) -> bool:
    """Set the thread count of the OpenBLAS that NumPy loaded (NumPy's wheels bundle one; its
    threads start at import, before ``OPENBLAS_NUM_THREADS`` could be set in a Ray worker).
    On a busy core a multi-threaded matrix-vector product spins: one act took 47 ms instead
    of 3 here. Returns whether a library took the setting (Linux only)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", fh.read())))
    except OSError:
        return False
    done = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            if hasattr(lib, name):
                getattr(lib, name)(int(threads))
                done = True
                break
    return done
