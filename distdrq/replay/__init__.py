"""Replay: frame-once episode storage with n-step sampling, and the writer that feeds it."""

from distdrq.replay.codec import CODECS, DEFAULT_CODEC, EncodedFrames, FrameEncoder
from distdrq.replay.errors import REJECT_REASONS, ChunkRejected, ReplayStateError
from distdrq.replay.shard import (
    EncodedFrameStore,
    FrameStore,
    RawFrameStore,
    ReplayShard,
    drqv2_bytes_per_transition,
)
from distdrq.replay.writer import EpisodeWriter

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "REJECT_REASONS",
    "ChunkRejected",
    "EncodedFrameStore",
    "EncodedFrames",
    "EpisodeWriter",
    "FrameEncoder",
    "FrameStore",
    "RawFrameStore",
    "ReplayShard",
    "ReplayStateError",
    "drqv2_bytes_per_transition",
]
