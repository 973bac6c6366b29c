"""Errors of the replay storage: what a shard refuses, and what a restore cannot load."""

from __future__ import annotations

from typing import Any

REJECT_REASONS: tuple[str, ...] = (
    "format",
    "values",
    "checksum",
    "undecodable",
    "order",
    "ended",
    "evicted",
)
"""Why a chunk is rejected: ``format`` (types, shapes, dtypes, codec, sizes, missing
checksum), ``values`` (non-finite actions, rewards or discounts, or a discount outside
[0, 1]), ``checksum`` (the encoded bytes differ from what the writer encoded), ``undecodable``
(an encoded frame that does not decode to the declared shape), ``order`` (``first_step`` is not
the episode's stored length: a gap or a repeat), ``ended`` (the episode has ended), ``evicted``
(the episode was evicted)."""


class ChunkRejected(ValueError):
    """A chunk that :meth:`ReplayShard.insert` refused; the shard is left exactly as it was.

    ``reason`` is one of :data:`REJECT_REASONS`; ``episode_key`` and ``transitions`` say what
    was refused. The message is one line naming the problem.
    """

    def __init__(
        self, message: str, reason: str, episode_key: int | None = None, transitions: int = 0
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.episode_key = episode_key
        self.transitions = int(transitions)

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (Ray sends it to the caller)
        return (type(self), (str(self), self.reason, self.episode_key, self.transitions))


class ReplayStateError(ValueError):
    """A replay state (snapshot or checkpoint contents) that reads but does not load:
    inconsistent, non-finite or undecodable. The loading shard keeps what it had."""
