"""Replay shards as Ray actors on a real local Ray cluster: two shards, restart from snapshot."""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.config import ReplayConfig  # noqa: E402
from distdrq.distributed.replay_actor import ReplayClient, start_replay_shards  # noqa: E402
from distdrq.replay import EpisodeWriter  # noqa: E402

FRAME = (3, 8, 8)


def _episode(writer: EpisodeWriter, length: int, version: int):
    rng = np.random.default_rng(writer.episodes_started + 1000 * version)
    writer.begin(rng.integers(0, 255, FRAME, dtype=np.uint8))
    chunks = []
    for t in range(length):
        chunk = writer.append(
            np.full(2, t, np.float32),
            1.0,
            1.0,
            rng.integers(0, 255, FRAME, dtype=np.uint8),
            t == length - 1,
            version=version,
        )
        if chunk is not None:
            chunks.append(chunk)
    return chunks


def test_two_shards_uniform_union_and_restart_from_snapshot(ray_cluster, tmp_path):
    cfg = ReplayConfig(capacity=10_000, nstep=3, discount=0.99)
    shards = start_replay_shards(
        2,
        cfg,
        frame_stack=3,
        samples_per_insert=None,
        min_size_to_sample=10,
        name_prefix="t1",
        snapshot_dir=str(tmp_path),
        num_cpus=0.5,
    )
    client = ReplayClient(shards, seed=0)
    # writer 0's episodes 0,2,4 and writer 1's episode 1 land on shard 0; sizes 3:1 by design
    w0, w1 = EpisodeWriter(0, chunk_length=25), EpisodeWriter(1, chunk_length=25)
    refs = []
    for _ in range(3):
        for chunk in _episode(w0, 100, version=0):
            refs.append(client.insert(chunk))
        w0.begin(np.zeros(FRAME, np.uint8))  # skip an episode key so w0 stays on shard 0
        w0.flush()
    for chunk in _episode(w1, 100, version=1):
        refs.append(client.insert(chunk))
    assert all(ray.get(refs))
    stats = client.stats()
    assert [s["transitions"] for s in stats] == [300, 100]

    # uniform over the union: shard 0 holds 3/4 of the sampleable transitions
    from_shard0 = 0
    total = 0
    for _ in range(40):
        batch = client.sample(64)
        assert batch is not None and batch.obs.shape == (64, 9, 8, 8)
        assert batch.obs.dtype == np.uint8 and batch.action.shape == (64, 2)
        from_shard0 += int((batch.version == 0).sum())
        total += len(batch)
    assert abs(from_shard0 / total - 0.75) < 0.05

    # kill shard 0 after a snapshot: Ray restarts it and it comes back with its data
    assert ray.get(shards[0].snapshot.remote()) is not None
    ray.kill(shards[0], no_restart=False)
    deadline = time.monotonic() + 60
    while True:  # the old process may still answer until the kill lands
        try:
            restored = ray.get(shards[0].stats.remote(), timeout=10)
            if restored["restored_from"]:
                break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "shard did not come back"
        time.sleep(0.5)
    assert restored["transitions"] == 300 and restored["restored_from"]
    assert client.sample(32) is not None
    for s in shards:
        ray.kill(s, no_restart=True)


def test_rate_limiter_declines_and_close_releases(ray_cluster):
    cfg = ReplayConfig(capacity=1000, nstep=1, discount=0.99)
    (shard,) = start_replay_shards(
        1,
        cfg,
        frame_stack=1,
        samples_per_insert=2.0,
        min_size_to_sample=10,
        name_prefix="t2",
        num_cpus=0.5,
    )
    client = ReplayClient([shard])
    writer = EpisodeWriter(0, chunk_length=None)
    assert all(ray.get([client.insert(c) for c in _episode(writer, 20, version=0)]))
    # 20 inserted x 2 = 40 sample budget around the offset; a big batch runs past the window
    got = [client.sample(16, timeout=0.2) for _ in range(6)]
    assert any(b is not None for b in got) and got[-1] is None
    s = client.stats()[0]
    assert s["samples"] <= 20 * 2 + 16 + 2.0 * 10 * 0.1 + 16
    ray.get(shard.close.remote())
    start = time.monotonic()
    assert client.sample(4, timeout=30) is None
    assert time.monotonic() - start < 5
    ray.kill(shard, no_restart=True)


