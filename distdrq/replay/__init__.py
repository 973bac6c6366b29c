"""Replay: frame-once episode storage with n-step sampling, and the writer that feeds it.

Modules: ``registry`` (the codecs, by name), ``codec`` (frame coding, actor side and at sample
time) and ``lz4decode`` (its kernels), ``episodes`` (an episode's stored frames and
transitions), ``validation`` (what an insert or a restore accepts), ``sampler`` (drawing and
assembling batches), ``state`` (the state layout of snapshots and checkpoints), ``shard``
(:class:`ReplayShard`, composing them), ``decoding`` (batches whose frames travel coded and
are decoded on the learner's side, on several threads), ``writer``, ``ratelimit``,
``snapshot``, ``diskcodec``.

The names below load their module on first use, so that :mod:`distdrq.config` can read the codec
names from ``registry`` without loading numpy and numba.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "CODECS": "registry",
    "DEFAULT_CODEC": "registry",
    "EncodedFrames": "codec",
    "FrameEncoder": "codec",
    "REJECT_REASONS": "errors",
    "ChunkRejected": "errors",
    "ReplayStateError": "errors",
    "CodedBatch": "decoding",
    "DecoderPool": "decoding",
    "EncodedFrameStore": "episodes",
    "FrameStore": "episodes",
    "RawFrameStore": "episodes",
    "ReplayShard": "shard",
    "drqv2_bytes_per_transition": "shard",
    "EpisodeWriter": "writer",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
