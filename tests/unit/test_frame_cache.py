"""The learner's frame cache (replay.learner_cache_mb): each coded frame crosses from a shard
once, batches stay bit for bit those the shard would decode, whatever order replies are served
and collected in, lost replies, evictions, a small budget and damage included."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from distdrq.replay import EpisodeWriter, ReplayShard
from distdrq.replay.decoding import CodedBatchError, DecoderPool
from distdrq.replay.framecache import FrameCache, SentFrames

CODEC = "lz4d-star32"
FRAME = (3, 12, 10)
FIELDS = ("obs", "next_obs", "action", "reward", "discount", "version")
POOL = DecoderPool(2)


def _chunks(writer: EpisodeWriter, length: int, rng: np.random.Generator) -> list:
    """One episode's chunks: a drifting pattern with noise (compressible, all frames differ)."""
    yy, xx = np.mgrid[: FRAME[1], : FRAME[2]]

    def frame(t: int) -> np.ndarray:
        base = ((xx + t) // 3 + yy // 2) % 2 * 100 + 50
        noise = rng.integers(-4, 5, FRAME)
        return np.clip(base[None] + noise, 0, 255).astype(np.uint8)

    writer.begin(frame(0))
    chunks = []
    for t in range(length):
        action = rng.standard_normal(2).astype(np.float32)
        chunk = writer.append(action, float(rng.random()), 1.0, frame(t + 1), t == length - 1)
        if chunk is not None:
            chunks.append(chunk)
    return chunks


def _twins(capacity: int, seed: int = 3) -> tuple[ReplayShard, ReplayShard]:
    return tuple(ReplayShard(capacity, 3, 0.99, 3, seed=seed, codec=CODEC) for _ in range(2))


def _insert(shards, chunks) -> None:
    for chunk in chunks:
        for shard in shards:
            shard.insert(chunk)


def _same(a, b) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize(
    ("budget", "depth", "lose", "capacity"),
    [
        (10**9, 1, 0.0, 900),
        (10**9, 3, 0.1, 900),
        (60_000, 3, 0.0, 900),
        (60_000, 2, 0.1, 900),
        (10**9, 3, 0.0, 150),  # a small replay: a frame is in nearly every batch in flight
    ],
)
def test_cached_batches_are_bit_exact_in_any_order(budget, depth, lose, capacity):
    """A shard with a client record and a client cache, ``depth`` requests in flight served in
    random order and collected in request order, a share of replies never ingested (lost),
    episodes inserted and evicted as batches go: every batch is what a twin shard decodes
    itself for the same draws; the cache stays within its budget plus the replies in flight;
    once warm, a batch carries a small share of the frames' bytes (with a budget that holds
    the replay)."""
    rng = np.random.default_rng(0)
    shard, twin = _twins(capacity=capacity)
    writer = EpisodeWriter(0, chunk_length=20, codec=CODEC)
    for _ in range(6):
        _insert((shard, twin), _chunks(writer, int(rng.integers(60, 140)), rng))
    sent, cache = SentFrames(budget), FrameCache()
    acks: list[int] = []
    pending: deque[list] = deque()  # [draw seed, acks sent, served reply or None]
    payloads, frames_named, lost, batches = [], [], 0, 0
    for k in range(160):
        if k % 9 == 0:  # new episodes arrive; old ones are evicted
            _insert((shard, twin), _chunks(writer, int(rng.integers(60, 140)), rng))
        while len(pending) < depth:
            pending.append([len(pending) + k * 10, acks, None])
            acks = []
        unserved = [r for r in pending if r[2] is None]
        if unserved:  # the shard serves one of the requests in flight, any of them
            request = unserved[int(rng.integers(len(unserved)))]
            sent.ack(request[1])
            shard.forget_gone(sent)
            coded = shard.sample_coded(32, rng=np.random.default_rng(request[0]), sent=sent)
            expected = twin.sample(32, rng=np.random.default_rng(request[0]))
            request[2] = (coded, sent.finish(), expected)
        if pending[0][2] is None:
            continue
        coded, reply, expected = pending.popleft()[2]
        if rng.random() < lose:
            lost += 1
            continue
        coded.windows.receive(cache, reply)
        acks.append(reply.seq)
        _same(POOL.assemble([coded]), expected)
        batches += 1
        if not lose:  # a lost reply holds drops back for 256 replies (it might turn up)
            assert cache.nbytes <= budget + 3 * depth * coded.windows.payload.nbytes + 20_000
        if k >= 100:
            payloads.append(coded.windows.payload.nbytes)
            frames_named.append(coded.windows.size.sum())
    assert batches >= 100 and (lose == 0 or lost > 3)
    share = sum(payloads) / sum(frames_named)
    if budget > 10**8:
        assert share < 0.25, share  # most frames come from the cache
    assert sent.held_bytes <= budget


def test_a_frame_missing_from_the_cache_is_an_error_not_garbage():
    """A cache that lost its frames (the shard believes it holds them) makes the batch fail to
    decode with CodedBatchError; a damaged size of a cached item too."""
    shard, _ = _twins(capacity=10_000)
    rng = np.random.default_rng(1)
    _insert((shard,), _chunks(EpisodeWriter(0, chunk_length=20, codec=CODEC), 80, rng))
    sent, cache = SentFrames(10**9), FrameCache()
    first = shard.sample_coded(64, sent=sent)
    reply = sent.finish()
    first.windows.receive(cache, reply)
    sent.ack([reply.seq])
    second = shard.sample_coded(64, sent=sent)
    assert second.windows.cache_keys.size > 0
    with pytest.raises(CodedBatchError, match="not in the frame cache"):
        second.windows.receive(FrameCache(), sent.finish())  # a cache that lost its frames
    third = shard.sample_coded(64, sent=sent)
    third.windows.receive(cache, sent.finish())
    POOL.assemble([third])  # intact: decodes
    third.windows.size[third.windows.offset < 0] += 1  # a cached item's size damaged
    with pytest.raises(CodedBatchError, match="cached frame"):
        POOL.assemble([third])
    fourth = shard.sample_coded(64, sent=sent)
    with pytest.raises(CodedBatchError, match="not looked up"):  # never received
        POOL.assemble([fourth])


def test_drops_wait_for_the_replies_before_them():
    """An episode dropped while an earlier reply (which may name its frames) is unacknowledged
    is told only once that reply is acknowledged, with the reply it was decided in; the client
    drops only copies older than that, and ignores such copies arriving late."""
    sent = SentFrames(budget=100)
    serial = np.array([7, 7, 9]), np.array([0, 1, 0]), np.array([40, 40, 30])
    held = sent.split(*serial)  # reply 0 sends all three
    assert not held.any()
    first = sent.finish()
    sent.split(np.array([9]), np.array([1]), np.array([30]))  # reply 1 in flight
    second = sent.finish()
    sent.ack([first.seq])  # 110 bytes held > 100: the oldest episode (7) is dropped in reply 2
    assert sent.held_bytes == 30
    third = sent.finish()
    assert third.drops.size == 0  # reply 1 is still unacknowledged
    sent.ack([second.seq])
    fourth = sent.finish()
    assert fourth.drops.tolist() == [7] and fourth.drop_seqs.tolist() == [2]
    cache = FrameCache()
    payload = np.arange(100, dtype=np.uint8)
    keys = (np.int64(7) << 24) + np.arange(2)
    cache.ingest(
        0,
        fourth.drops[:0],
        fourth.drop_seqs[:0],
        keys,
        payload,
        np.array([0, 40]),
        np.array([40, 40]),
    )
    cache.ingest(
        3, fourth.drops, fourth.drop_seqs, keys[:1], payload, np.array([0]), np.array([40])
    )
    assert len(cache) == 1 and cache.nbytes == 40  # the copy of reply 0 went, reply 3's stays
    cache.ingest(
        1, fourth.drops[:0], fourth.drop_seqs[:0], keys[1:], payload, np.array([0]), np.array([40])
    )
    assert len(cache) == 1  # a late copy from before the drop is ignored