def _coded_shard_and_twin(prefix: str, seed: int, snapshot_dir: str | None = None):
    """One lz4d-star32 shard actor sending coded batches, and a local shard with its seed (fed
    the same chunks, it draws and decodes the same batches)."""
    from distdrq.replay import ReplayShard

    codec = "lz4d-star32"
    cfg = ReplayConfig(capacity=10_000, nstep=3, discount=0.99, codec=codec, decode_on="learner")
    (shard,) = start_replay_shards(
        1,
        cfg,
        frame_stack=3,
        samples_per_insert=None,
        min_size_to_sample=10,
        name_prefix=prefix,
        snapshot_dir=snapshot_dir,
        seed=seed,
        num_cpus=0.5,
    )
    return shard, ReplayShard(10_000, 3, 0.99, 3, seed=seed, codec=codec)  # shard 0's seed


def test_coded_batches_cross_ray_and_decode_as_the_shard_would(ray_cluster):
    """replay.decode_on=learner: a shard actor sends its parts coded, through Ray's object
    store; the client decodes them on two threads into its buffer, and every batch equals, bit
    for bit, what a local shard fed the same chunks (same seed) samples and decodes itself."""
    from distdrq.replay.decoding import CodedBatch, DecoderPool

    codec, seed = "lz4d-star32", 5
    shard, local = _coded_shard_and_twin("t3", seed)
    writer = EpisodeWriter(0, chunk_length=25, codec=codec)
    for version in range(3):
        chunks = _episode(writer, 60, version=version)
        assert all(ray.get([shard.insert.remote(c) for c in chunks]))
        for chunk in chunks:
            local.insert(chunk)
    with DecoderPool(2) as pool:
        client = ReplayClient([shard], seed=0, decoder=pool)
        out = local.empty_batch(64)
        for _ in range(4):
            pending = client.request(64)
            part = ray.get(pending[0][1]).batch
            assert isinstance(part, CodedBatch) and len(part) == 64
            assert client.collect(pending, out) is out
            expected = local.sample(64)
            for name in ("obs", "next_obs", "action", "reward", "discount", "version"):
                np.testing.assert_array_equal(getattr(out, name), getattr(expected, name))
    assert client.decode_failures == 0
    ray.kill(shard, no_restart=True)


def test_learner_frame_cache_sends_each_frame_once_across_ray(ray_cluster, tmp_path):
    """replay.learner_cache_mb: through a real shard actor, the client keeps the coded frames it
    receives and later batches name them by key; every batch still equals what a local shard
    fed the same chunks decodes itself. A warm batch carries a fraction of a cold one's bytes.
    A cache that lost its frames costs one dropped batch (counted) and starts over; a shard
    restarted from its snapshot is a new incarnation: the client forgets its frames."""
    from distdrq.replay.decoding import DecoderPool

    codec, seed = "lz4d-star32", 11
    shard, local = _coded_shard_and_twin("t4", seed, str(tmp_path))
    writer = EpisodeWriter(0, chunk_length=25, codec=codec)

    def insert(version: int) -> None:
        chunks = _episode(writer, 40, version=version)
        assert all(ray.get([shard.insert.remote(c) for c in chunks]))
        for chunk in chunks:
            local.insert(chunk)

    def exact(batch) -> None:
        expected = local.sample(64)
        assert batch is not None
        for name in ("obs", "next_obs", "action", "reward", "discount", "version"):
            np.testing.assert_array_equal(getattr(batch, name), getattr(expected, name))

    for version in range(2):
        insert(version)
    with DecoderPool(2) as pool:
        client = ReplayClient([shard], seed=0, decoder=pool, cache_bytes=64 << 20)
        out = local.empty_batch(64)
        sizes = []
        for i in range(12):
            if i == 6:
                insert(2)  # new frames arrive: sent once, then named by key
            before = client.bytes_received
            exact(client.collect(client.request(64), out))
            sizes.append(client.bytes_received - before)
        assert client.cache_bytes > 0 and client.decode_failures == 0
        # 8x8 test frames: ~200 coded bytes against 24 bytes of tables per item, so the
        # tables are half of a cold batch (84x84 frames: ~5 kB; benchmarks/replay.py)
        assert max(sizes[3:6]) < 0.6 * sizes[0] and sizes[6] > max(sizes[3:6]), sizes

        client.caches[0].clear()  # lost without the shard knowing: one batch fails, then well
        assert client.collect(client.request(64), out) is None
        local.sample(64)
        assert client.decode_failures == 1
        exact(client.collect(client.request(64), out))

        assert ray.get(shard.snapshot.remote()) is not None
        old = client._incarnations[0]
        ray.kill(shard, no_restart=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                if ray.get(shard.stats.remote(), timeout=10)["restored_from"]:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < deadline, "shard did not come back"
            time.sleep(0.5)
        exact(client.collect(client.request(64), out))  # the restored shard's draws
        assert client._incarnations[0] != old and client.decode_failures == 1
    ray.kill(shard, no_restart=True)
