"""Decoding replay frames where the cores are (``replay.decode_on=learner``).

A shard that leaves decoding to the learner plans a batch as it would to decode it (the same
draws, the same small arrays) and sends a :class:`CodedBatch`: the coded bytes of every frame
its windows need, each frame once, with the placement tables that say where each decoded
frame goes (:class:`CodedWindows`). On the learner's side a :class:`DecoderPool` decodes the
parts of a batch on several threads (the numba kernel releases the GIL) straight into the
caller's buffers (pinned staging memory on a GPU node). The batch is bit for bit the one the
shard would have decoded itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distdrq.replay.codec import WindowPlan, run_plan
from distdrq.replay.framecache import CacheReply, FrameCache, SentFrames, frame_keys
from distdrq.replay.lz4decode import (
    DEST_ARRAY,
    DEST_ROW,
    FIRST,
    NOWHERE,
    SCRATCH,
    SECOND,
    SRC_ARRAY,
    SRC_ROW,
    gather_bytes,
)
from distdrq.types import Batch

__all__ = [
    "CodedBatch",
    "CodedBatchError",
    "CodedWindows",
    "DecoderPool",
    "assemble_batch",
    "empty_batch",
]


_NO_KEYS = np.zeros(0, np.int64)
_NO_INTS = np.zeros(0, np.int32)
Keyed = tuple[SentFrames, np.ndarray, np.ndarray]
"""what keys a batch's frames: the client's record, each episode's serial and frame count"""


class CodedBatchError(ValueError):
    """A coded batch that does not decode (damaged tables or bytes), in one line."""


