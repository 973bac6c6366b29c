"""Replay shards served by Ray actors, and the client that spreads inserts and samples over them.

:class:`ReplayServer` is a plain class (usable and testable without Ray) that
:func:`start_replay_shards` turns into named, restartable Ray actors. Each server owns one
:class:`~distdrq.replay.ReplayShard`, a :class:`~distdrq.replay.ratelimit.RateLimiter` and a
:class:`~distdrq.replay.snapshot.SnapshotStore`; when Ray restarts a killed server, its
constructor restores the latest intact snapshot (or starts empty after reporting a broken one).

:class:`ReplayClient` sends every chunk of an episode to the same shard and samples each batch
from all shards in proportion to their sampleable transitions, so that the union is sampled
uniformly. Batches come back through the object store (numpy arrays are zero-copy there) and
are concatenated once into the caller's buffer. With ``replay.decode_on=learner`` the shards
send their parts with the frames still coded (:class:`~distdrq.replay.decoding.CodedBatch`,
a fraction of the bytes) and the client decodes them on its decoder pool's threads, straight
into that buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distdrq.config import ReplayConfig
from distdrq.distributed import crash_tracebacks
from distdrq.replay import ChunkRejected, ReplayShard
from distdrq.replay.decoding import CodedBatch, CodedBatchError, DecoderPool, assemble_batch
from distdrq.replay.framecache import CacheReply, CacheRequest, FrameCache, SentFrames, new_token
from distdrq.replay.ratelimit import RateLimiter, RateLimiterClosed
from distdrq.replay.shard import disk_state
from distdrq.replay.snapshot import SnapshotError, SnapshotStore, read_snapshot
from distdrq.run.rundir import reuse_source
from distdrq.types import Batch, Chunk


@dataclass
class ShardReply:
    """A shard's part of a batch, with its size so the client can weight the next split."""

    batch: Batch | CodedBatch | None
    """the sampled transitions (frames still coded with ``replay.decode_on=learner``), or None
    if the rate limiter or an empty shard said no"""
    sampleable: int
    """valid n-step start indices in the shard after this call"""
    cache: CacheReply | None = None
    """what the client's frame cache does with a coded batch (it was asked to keep one)"""


