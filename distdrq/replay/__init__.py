"""Replay: frame-once episode storage with n-step sampling, and the writer that feeds it."""

from distdrq.replay.shard import FrameStore, RawFrameStore, ReplayShard, drqv2_bytes_per_transition
from distdrq.replay.writer import EpisodeWriter

__all__ = [
    "EpisodeWriter",
    "FrameStore",
    "RawFrameStore",
    "ReplayShard",
    "drqv2_bytes_per_transition",
]
