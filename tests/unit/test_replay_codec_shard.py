"""Compressed ReplayShard: bit-exact against a raw shard, encoded chunks, snapshots, stats."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from distdrq.replay import EpisodeWriter, ReplayShard
from distdrq.replay.codec import CODECS, EncodedFrames, FrameEncoder
from distdrq.replay.decoding import DecoderPool
from distdrq.replay.snapshot import read_snapshot, write_snapshot
from distdrq.types import Batch, Chunk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import codec_experiments  # noqa: E402, F401  (registers lz4-chain16 and lz4-tree32, used below)

GAMMA = 0.9
ACTION_DIM = 2
FIELDS = ("obs", "next_obs", "action", "reward", "discount", "version")
LZ4_CODECS = [c for c in CODECS if c != "raw"]


def moving_frames(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Compressible frames: a drifting checkerboard with a little noise."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    board = np.stack([(((xx + t) // 3 + yy // 3) % 2) * 120 + 60 for t in range(n)])
    frames = board[:, None] + rng.integers(-3, 4, (n, c, h, w)) + 20 * np.arange(c)[:, None, None]
    return np.clip(frames, 0, 255).astype(np.uint8)


class Episodes:
    """Random episodes cut into chunks: raw chunks, and the same chunks encoded by a writer."""

    def __init__(self, shape: tuple[int, int, int], seed: int = 0) -> None:
        self.shape = shape
        self.rng = np.random.default_rng(seed)

    def episode(
        self, key: int, length: int, cuts: list[int], last: bool, codec: str | None = None
    ) -> list[Chunk]:
        """Chunks of one episode of ``length`` transitions cut after the steps in ``cuts``;
        frames encoded with ``codec`` (writer side) unless None."""
        frames = moving_frames(length + 1, self.shape, int(self.rng.integers(1 << 30)))
        if self.rng.random() < 0.3:  # some incompressible episodes too
            frames = self.rng.integers(0, 256, frames.shape, dtype=np.uint8)
        actions = self.rng.standard_normal((length, ACTION_DIM)).astype(np.float32)
        rewards = self.rng.uniform(-1, 1, length).astype(np.float32)
        discounts = self.rng.choice(np.array([1.0, 1.0, 0.5, 0.0], np.float32), length)
        versions = self.rng.integers(0, 1000, length).astype(np.int64)
        encoder = FrameEncoder(codec, self.shape) if codec is not None else None
        bounds = [0, *sorted({c for c in cuts if 0 < c < length}), length]
        chunks = []
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            chunk_frames = frames[start + (start > 0) : stop + 1]
            encoded = None
            if encoder is not None:
                encoded = encoder.encode(chunk_frames)
                chunk_frames = np.empty((0, *self.shape), np.uint8)
            chunks.append(
                Chunk(
                    key,
                    start,
                    chunk_frames,
                    actions[start:stop],
                    rewards[start:stop],
                    discounts[start:stop],
                    versions[start:stop],
                    last and stop == length,
                    encoded,
                )
            )
        return chunks


def assert_same(a: Batch, b: Batch) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


PATHS = ("shard", "learner", "learner-local")
"""where a compressed shard's frames are decoded (replay.decode_on): on the sampling thread;
by the learner, from coded batches (distdrq launch); by a decoder pool straight from the
shard's memory (distdrq train)"""
POOL = DecoderPool(2)
"""the learner side's decoder: two threads, so that every batch is cut into two ranges"""


def sample_on(
    path: str,
    shard: ReplayShard,
    size: int,
    rng: np.random.Generator | None = None,
    out: Batch | None = None,
) -> Batch:
    """A batch of ``shard``'s decoded on ``path``'s side (raw shards: always by the shard)."""
    if path == "shard" or shard.codec == "raw":
        return shard.sample(size, rng=rng, out=out)
    if path == "learner-local":
        return shard.sample(size, rng=rng, out=out, decoder=POOL)
    return POOL.assemble([shard.sample_coded(size, rng=rng)], out)


def interleaved(plans: list[list[Chunk]]) -> list[Chunk]:
    """Chunks of several episodes interleaved (episodes written at the same time)."""
    out, queues = [], [list(p) for p in plans]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