class ReplayServer:
    """One replay shard with rate limiting and snapshots (wrapped as a Ray actor).

    As an actor it runs three concurrency groups: ``insert`` with one thread, so the chunks of
    an episode are applied in the order they were sent and a rate-limited insert holds back
    only the inserts queued behind it; ``sample`` with a few threads for the learner's
    prefetched requests; ``admin`` for stats, snapshots and shutdown, which are never stuck
    behind a blocked insert or sample.
    """

    CONCURRENCY_GROUPS = {"insert": 1, "sample": 4, "admin": 3}

    def __init__(
        self,
        index: int,
        cfg: ReplayConfig,
        frame_stack: int,
        samples_per_insert: float | None,
        min_size_to_sample: int,
        snapshot_dir: str | None = None,
        snapshot_every_inserts: int = 0,
        seed: int = 0,
        run_name: str | None = None,
    ) -> None:
        """``samples_per_insert=None`` enforces only the minimum size before sampling;
        ``run_name``: register with that run's coordinator (so restarts are counted)."""
        crash_tracebacks()
        self.index = index
        if run_name is not None:
            with contextlib.suppress(ValueError):  # no coordinator: a standalone shard
                coordinator = ray.get_actor(f"{run_name}-coordinator")
                ray.get(coordinator.register.remote(f"replay-{index}"))
        self.shard = ReplayShard(
            capacity=cfg.capacity,
            nstep=cfg.nstep,
            discount=cfg.discount,
            frame_stack=frame_stack,
            seed=seed + 7919 * index,
            codec=cfg.codec,
        )
        self.disk_codec = cfg.disk_codec
        self.send_coded = cfg.learner_decodes()
        self.incarnation = new_token()
        """this process's name in frame-cache replies: a restarted shard is a new one"""
        self._clients: OrderedDict[int, SentFrames] = OrderedDict()
        """what each client's frame cache holds (the two latest clients: a learner and the one
        that replaced it)"""
        self.limiter = (
            RateLimiter(samples_per_insert, min_size_to_sample)
            if samples_per_insert is not None
            else RateLimiter(1.0, min_size_to_sample, error_buffer=float("inf"))
        )
        self._lock = threading.Lock()
        self._snapshot_every = snapshot_every_inserts
        self._inserted_since_snapshot = 0
        self._unsaved = 0  # inserted transitions no snapshot file holds yet (lost if killed)
        self._snapshot_lock = threading.Lock()
        self.messages: list[str] = []
        self._messages_taken = 0
        self.restored_from: str | None = None
        self.snapshots = (
            SnapshotStore(Path(snapshot_dir) / f"shard_{index:03d}") if snapshot_dir else None
        )
        self.restored_transitions = 0
        self.snapshots_damaged = 0
        self.transitions_lost = 0  # held by damaged snapshots beyond what an older one restored
        if self.snapshots is not None:
            found = self.snapshots.load_latest(warn=self.messages.append, restore=self._restore)
            if found is not None:
                self.restored_from = str(found[0])
                self.restored_transitions = len(self.shard)
            else:  # every snapshot was broken: drop what a failed restore left behind
                self.shard.clear()
            self._report_restore(found)

    def _report_restore(self, found: tuple[Path, Any] | None) -> None:
        """One message saying what came back, and what damaged snapshots cost."""
        assert self.snapshots is not None
        skipped = self.snapshots.skipped
        self.snapshots_damaged = len(skipped)
        restored = (
            f"{self.restored_transitions:,} transitions from {found[0].name}" if found else ""
        )
        if skipped:
            held = skipped[0].transitions
            if held is not None:
                self.transitions_lost = max(held - self.restored_transitions, 0)
            lost = (
                f"{self.transitions_lost:,} transitions lost"
                if held is not None
                else "the number of transitions lost is unknown"
            )
            self.messages.append(
                f"{len(skipped)} damaged snapshot(s) set aside; "
                + (f"restored {restored}" if found else "no intact snapshot: started empty")
                + f"; {lost}"
            )
        elif found:
            self.messages.append(f"restored {restored}")

    def _restore(self, state: dict[str, Any]) -> None:
        self.shard.load_state_dict(state["shard"])
        self.limiter.load_state_dict(state["limiter"])

    # -- data path ---------------------------------------------------------------------------

    @ray.method(concurrency_group="insert")
    def insert(self, chunk: Chunk, timeout: float | None = 5.0) -> bool:
        """Insert a chunk once the rate limiter allows; False if it did not within ``timeout``."""
        try:
            if not self.limiter.insert(chunk.num_transitions, timeout=timeout):
                return False
        except RateLimiterClosed:
            return False
        try:
            with self._lock:
                self.shard.insert(chunk)
                self._unsaved += chunk.num_transitions
        except ChunkRejected as exc:  # nothing was stored; the sender hears why
            self.messages.append(f"refused a chunk: {exc}")
            raise
        self._inserted_since_snapshot += chunk.num_transitions
        if self._snapshot_every and self._inserted_since_snapshot >= self._snapshot_every:
            self.snapshot()
        return True

    @ray.method(concurrency_group="sample")
    def sample(
        self,
        batch_size: int,
        timeout: float | None = 5.0,
        permit: bool = True,
        cache: CacheRequest | None = None,
    ) -> ShardReply:
        """Sample ``batch_size`` transitions once the rate limiter allows (their frames left
        coded with ``replay.decode_on=learner``, for the client to decode).

        ``permit`` is the reply of the run's global :class:`RateLimiterServer` (passed as an
        ObjectRef, so Ray runs this call only after the permit is granted or refused).
        ``cache``: the client keeps the coded frames it receives (frames it holds go by key;
        :mod:`~distdrq.replay.framecache`).
        """
        with self._lock:
            sampleable = self.shard.num_sampleable
        if not permit or batch_size <= 0 or sampleable == 0:
            return ShardReply(None, sampleable)
        try:
            if not self.limiter.sample(batch_size, timeout=timeout):
                return ShardReply(None, sampleable)
        except RateLimiterClosed:
            return ShardReply(None, sampleable)
        with self._lock:  # a coded batch holds a copy of its bytes: valid after the lock
            if not self.send_coded:
                return ShardReply(self.shard.sample(batch_size), self.shard.num_sampleable)
            sent = self._sent_frames(cache) if cache is not None else None
            batch = self.shard.sample_coded(batch_size, sent=sent)
            reply = ShardReply(batch, self.shard.num_sampleable)
            if sent is not None:
                reply.cache = sent.finish()
                reply.cache.incarnation = self.incarnation
            return reply

    def _sent_frames(self, request: CacheRequest) -> SentFrames:
        """The record of what the requesting client holds, updated by its acknowledgements and
        the episodes that left (under the lock)."""
        sent = self._clients.pop(request.token, None)
        if sent is None:
            sent = SentFrames(request.budget)
        self._clients[request.token] = sent  # the newest client last
        while len(self._clients) > 2:
            self._clients.popitem(last=False)
        sent.budget = request.budget
        sent.ack(request.acks)
        self.shard.forget_gone(sent)
        return sent

    # -- maintenance -------------------------------------------------------------------------

    @ray.method(concurrency_group="admin")
    def snapshot(self, code_new: bool = True) -> str | None:
        """Write a snapshot of the shard and limiter; returns its path (None without a store).
        ``code_new=False`` (a stopping run): new episodes keep their replay-codec bytes instead
        of being coded for disk (see :func:`~distdrq.replay.shard.disk_state`)."""
        if self.snapshots is None:
            return None
        with self._snapshot_lock:
            with self._lock:  # finished episodes are immutable: the state holds views, not copies
                shard = self.shard.state_dict()
                limiter = self.limiter.state_dict()
                sequence = self.limiter.stats().inserts
                self._inserted_since_snapshot = 0
                saving = self._unsaved
            # coding the frames for disk takes a while: outside the lock, sampling goes on;
            # episodes already in the newest snapshot reuse their coded frames from it
            previous = reuse_source(
                self.disk_codec,
                self.snapshots.paths(),
                lambda path: read_snapshot(path).get("shard"),
                (SnapshotError,),
            )
            state = {
                "shard": disk_state(shard, self.disk_codec, previous, code_new),
                "limiter": limiter,
            }
            path = self.snapshots.save(state, sequence)
            with self._lock:
                self._unsaved -= saving  # only now are they safe
            return str(path)

    @ray.method(concurrency_group="admin")
    def stats(self) -> dict[str, Any]:
        """Shard and rate-limiter statistics (for metrics and progress)."""
        with self._lock:
            stats: dict[str, Any] = dict(self.shard.stats())
            stats["sampleable"] = self.shard.num_sampleable
        limiter = self.limiter.stats()
        stats.update(
            shard=self.index,
            inserts=limiter.inserts,
            samples=limiter.samples,
            measured_samples_per_insert=limiter.measured_samples_per_insert,
            insert_blocked_seconds=limiter.insert_blocked_seconds,
            sample_blocked_seconds=limiter.sample_blocked_seconds,
            restored_from=self.restored_from,
            restored_transitions=self.restored_transitions,
            pid=os.getpid(),
            inserted_since_snapshot=self._unsaved,
            snapshots_damaged=self.snapshots_damaged,
            transitions_lost=self.transitions_lost,
            messages=list(self.messages),
        )
        return stats

    @ray.method(concurrency_group="admin")
    def close(self) -> None:
        """Release every waiter (inserts and samples return at once from now on)."""
        self.limiter.close()

    @ray.method(concurrency_group="admin")
    def ping(self) -> int:
        """Liveness check; returns the shard index."""
        return self.index

    @ray.method(concurrency_group="admin")
    def pid(self) -> int:
        """This shard's process id."""
        return os.getpid()

    @ray.method(concurrency_group="admin")
    def take_messages(self) -> list[str]:
        """Messages (restores, damaged snapshots, refused chunks) since the last call."""
        out = self.messages[self._messages_taken :]
        self._messages_taken += len(out)
        return out


