"""Frame codecs that were measured (benchmarks/RESULTS.md) but are not shipped with replay:
other reference structures and group sizes of :mod:`distdrq.replay.codec`.

Importing this module registers them (:func:`distdrq.replay.registry.register_codec`), so that
:class:`~distdrq.replay.codec.FrameEncoder`, :class:`~distdrq.replay.ReplayShard` and
:class:`~distdrq.replay.EpisodeWriter` accept them by name; ``replay.codec`` does not offer
them. benchmarks/replay_codec.py compares them with the shipped codecs.
"""

from __future__ import annotations

from distdrq.replay.registry import CODECS, CodecSpec, register_codec

EXPERIMENTAL_CODECS: tuple[str, ...] = tuple(
    register_codec(spec).name
    for spec in (
        CodecSpec("lz4-chain16", "chain", group=16),  # 3-4% smaller than lz4-tree, 30% slower
        CodecSpec("lz4-chain8", "chain", group=8),
        CodecSpec("lz4-key8", "key", group=8),
        CodecSpec("lz4-tree32", "tree", group=32, anchor=4),
    )
)
ALL_CODECS: tuple[str, ...] = CODECS + EXPERIMENTAL_CODECS
"""the shipped codecs, then the experiments"""