@pytest.mark.parametrize(
    ("codec", "shape", "nstep", "frame_stack", "capacity"),
    [
        ("lz4-tree", (3, 12, 10), 3, 3, 400),
        ("lz4-tree", (3, 12, 10), 1, 3, 120),  # next window overlaps obs window
        ("lz4-key16", (1, 9, 8), 5, 2, 150),  # grayscale, n > k
        ("lz4-chain16", (3, 8, 8), 2, 4, 90),
        ("lz4-tree32", (3, 8, 8), 3, 1, 10_000),
        ("lz4d-star32", (3, 12, 10), 3, 3, 400),  # by dictionary, window by window
        ("lz4d-star32", (3, 12, 10), 1, 3, 120),
        ("lz4d-star32", (1, 9, 8), 5, 2, 150),
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_compressed_sampling_is_bit_exact(codec, shape, nstep, frame_stack, capacity, path):
    """Raw chunks into a raw and a compressed shard, writer-encoded chunks into another
    compressed shard: same rng, identical batches, through partial chunks, episode starts and
    ends and eviction; the compressed shards' frames decoded on ``path``'s side."""
    rng = np.random.default_rng(1)
    raw_eps, enc_eps = Episodes(shape, seed=2), Episodes(shape, seed=2)
    shards = [
        ReplayShard(capacity, nstep, GAMMA, frame_stack, seed=3),
        ReplayShard(capacity, nstep, GAMMA, frame_stack, seed=3, codec=codec),
        ReplayShard(capacity, nstep, GAMMA, frame_stack, seed=3, codec=codec),
    ]
    key = 0
    for _ in range(6):  # rounds of a few episodes written at once
        plans_raw, plans_enc = [], []
        for _ in range(3):
            length = int(rng.integers(1, 70))
            cuts = rng.integers(1, length + 1, int(rng.integers(0, 5))).tolist()
            last = bool(rng.random() < 0.8)
            plans_raw.append(raw_eps.episode(key, length, cuts, last))
            plans_enc.append(enc_eps.episode(key, length, cuts, last, codec=codec))
            key += 1
        for raw_chunk, enc_chunk in zip(
            interleaved(plans_raw), interleaved(plans_enc), strict=True
        ):
            if raw_chunk.episode_key in shards[0]._evicted:  # evicted while being written
                for shard, chunk in zip(shards, (raw_chunk, raw_chunk, enc_chunk), strict=True):
                    with pytest.raises(ValueError, match="evicted"):
                        shard.insert(chunk)
                continue
            shards[0].insert(raw_chunk)
            shards[1].insert(raw_chunk)
            shards[2].insert(enc_chunk)
            if shards[0].num_sampleable and rng.random() < 0.3:
                batches = [sample_on(path, s, 32) for s in shards]
                assert_same(batches[0], batches[1])
                assert_same(batches[0], batches[2])
        assert [s.stats()["transitions"] for s in shards[1:]] == [len(shards[0])] * 2
        assert list(shards[1]._episodes) == list(shards[0]._episodes) == list(shards[2]._episodes)
        outs = [s.empty_batch(64) for s in shards]
        for s, out in zip(shards, outs, strict=True):
            assert sample_on(path, s, 64, rng=np.random.default_rng(key), out=out) is out
        assert_same(outs[0], outs[1])
        assert_same(outs[0], outs[2])
    assert shards[0]._evicted or capacity > 1000
    # every valid transition of every stored episode, not only random draws
    for key in shards[0]._episodes:
        length = shards[0]._episodes[key].length
        steps = np.arange(max(0, length - nstep + 1))
        assert_same(shards[0]._batch_at(key, steps), shards[1]._batch_at(key, steps))


def test_writer_emits_encoded_chunks():
    shape = (3, 10, 12)
    frames = moving_frames(24, shape, 0)
    raw_writer = EpisodeWriter(5, chunk_length=7)
    enc_writer = EpisodeWriter(5, chunk_length=7, codec="lz4-tree")
    raw_shard = ReplayShard(1000, 3, GAMMA, 3, seed=1)
    enc_shard = ReplayShard(1000, 3, GAMMA, 3, seed=1, codec="lz4-tree")
    chunks = []
    for writer, shard in ((raw_writer, raw_shard), (enc_writer, enc_shard)):
        writer.begin(frames[0])
        for t in range(1, len(frames)):
            last = t == len(frames) - 1
            chunk = writer.append(np.full(ACTION_DIM, t, np.float32), t, 1.0, frames[t], last, t)
            if chunk is not None:
                shard.insert(chunk)
                if writer is enc_writer:
                    chunks.append(chunk)
    assert [c.num_transitions for c in chunks] == [7, 7, 7, 2]
    for chunk in chunks:
        assert chunk.frames.shape == (0, *shape) and isinstance(chunk.encoded, EncodedFrames)
        assert len(chunk.encoded) == chunk.num_transitions + (chunk.first_step == 0)
        assert chunk.encoded.first_frame == chunk.first_step + (chunk.first_step > 0)
    assert_same(raw_shard.sample(50), enc_shard.sample(50))
    assert raw_shard.stats()["frames"] == enc_shard.stats()["frames"] == 24

    # a raw shard cannot take frames it never saw uncompressed
    with pytest.raises(ValueError, match="stores raw frames"):
        ReplayShard(100, 1, GAMMA, 1).insert(chunks[0])
    with pytest.raises(ValueError, match="encoded with 'lz4-tree', this replay stores 'lz4-key16'"):
        ReplayShard(100, 1, GAMMA, 1, codec="lz4-key16").insert(chunks[0])
    with pytest.raises(ValueError, match="unknown frame codec"):
        EpisodeWriter(0, codec="zip")
    with pytest.raises(ValueError, match="unknown frame codec"):
        ReplayShard(100, 1, GAMMA, 1, codec="zip")


def test_encoded_chunk_validation_stores_nothing():
    shape = (3, 8, 8)
    eps = Episodes(shape, seed=4)
    shard = ReplayShard(100, 1, GAMMA, 1, codec="lz4-tree")
    first, second = eps.episode(1, 10, [4], last=True, codec="lz4-tree")
    shard.insert(first)

    def stored(stats):  # the storage figures (rejections are counted separately)
        return {k: v for k, v in stats.items() if not k.startswith("rejected_")}

    before = shard.stats()
    enc = second.encoded
    bad_first = EncodedFrames(enc.codec, enc.frame_shape, 3, enc.payload, enc.sizes)
    bad_count = EncodedFrames(enc.codec, enc.frame_shape, 5, enc.payload, enc.sizes[:-1])
    bad_sizes = EncodedFrames(enc.codec, enc.frame_shape, 5, enc.payload, enc.sizes + 1)
    bad_shape = EncodedFrames(enc.codec, (3, 8, 9), 5, enc.payload, enc.sizes)
    for bad, match in (
        (bad_first, "start at frame 3, expected frame 5"),
        (bad_count, "has 5 encoded frames, expected 6"),
        (bad_sizes, "sizes add up to"),
        (bad_shape, "this replay stores"),
    ):
        second.encoded = bad
        with pytest.raises(ValueError, match=match):
            shard.insert(second)
        assert stored(shard.stats()) == stored(before)
    assert shard.stats()["rejected_chunks"] == 4
    second.encoded = enc
    shard.insert(second)
    assert len(shard) == 10


def test_mixed_raw_and_encoded_chunks_in_one_episode():
    """The shard encodes raw chunks itself, picking up references from encoded ones (and
    the other way round): still bit-exact."""
    shape = (3, 9, 9)
    frames = moving_frames(41, shape, 3)
    floats = np.zeros((40, ACTION_DIM), np.float32), np.ones(40, np.float32)
    versions = np.arange(40, dtype=np.int64)
    encoder = FrameEncoder("lz4-tree", shape)
    raw = ReplayShard(1000, 3, GAMMA, 3, seed=5)
    mixed = ReplayShard(1000, 3, GAMMA, 3, seed=5, codec="lz4-tree")
    bounds = [0, 6, 19, 23, 40]
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        chunk_frames = frames[start + (start > 0) : stop + 1]
        encoded = encoder.encode(chunk_frames)  # the actor encodes every frame in order
        args = (floats[0][start:stop], floats[1][start:stop], floats[1][start:stop])
        raw.insert(Chunk(7, start, chunk_frames, *args, versions[start:stop], stop == 40))
        if i % 2 == 0:
            empty = np.empty((0, *shape), np.uint8)
            chunk = Chunk(7, start, empty, *args, versions[start:stop], stop == 40, encoded)
        else:
            chunk = Chunk(7, start, chunk_frames, *args, versions[start:stop], stop == 40)
        mixed.insert(chunk)
    np.testing.assert_array_equal(mixed._episodes[7].frames.gather(np.arange(41)), frames)
    assert_same(raw.sample(100), mixed.sample(100))


@pytest.mark.parametrize("fed", ["raw", "encoded"])
def test_snapshot_round_trip_keeps_compressed_bytes(tmp_path, fed):
    shape = (3, 12, 12)
    codec = "lz4-tree"
    eps = Episodes(shape, seed=6)
    use = codec if fed == "encoded" else None
    shard = ReplayShard(70, 3, GAMMA, 3, seed=7, codec=codec)
    for key, length in ((1, 30), (2, 25), (3, 22)):
        for chunk in eps.episode(key, length, [5, 11], last=True, codec=use):
            shard.insert(chunk)
    unfinished = eps.episode(4, 30, [9, 20], last=True, codec=use)
    for chunk in unfinished[:2]:
        shard.insert(chunk)
    assert 1 in shard._evicted
    shard.sample(8)
    state = shard.state_dict()
    assert state["codec"] == codec
    frame_bytes = int(np.prod(shape))
    for name, value in state.items():
        assert isinstance(value, np.ndarray | int | float | str | list | bytes), name
        if name.startswith("episode.") and ".frames" in name:
            assert name.endswith(("frames.payload", "frames.sizes")), name
            assert value.ndim == 1  # compressed bytes and sizes, never decoded frames
    payload = sum(v.nbytes for k, v in state.items() if k.endswith("frames.payload"))
    stored = [e.frames.episode.nbytes() - 16 * len(e.frames) for e in shard._episodes.values()]
    assert payload == sum(stored) != shard.stats()["frames"] * frame_bytes

    path = tmp_path / "replay.ddrq"
    write_snapshot(path, state)
    restored = ReplayShard(70, 3, GAMMA, 3, seed=99, codec=codec)
    restored.load_state_dict(read_snapshot(path))
    assert list(restored._episodes) == list(shard._episodes) == [2, 3, 4]
    assert_same(shard.sample(40), restored.sample(40))
    if fed == "encoded":  # no encoder state in the shard: the stats agree exactly
        assert restored.stats() == shard.stats()
    for chunk in unfinished[2:]:  # the unfinished episode continues after the restore
        shard.insert(chunk)
        restored.insert(chunk)
    assert_same(shard.sample(64), restored.sample(64))
    with pytest.raises(ValueError, match="evicted"):
        restored.insert(eps.episode(1, 3, [], last=True)[0])
    with pytest.raises(ValueError, match="codec 'lz4-tree'; this shard stores 'raw'"):
        ReplayShard(70, 3, GAMMA, 3).load_state_dict(state)
    empty = ReplayShard(10, 1, GAMMA, 1, codec=codec)
    empty.load_state_dict(ReplayShard(10, 1, GAMMA, 1, codec=codec).state_dict())
    assert len(empty) == 0


def test_stats_count_compressed_payload_and_index():
    shape = (3, 84, 84)
    codec = "lz4-tree"
    eps = Episodes(shape, seed=8)
    shard = ReplayShard(10_000, 3, GAMMA, 3, codec=codec)
    raw_shard = ReplayShard(10_000, 3, GAMMA, 3, codec=codec)  # fed raw chunks: encodes itself
    raw_eps = Episodes(shape, seed=8)
    payload = 0
    for key, length in enumerate((60, 40, 30)):
        for chunk in eps.episode(key, length, [10, 25], True, codec=codec):
            shard.insert(chunk)
            payload += memoryview(chunk.encoded.payload).nbytes
        for chunk in raw_eps.episode(key, length, [10, 25], True):
            raw_shard.insert(chunk)
    for chunk in raw_eps.episode(3, 30, [10, 25], False):
        raw_shard.insert(chunk)
    shard.sample(4)
    stats = shard.stats()
    assert stats["transitions"] == 130 and stats["frames"] == 133 and stats["episodes"] == 3
    per_transition = 4 * ACTION_DIM + 4 + 4 + 8
    expected = payload + 16 * 133 + 130 * per_transition  # payload, frame index, floats
    expected += shard._index.valid.nbytes + shard._index.cumulative.nbytes
    assert stats["stored_bytes"] == expected
    assert stats["stored_bytes"] >= payload
    assert stats["ratio_vs_drqv2"] == pytest.approx(63_504 / stats["bytes_per_transition"])
    # the shard that encodes itself also counts its encoder's reference frames
    raw_stats = raw_shard.stats()
    assert raw_stats["stored_bytes"] >= expected - shard._index.cumulative.nbytes
    open_episode = raw_shard._episodes[3].frames
    assert open_episode._encoder is not None and open_episode.nbytes > open_episode.episode.nbytes()


def test_config_allows_every_codec():
    from distdrq.config import _CHOICES, load_config

    assert _CHOICES["replay.codec"] == CODECS
    assert load_config("walker_walk", overrides=["replay.codec=lz4-tree"]).replay.codec == (
        "lz4-tree"
    )


def test_numpy_fallback_decoder_gives_the_same_batches(monkeypatch):
    import distdrq.replay.codec as codec_mod

    monkeypatch.setattr(codec_mod, "_reconstruct", codec_mod._reconstruct_numpy)
    test_compressed_sampling_is_bit_exact("lz4-tree", (3, 8, 8), 3, 3, 200, "shard")
    test_compressed_sampling_is_bit_exact("lz4d-star32", (3, 8, 8), 3, 3, 200, "shard")


def _filled_shards(codec: str, count: int, seed: int = 8) -> list[ReplayShard]:
    """``count`` compressed shards with the same episodes and generator."""
    eps = Episodes((3, 10, 9), seed=seed)
    plans = [eps.episode(key, 30 + 7 * key, [9, 20], key % 3 != 2, codec) for key in range(6)]
    shards = [ReplayShard(10_000, 3, GAMMA, 3, seed=seed, codec=codec) for _ in range(count)]
    for chunk in interleaved(plans):
        for shard in shards:
            shard.insert(chunk)
    return shards


@pytest.mark.parametrize("codec", ["lz4d-star32", "lz4-tree"])
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_decoder_pool_assembles_parts_into_one_buffer(codec, threads):
    """Parts from several shards, coded and decoded mixed, into the rows of one reused buffer
    on 1-5 threads: the batch the shards would have decoded, part after part (also a part of
    one sample, fewer windows than threads)."""
    decoded, coded = _filled_shards(codec, 2)
    sizes = [1, 40, 23]
    out = decoded.empty_batch(sum(sizes))
    with DecoderPool(threads) as pool:
        for round_ in range(3):
            rng_a, rng_b = np.random.default_rng(round_), np.random.default_rng(round_)
            expected = [decoded.sample(n, rng=rng_a) for n in sizes]
            parts = [coded.sample_coded(sizes[0], rng=rng_b), coded.sample(sizes[1], rng=rng_b)]
            parts.append(coded.sample_coded(sizes[2], rng=rng_b))
            assert pool.assemble(parts, out) is out
            start = 0
            for part in expected:
                rows = slice(start, start + len(part))
                for name in FIELDS:
                    np.testing.assert_array_equal(getattr(out, name)[rows], getattr(part, name))
                start += len(part)


def test_coded_batch_is_a_copy_and_smaller_than_the_decoded_one():
    """A coded batch holds its own bytes (the shard may evict the episodes before it is
    decoded), each needed frame once, and the shard's generator moved as sample() moves it."""
    shard, twin = _filled_shards("lz4d-star32", 2)
    coded = shard.sample_coded(200, rng=np.random.default_rng(3))
    expected = twin.sample(200, rng=np.random.default_rng(3))
    shard.clear()  # every episode dropped: the coded batch must not point into them
    assert_same(POOL.assemble([coded]), expected)
    windows = coded.windows
    assert len(np.unique(windows.offset)) < windows.offset.size  # shared frames sent once
    assert windows.payload.nbytes < (expected.obs.nbytes + expected.next_obs.nbytes) / 2
    tables = windows.nbytes - windows.payload.nbytes
    assert tables <= 24 * windows.size.size + 16 * windows.copies.shape[1] + 8 * 200
    a, b = _filled_shards("lz4d-star32", 2)
    a.sample_coded(10)
    b.sample(10)
    assert a._rng.bit_generator.state == b._rng.bit_generator.state


def test_raw_shard_has_nothing_to_decode():
    shard = ReplayShard(100, 1, GAMMA, 1)
    with pytest.raises(ValueError, match="raw shard has nothing to decode"):
        shard.sample_coded(4)
    with pytest.raises(ValueError, match="at least one thread"):
        DecoderPool(0)