def start_replay_shards(
    num_shards: int,
    cfg: ReplayConfig,
    frame_stack: int,
    samples_per_insert: float | None,
    min_size_to_sample: int,
    name_prefix: str,
    snapshot_dir: str | None = None,
    snapshot_every_inserts: int = 0,
    seed: int = 0,
    num_cpus: float = 1.0,
    run_name: str | None = None,
) -> list[Any]:
    """Create ``num_shards`` named Ray actors (``<prefix>-replay-<i>``) that restart on failure.

    ``min_size_to_sample`` is split evenly over the shards.
    """
    actor_cls = ray.remote(concurrency_groups=ReplayServer.CONCURRENCY_GROUPS)(ReplayServer)
    per_shard_min = max(1, -(-min_size_to_sample // num_shards))
    return [
        actor_cls.options(
            name=f"{name_prefix}-replay-{i}",
            num_cpus=num_cpus,
            max_restarts=-1,
            max_task_retries=0,
        ).remote(
            i,
            cfg,
            frame_stack,
            samples_per_insert,
            per_shard_min,
            snapshot_dir,
            snapshot_every_inserts,
            seed,
            run_name,
        )
        for i in range(num_shards)
    ]


class ReplayClient:
    """Spreads inserts over shards (by episode) and samples uniformly over their union."""

    def __init__(
        self,
        shards: list[Any],
        seed: int = 0,
        limiter: Any | None = None,
        decoder: DecoderPool | None = None,
        cache_bytes: int = 0,
    ) -> None:
        """``limiter``: the run's :class:`RateLimiterServer` handle (None: shards' own only);
        ``decoder``: the threads that decode coded batches (None: the calling thread);
        ``cache_bytes``: keep up to this many bytes of coded frames (split evenly over the
        shards), so that each frame crosses once (0: every batch brings all its frames)."""
        if not shards:
            raise ValueError("ReplayClient needs at least one replay shard")
        self.shards = list(shards)
        self.limiter = limiter
        self.decoder = decoder
        self.decode_failures = 0
        """batches dropped because a coded part did not decode"""
        self.bytes_received = 0
        """bytes of the shards' replies that made batches (arrays: what crossed processes)"""
        self.batches_received = 0
        self._budget = int(cache_bytes) // len(self.shards)
        self.caches = [FrameCache() for _ in self.shards] if self._budget > 0 else []
        """each shard's frames kept here (empty list: no cache)"""
        self._tokens = [new_token() for _ in self.shards]
        self._incarnations: list[int | None] = [None] * len(self.shards)
        self._acks: list[list[int]] = [[] for _ in self.shards]
        self._rng = np.random.default_rng(seed)
        self._sampleable = np.zeros(len(self.shards), dtype=np.int64)
        self._refreshed = 0.0

    def shard_for(self, episode_key: int) -> int:
        """Which shard holds an episode (all its chunks go to the same one)."""
        writer, episode = episode_key >> 32, episode_key & 0xFFFFFFFF
        return (writer + episode) % len(self.shards)

    def insert(self, chunk: Chunk, timeout: float | None = 5.0) -> Any:
        """Send a chunk to its shard; returns the ObjectRef of the server's bool reply.

        With a global limiter, the chunk is sent only once the limiter admits it (False if it
        did not within ``timeout``: send the same chunk again).
        """
        if self.limiter is not None and not ray.get(
            self.limiter.insert.remote(chunk.num_transitions, timeout)
        ):
            return ray.put(False)
        shard = self.shards[self.shard_for(chunk.episode_key)]
        return shard.insert.remote(chunk, timeout)

    def refresh_sizes(self) -> np.ndarray:
        """Ask every shard for its sampleable count (0 for a shard that is restarting)."""
        sizes = []
        for shard in self.shards:
            try:
                sizes.append(ray.get(shard.stats.remote())["sampleable"])
            except ray.exceptions.RayActorError:
                sizes.append(0)
        self._sampleable = np.array(sizes, dtype=np.int64)
        self._refreshed = time.monotonic()
        return self._sampleable

    def split(self, batch_size: int) -> np.ndarray:
        """Per-shard sample counts, multinomial in proportion to each shard's sampleable size."""
        if self._sampleable.sum() == 0 or time.monotonic() - self._refreshed > 30.0:
            self.refresh_sizes()
        total = self._sampleable.sum()
        if total == 0:
            return np.zeros(len(self.shards), dtype=np.int64)
        return self._rng.multinomial(batch_size, self._sampleable / total)

    def request(self, batch_size: int, timeout: float | None = 5.0) -> list[tuple[int, Any]]:
        """Start sampling one batch; returns pending (shard, ObjectRef) pairs for :meth:`collect`."""
        counts = self.split(batch_size)
        if not counts.any():
            return []
        permit = True if self.limiter is None else self.limiter.sample.remote(batch_size, timeout)
        pending = []
        for i, n in enumerate(counts):
            if not n:
                continue
            cache = None
            if self.caches:
                cache = CacheRequest(self._tokens[i], self._budget, self._acks[i])
                self._acks[i] = []
            pending.append((i, self.shards[i].sample.remote(int(n), timeout, permit, cache)))
        return pending

    @property
    def cache_bytes(self) -> int:
        """Bytes of coded frames held in the frame caches."""
        return sum(cache.nbytes for cache in self.caches)

    def _receive(self, i: int, reply: ShardReply) -> None:
        """Apply a shard's coded reply to its frame cache (a new shard incarnation clears it)
        and look up the frames the batch names by key; :class:`CodedBatchError` if one is
        missing."""
        info, batch = reply.cache, reply.batch
        if not isinstance(batch, CodedBatch) or info is None or not self.caches:
            return
        if self._incarnations[i] != info.incarnation:
            self.caches[i].clear()
            self._incarnations[i] = info.incarnation
        batch.windows.receive(self.caches[i], info)
        self._acks[i].append(info.seq)

    def _start_over(self, i: int) -> None:
        """Forget shard ``i``'s frames: the next request asks under a new token, so the shard
        sends every frame afresh."""
        if self.caches:
            self.caches[i].clear()
            self._tokens[i] = new_token()
            self._acks[i] = []

    def collect(self, pending: list[tuple[int, Any]], out: Batch | None = None) -> Batch | None:
        """Wait for a requested batch, decode the parts that came coded and write it into
        ``out`` when given (e.g. pinned staging buffers); None if any shard declined (rate
        limited or empty) or failed (a shard that died is restarted by Ray; the next request
        reaches it again)."""
        try:
            replies: list[ShardReply] = ray.get([ref for _, ref in pending])
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
            self._refreshed = 0.0  # re-read the shard sizes on the next split
            return None
        for (i, _), reply in zip(pending, replies, strict=True):
            self._sampleable[i] = reply.sampleable
        try:
            for (i, _), reply in zip(pending, replies, strict=True):
                self._receive(i, reply)  # every reply: a declined batch still moved the cache
            if not replies or any(r.batch is None for r in replies):
                return None
            parts = [r.batch for r in replies]
            batch = assemble_batch(parts, out, self.decoder)  # type: ignore[arg-type]
        except CodedBatchError:  # a coded part that does not decode: counted, batch dropped
            self.decode_failures += 1
            for i, _ in pending:
                self._start_over(i)
            return None
        self.batches_received += 1
        self.bytes_received += sum(_nbytes(part) for part in parts)  # type: ignore[arg-type]
        return batch

    def sample(self, batch_size: int, timeout: float | None = 5.0) -> Batch | None:
        """Sample one batch from the union of shards (blocking); None if declined."""
        return self.collect(self.request(batch_size, timeout))

    def stats(self) -> list[dict[str, Any]]:
        """Every shard's statistics."""
        return ray.get([s.stats.remote() for s in self.shards])


def _nbytes(part: Batch | CodedBatch) -> int:
    """Bytes of a shard's part of a batch (its arrays)."""
    if isinstance(part, CodedBatch):
        return part.nbytes
    return sum(getattr(part, f.name).nbytes for f in dataclasses.fields(part))


class RateLimiterServer:
    """The run's one samples-per-insert limiter (a threaded Ray actor).

    Limiting per shard makes shards wait on each other (one blocked on samples while another is
    blocked on inserts); one global limiter keeps exactly the configured ratio over the union.
    Env actors ask it before inserting a chunk; the learner's sample permit is chained into
    the shards' sample calls.
    """

    def __init__(
        self,
        samples_per_insert: float,
        min_size_to_sample: int,
        state: dict[str, int] | None = None,
    ) -> None:
        self.limiter = RateLimiter(samples_per_insert, min_size_to_sample)
        if state:
            self.limiter.load_state_dict(state)

    def insert(self, transitions: int, timeout: float | None = 5.0) -> bool:
        """Admit ``transitions`` inserted transitions (blocks up to ``timeout``)."""
        try:
            return self.limiter.insert(transitions, timeout=timeout)
        except RateLimiterClosed:
            return False

    def sample(self, transitions: int, timeout: float | None = 5.0) -> bool:
        """Admit a batch of ``transitions`` samples (blocks up to ``timeout``)."""
        try:
            return self.limiter.sample(transitions, timeout=timeout)
        except RateLimiterClosed:
            return False

    def stats(self) -> dict[str, float]:
        """Counters, measured ratio and blocked time of both sides."""
        return dict(vars(self.limiter.stats()))

    def state_dict(self) -> dict[str, int]:
        """Counters for checkpoints."""
        return self.limiter.state_dict()

    def close(self) -> None:
        """Release every waiter."""
        self.limiter.close()


def start_rate_limiter(
    name_prefix: str,
    samples_per_insert: float,
    min_size_to_sample: int,
    state: dict[str, int] | None,
    max_waiters: int,
    scheduling_strategy: Any = None,
) -> Any:
    """The named global limiter actor (``<prefix>-ratelimiter``)."""
    cls = ray.remote(RateLimiterServer)
    return cls.options(
        name=f"{name_prefix}-ratelimiter",
        num_cpus=0,
        max_restarts=-1,
        max_concurrency=max_waiters,
        scheduling_strategy=scheduling_strategy,
    ).remote(samples_per_insert, min_size_to_sample, state)