@dataclass
class CodedWindows:
    """A batch's frame windows still coded: what crosses from a shard to the learner.

    ``payload`` holds the coded bytes of every frame the windows need (their own frames and
    the references those are decoded against), each frame once however many windows need it;
    item ``i`` (one frame decoded for one window) reads ``size[i]`` bytes at ``offset[i]``.
    The rest is a :class:`~distdrq.replay.codec.WindowPlan` without addresses, its tables in
    int32 (they travel: 24 bytes per item, against some 5 kB of coded frame)."""

    payload: np.ndarray
    """uint8: the coded frames, each once"""
    offset: np.ndarray
    """int32 [n]: where item ``i``'s bytes start in ``payload``"""
    size: np.ndarray
    """int32 [n]: bytes of item ``i``"""
    items: np.ndarray
    """int32 [4, n]: placement table of the items (see WindowPlan)"""
    copies: np.ndarray
    """int32 [4, m]: output rows that repeat another row of their window"""
    item_end: np.ndarray
    """int32 [B]"""
    copy_end: np.ndarray
    """int32 [B]"""
    widths: tuple[int, ...]
    scratch_rows: int
    frame_bytes: int
    rgb: bool
    by_dict: bool
    cache_keys: np.ndarray = field(default_factory=_NO_KEYS.copy)
    """int64 [c]: keys of the frames the learner's cache holds (item ``i`` with
    ``offset[i] = -1 - j`` reads frame ``cache_keys[j]`` there; :mod:`~distdrq.replay.framecache`)"""
    new_keys: np.ndarray = field(default_factory=_NO_KEYS.copy)
    """int64 [f]: keys of the payload's frames, for the learner's cache (empty: no cache)"""
    new_offset: np.ndarray = field(default_factory=_NO_INTS.copy)
    """int32 [f]: where each of ``new_keys``' bytes start in ``payload``"""
    new_size: np.ndarray = field(default_factory=_NO_INTS.copy)
    """int32 [f]"""
    cache_src: np.ndarray | None = None
    """int64 [c]: where the cached frames lie in the learner's memory (set there, not sent)"""
    cache_size: np.ndarray | None = None
    """int64 [c]: their sizes in the cache (checked against the items')"""

    @classmethod
    def pack(cls, plan: WindowPlan, keyed: Keyed | None = None) -> CodedWindows:
        """The plan's bytes copied out of the shard's storage (safe to send and to keep after
        the shard evicts the episodes). With ``keyed`` (the client's :class:`SentFrames`, and
        the serials and frame counts of the plan's episodes), frames the client holds go by
        key instead of by bytes."""
        _, first, inverse = np.unique(plan.frame, return_index=True, return_inverse=True)
        sizes = plan.size[first]
        small = np.int32  # tables travel at half size; the kernel reads int64
        extra: dict[str, np.ndarray] = {}
        held = np.zeros(sizes.size, bool)
        if keyed is not None:
            sent, serials, lengths = keyed
            ends = np.cumsum(lengths)
            table = np.searchsorted(ends, plan.frame[first], side="right")
            index = plan.frame[first] - (ends - lengths)[table]
            keys = frame_keys(serials[table], index)
            held = sent.split(serials[table], index, sizes)
        fresh = ~held
        starts = np.zeros(sizes.size, np.int64)
        np.cumsum(np.where(fresh, sizes, 0)[:-1], out=starts[1:])
        starts[held] = -1 - np.arange(int(held.sum()))
        payload = np.empty(int(sizes[fresh].sum()), np.uint8)
        gather_bytes(plan.src[first][fresh], sizes[fresh], starts[fresh], payload)
        if payload.size >= 2**31:
            raise ValueError("a coded batch holds at most 2 GiB of frames; sample fewer")
        if keyed is not None:
            extra = {
                "cache_keys": keys[held],
                "new_keys": keys[fresh],
                "new_offset": starts[fresh].astype(small),
                "new_size": sizes[fresh].astype(small),
            }
        return cls(
            **extra,
            payload=payload,
            offset=starts[inverse.reshape(-1)].astype(small),
            size=plan.size.astype(small),
            items=plan.items.astype(small),
            copies=plan.copies.astype(small),
            item_end=plan.item_end.astype(small),
            copy_end=plan.copy_end.astype(small),
            widths=plan.widths,
            scratch_rows=plan.scratch_rows,
            frame_bytes=plan.frame_bytes,
            rgb=plan.rgb,
            by_dict=plan.by_dict,
        )

    @property
    def windows(self) -> int:
        return int(self.item_end.size)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (what it costs to send)."""
        arrays = (self.payload, self.offset, self.size, self.items, self.copies, self.item_end)
        keyed = (self.cache_keys, self.new_keys, self.new_offset, self.new_size)
        return int(sum(a.nbytes for a in (*arrays, *keyed)) + self.copy_end.nbytes)

    def receive(self, cache: FrameCache, reply: CacheReply) -> None:
        """On the learner's side, with the frame cache of the shard that sent it: apply the
        shard's reply to the cache (drops, then this batch's new frames) and look up the
        frames it names by key; :class:`CodedBatchError` if the cache lacks one (the caller
        starts that shard's cache over)."""
        cache.ingest(
            reply.seq,
            reply.drops,
            reply.drop_seqs,
            self.new_keys,
            self.payload,
            self.new_offset,
            self.new_size,
        )
        found = cache.addresses(self.cache_keys)
        if found is None:
            raise CodedBatchError("coded windows: a frame named by key is not in the frame cache")
        self.cache_src, self.cache_size = found

    def plan(self) -> WindowPlan:
        """The plan that decodes it, addressing ``payload`` and the cached frames (which must
        outlive the decoding); :class:`CodedBatchError` if its tables point outside its payload,
        its cached frames or the output rows."""
        self.check()
        base = self.payload.ctypes.data if self.payload.size else 0
        wide = np.int64
        src = base + self.offset.astype(wide)
        if self.cache_keys.size:
            cached = self.offset < 0
            assert self.cache_src is not None  # check() said so
            src[cached] = self.cache_src[-1 - self.offset[cached].astype(wide)]
        return WindowPlan(
            src=src,
            size=self.size.astype(wide),
            frame=self.offset.astype(wide),
            items=self.items.astype(wide),
            copies=self.copies.astype(wide),
            item_end=self.item_end.astype(wide),
            copy_end=self.copy_end.astype(wide),
            widths=self.widths,
            scratch_rows=self.scratch_rows,
            frame_bytes=self.frame_bytes,
            rgb=self.rgb,
            by_dict=self.by_dict,
        )

    def check(self) -> None:
        """Every address the kernel would use lies inside the payload or the output and scratch
        rows (so a damaged message is an error, never a stray write); :class:`CodedBatchError`
        otherwise."""
        n, windows = self.size.size, self.windows
        if self.payload.dtype != np.uint8 or self.payload.ndim != 1:
            raise CodedBatchError("coded windows: payload must be a flat uint8 array")
        if self.offset.shape != (n,) or self.items.shape != (4, n) or self.copies.shape[0] != 4:
            raise CodedBatchError("coded windows: item tables of inconsistent lengths")
        offset, size = self.offset.astype(np.int64), self.size.astype(np.int64)  # no wrapping
        cached = offset < 0
        if n and (size.min() < 1 or (offset + size)[~cached].max(initial=0) > self.payload.size):
            raise CodedBatchError("coded windows: an item's bytes lie outside the payload")
        if cached.any():
            slot = -1 - offset[cached]
            c = self.cache_keys.size
            if self.cache_src is None or self.cache_size is None or self.cache_src.size != c:
                raise CodedBatchError("coded windows: frames named by key were not looked up")
            if slot.max() >= c or (self.cache_size[slot] != size[cached]).any():
                raise CodedBatchError("coded windows: an item names a cached frame it does not fit")
        for ends, total in ((self.item_end, n), (self.copy_end, self.copies.shape[1])):
            if ends.shape != (windows,) or (windows and (ends[-1] != total or ends.min() < 0)):
                raise CodedBatchError("coded windows: window ends do not match the tables")
            if (np.diff(ends) < 0).any():
                raise CodedBatchError("coded windows: window ends go backwards")
        if not 1 <= len(self.widths) <= 2:
            raise CodedBatchError("coded windows: one or two output arrays")
        rows = {FIRST: windows * self.widths[0], SCRATCH: self.scratch_rows}
        rows[SECOND] = windows * self.widths[1] if len(self.widths) == 2 else 0
        for table, may_be_nowhere in ((self.items, True), (self.copies, False)):
            _check_rows(table[DEST_ARRAY], table[DEST_ROW], rows, False)
            _check_rows(table[SRC_ARRAY], table[SRC_ROW], rows, may_be_nowhere)


def _check_rows(
    array: np.ndarray, row: np.ndarray, rows: dict[int, int], may_be_nowhere: bool
) -> None:
    """Each (array, row) names an existing row (or nothing, where allowed)."""
    limit = np.zeros(array.size, np.int64)
    known = np.zeros(array.size, bool)
    for name, count in rows.items():
        mine = array == name
        limit[mine], known[mine] = count, True
    nowhere = (array == NOWHERE) if may_be_nowhere else np.zeros(array.size, bool)
    if not (known | nowhere).all() or ((row < 0) | (row >= limit))[known].any():
        raise CodedBatchError("coded windows: a placement names a row outside the batch")


@dataclass
class CodedBatch:
    """A shard's part of a batch whose frames the learner decodes: the transitions' small
    arrays as :class:`~distdrq.types.Batch` holds them, and the frames as coded windows."""

    windows: CodedWindows
    """obs (first output) and next_obs (second output) of every sample, coded"""
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    version: np.ndarray
    obs_shape: tuple[int, ...]
    """one observation's shape, ``[frame_stack * C, H, W]``"""

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (what it costs to send)."""
        small = (self.action, self.reward, self.discount, self.version)
        return self.windows.nbytes + int(sum(a.nbytes for a in small))


def empty_batch(
    obs_shape: tuple[int, ...],
    action_dim: int,
    size: int,
    alloc: Callable[[tuple[int, ...], Any], np.ndarray] = np.empty,
) -> Batch:
    """An uninitialised batch, each array from ``alloc(shape, dtype)`` (for example pinned)."""
    obs = (size, *obs_shape)
    return Batch(
        obs=alloc(obs, np.uint8),
        action=alloc((size, action_dim), np.float32),
        reward=alloc((size,), np.float32),
        discount=alloc((size,), np.float32),
        next_obs=alloc(obs, np.uint8),
        version=alloc((size,), np.int64),
    )


_SMALL = ("action", "reward", "discount", "version")


class DecoderPool:
    """Decodes coded batches on ``threads`` threads: the calling one and ``threads - 1``
    workers. A batch's windows are cut into ``threads`` ranges of about equal work (LZ4
    items), each decoded by one thread with scratch rows of its own."""

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"a decoder pool needs at least one thread, got {threads}")
        self.threads = int(threads)
        self._workers = (
            ThreadPoolExecutor(self.threads - 1, thread_name_prefix="replay-decode")
            if self.threads > 1
            else None
        )
        self._local = threading.local()

    def close(self) -> None:
        """Stop the worker threads (decoding after this raises)."""
        if self._workers is not None:
            self._workers.shutdown(wait=True)

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, parts: list[tuple[CodedWindows, Batch]]) -> None:
        """Decode each part's windows into its batch's ``obs`` and ``next_obs`` (C-contiguous,
        for example rows of one bigger batch); :class:`CodedBatchError` if a part is damaged
        (rows of the batch may then hold anything)."""
        try:
            self.run([(coded.plan(), (batch.obs, batch.next_obs)) for coded, batch in parts])
        except CodedBatchError:
            raise
        except ValueError as exc:  # corrupt LZ4 bytes
            raise CodedBatchError(f"coded batch does not decode: {exc}") from None

    def run(self, plans: list[tuple[WindowPlan, tuple[np.ndarray, ...]]]) -> None:
        """Decode each plan into its output arrays (as
        :func:`~distdrq.replay.codec.run_plan` takes them) on the pool's threads; the plans'
        bytes must stay where they are until this returns."""
        total = sum(plan.items.shape[1] for plan, _ in plans)
        tasks = [
            (plan, outs, bounds) for plan, outs in plans for bounds in self._ranges(plan, total)
        ]
        if self._workers is None or len(tasks) == 1:
            for task in tasks:
                self._run(task)
            return
        pending = [self._workers.submit(self._run, task) for task in tasks[1:]]
        self._run(tasks[0])
        for future in pending:
            future.result()

    def _ranges(self, plan: WindowPlan, total: int) -> list[tuple[int, int]]:
        """Window ranges of ``plan`` for its share of the threads (its items of ``total``),
        cut at about equal item counts."""
        items = plan.items.shape[1]
        pieces = min(plan.windows, max(1, round(self.threads * items / max(total, 1))))
        cuts = np.searchsorted(plan.item_end, np.arange(1, pieces) * items / pieces)
        bounds = np.unique(np.concatenate([[0], cuts + 1, [plan.windows]]).clip(0, plan.windows))
        return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def _run(self, task: tuple[WindowPlan, tuple[np.ndarray, ...], tuple[int, int]]) -> None:
        plan, outs, bounds = task
        scratch = getattr(self._local, "scratch", None)
        self._local.scratch = run_plan(plan, outs, scratch, bounds)

    def assemble(self, parts: list[Batch | CodedBatch], out: Batch | None = None) -> Batch:
        """One batch from shard parts, decoded or coded, written into ``out`` when given (e.g.
        pinned staging buffers; its rows must number the parts' together)."""
        if len(parts) == 1 and out is None and isinstance(parts[0], Batch):
            return parts[0]
        if out is None:
            out = _empty_like(parts)
        rows = sum(len(p) for p in parts)
        if len(out) != rows:
            raise ValueError(f"the parts hold {rows} transitions, the output batch {len(out)}")
        coded, start = [], 0
        for part in parts:
            stop = start + len(part)
            rows_of = Batch(
                **{n: getattr(out, n)[start:stop] for n in (*_SMALL, "obs", "next_obs")}
            )
            for name in _SMALL:
                getattr(rows_of, name)[...] = getattr(part, name)
            if isinstance(part, CodedBatch):
                coded.append((part.windows, rows_of))
            else:
                rows_of.obs[...] = part.obs
                rows_of.next_obs[...] = part.next_obs
            start = stop
        self.decode(coded)
        return out


def _empty_like(parts: list[Batch | CodedBatch]) -> Batch:
    first = parts[0]
    obs_shape = first.obs_shape if isinstance(first, CodedBatch) else first.obs.shape[1:]
    return empty_batch(obs_shape, first.action.shape[1], sum(len(p) for p in parts))


def assemble_batch(
    parts: list[Batch | CodedBatch], out: Batch | None = None, pool: DecoderPool | None = None
) -> Batch:
    """:meth:`DecoderPool.assemble` with ``pool`` (None: decoding on the calling thread)."""
    if pool is None:
        pool = _INLINE
    return pool.assemble(parts, out)


_INLINE = DecoderPool(1)
"""decodes on the calling thread (no workers to start or stop)"""
