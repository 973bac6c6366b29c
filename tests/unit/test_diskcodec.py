"""Disk codec (context-modelling coder): lossless on any frames, smaller than the replay codec on
real frames, damage detected; shard states coded for disk restore bit-exactly into any codec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replay_codec_shard import FIELDS, GAMMA, Episodes, assert_same, moving_frames

import distdrq.replay.shard as shard_mod
from distdrq.replay import ReplayShard
from distdrq.replay.codec import FrameEncoder
from distdrq.replay.diskcodec import METHOD_CM, METHOD_STORED, decode_frames, encode_frames
from distdrq.replay.shard import disk_state
from distdrq.replay.snapshot import SnapshotStore, read_snapshot, write_snapshot


@st.composite
def frame_stacks(draw):
    n = draw(st.integers(1, 5))
    c = draw(st.sampled_from([1, 3, 4]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["noise", "moving", "flat", "few"]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    if kind == "moving":
        return moving_frames(n, (c, h, w), seed)
    if kind == "flat":
        return np.full((n, c, h, w), draw(st.integers(0, 255)), np.uint8)
    values = np.array(draw(st.lists(st.integers(0, 255), min_size=1, max_size=3)), np.uint8)
    return values[rng.integers(0, len(values), (n, c, h, w))]


@settings(max_examples=60, deadline=None)
@given(frames=frame_stacks())
def test_round_trip_is_exact(frames):
    blob = encode_frames(frames)
    assert blob.dtype == np.uint8 and blob.ndim == 1
    back = decode_frames(blob)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)
    np.testing.assert_array_equal(decode_frames(blob.tobytes()), frames)  # bytes work too
    assert blob.size <= frames.size + 32  # never expands beyond the header (stored fallback)


def test_empty_and_single_frames():
    for shape in [(0, 3, 8, 8), (1, 3, 1, 1), (1, 1, 84, 84)]:
        frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(decode_frames(encode_frames(frames)), frames)


def test_noise_is_stored_and_structure_is_modelled():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    assert encode_frames(noise)[4] == METHOD_STORED
    yy, xx = np.mgrid[:32, :32]
    board = np.stack([(((xx + t) // 3 + yy // 3) % 2) * 120 + 60 for t in range(10)])
    scrolling = np.repeat(board[:, None], 3, axis=1).astype(np.uint8)  # no noise
    blob = encode_frames(scrolling)
    assert blob[4] == METHOD_CM
    assert blob.size < scrolling.nbytes / 20


@pytest.fixture(scope="module")
def walker_frames() -> np.ndarray:
    """60 real frames of walker_walk at 84x84 (random actions, default rendering)."""
    from distdrq.config import EnvConfig
    from distdrq.envs.dmc import make_env

    env = make_env(EnvConfig(task="walker_walk"), seed=0)
    rng = np.random.default_rng(0)
    frames = [env.reset().frame]
    for _ in range(59):
        frames.append(env.step(rng.uniform(-1, 1, env.action_dim)).frame)
    env.close()
    return np.stack(frames)


def test_real_frames_smaller_than_the_replay_codec(walker_frames):
    blob = encode_frames(walker_frames)
    np.testing.assert_array_equal(decode_frames(blob), walker_frames)
    lz4 = FrameEncoder("lz4-tree", walker_frames.shape[1:]).encode(walker_frames)
    assert blob.size < 0.75 * len(bytes(lz4.payload))


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip", "magic", "version", "shape"],
)
def test_damage_is_a_clear_error(walker_frames, damage):
    blob = encode_frames(walker_frames[:8]).copy()
    if damage == "truncate":
        blob = blob[: blob.size // 2]
    elif damage == "flip":
        blob[blob.size // 2] ^= 0x10
    elif damage == "magic":
        blob[0] = ord("X")
    elif damage == "version":
        blob[3] = 99
    else:
        blob[9] += 1  # frame count: the body no longer decodes to these frames
    with pytest.raises(ValueError, match="disk-coded frames|bad header") as info:
        decode_frames(blob)
    assert "\n" not in str(info.value)


def fill(codec: str, shape=(3, 12, 12), seed=6) -> tuple[ReplayShard, Episodes]:
    eps = Episodes(shape, seed=seed)
    shard = ReplayShard(70, 3, GAMMA, 3, seed=7, codec=codec)
    for key, length in ((1, 30), (2, 25), (3, 22)):
        for chunk in eps.episode(key, length, [5, 11], last=True):
            shard.insert(chunk)
    return shard, eps


@pytest.mark.parametrize("codec", ["lz4d-star32", "lz4-tree", "raw"])
def test_disk_state_restores_bit_exactly_into_any_codec(tmp_path, codec):
    shard, eps = fill(codec)
    unfinished = eps.episode(4, 30, [9, 20], last=True)
    for chunk in unfinished[:2]:
        shard.insert(chunk)
    state = disk_state(shard.state_dict(), "cm")
    frames = [k for k in state if ".frames" in k]
    assert frames and all(k.endswith(".frames.cm") for k in frames)
    stored = disk_state(shard.state_dict(), "stored")
    assert stored.keys() == shard.state_dict().keys()
    path = tmp_path / "s.ddrq"
    write_snapshot(path, state)
    # episodes are restored on several threads (None: one per CPU) or one
    for target, threads in [("lz4-tree", 1), ("raw", 3), ("lz4-key16", None), ("lz4d-star32", 2)]:
        restored = ReplayShard(70, 3, GAMMA, 3, seed=99, codec=target)
        restored.load_state_dict(read_snapshot(path), threads=threads)
        assert list(restored._episodes) == list(shard._episodes)
        a = shard.sample(48, rng=np.random.default_rng(5))
        b = restored.sample(48, rng=np.random.default_rng(5))
        assert_same(a, b)
        for chunk in unfinished[2:]:  # the unfinished episode goes on after the restore
            restored.insert(chunk)
        assert restored._episodes[4].ended
    with pytest.raises(ValueError, match="unknown disk codec 'zip'; choose one of cm, stored"):
        disk_state(shard.state_dict(), "zip")
    assert set(FIELDS) <= set(vars(a))


def test_snapshot_store_sets_aside_a_state_that_does_not_load(tmp_path):
    shard, _ = fill("lz4-tree")
    good = disk_state(shard.state_dict(), "cm")
    bad = dict(good)
    name = next(k for k in bad if k.endswith(".frames.cm"))
    blob = bad[name].copy()
    blob[blob.size // 2] ^= 0xFF  # a coded-frames error inside an otherwise intact file
    bad[name] = blob
    store = SnapshotStore(tmp_path)
    store.save(good, 1)
    store.save(bad, 2)
    messages: list[str] = []
    target = ReplayShard(70, 3, GAMMA, 3, codec="lz4-tree")
    # the damaged episode fails on a worker thread: the error still reaches load_latest
    found = store.load_latest(
        warn=messages.append, restore=lambda state: target.load_state_dict(state, threads=3)
    )
    assert found is not None and found[0].name == "snapshot_000000000001.ddrq"
    assert len(messages) == 1 and "does not load" in messages[0] and "corrupt" in messages[0]
    assert (tmp_path / "snapshot_000000000002.ddrq.broken").exists()
    assert_same(
        shard.sample(32, rng=np.random.default_rng(1)),
        target.sample(32, rng=np.random.default_rng(1)),
    )


@pytest.mark.parametrize("codec", ["lz4d-star32", "lz4-tree", "raw"])
def test_snapshots_reuse_coded_episodes_they_already_hold(tmp_path, codec, monkeypatch):
    shard, eps = fill(codec)
    unfinished = eps.episode(4, 30, [9, 20], last=True)
    shard.insert(unfinished[0])
    path = tmp_path / "first.ddrq"
    write_snapshot(path, disk_state(shard.state_dict(), "cm"))
    previous = read_snapshot(path)  # as the replay server reads its newest snapshot back

    coded: list[tuple[int, ...]] = []
    real = shard_mod.encode_frames
    monkeypatch.setattr(
        shard_mod, "encode_frames", lambda frames: coded.append(frames.shape) or real(frames)
    )
    for chunk in unfinished[1:]:
        shard.insert(chunk)
    state = disk_state(shard.state_dict(), "cm", previous)
    assert coded == [(31, 3, 12, 12)]  # only the episode that grew since the first snapshot
    old_keys = previous["episode_keys"].tolist()
    for i, key in enumerate(state["episode_keys"].tolist()[:-1]):
        old = previous[f"episode.{old_keys.index(key)}.frames.cm"]
        np.testing.assert_array_equal(state[f"episode.{i}.frames.cm"], old)
    # a blob that does not hold the episode's frames (another run's key 2) is not reused
    other, _ = fill(codec, seed=99)
    coded.clear()
    disk_state(other.state_dict(), "cm", state)
    assert len(coded) == other.num_episodes
    restored = ReplayShard(70, 3, GAMMA, 3, codec=codec)
    write_snapshot(tmp_path / "second.ddrq", state)
    restored.load_state_dict(read_snapshot(tmp_path / "second.ddrq"))
    assert_same(
        shard.sample(64, rng=np.random.default_rng(4)),
        restored.sample(64, rng=np.random.default_rng(4)),
    )


@pytest.mark.parametrize("codec", ["lz4d-star32", "raw"])
def test_a_quick_snapshot_codes_nothing_and_the_next_one_codes_what_it_left(
    tmp_path, codec, monkeypatch
):
    """Ctrl-C's snapshot (``code_new=False``): reused blobs stay, new episodes keep the replay
    codec's bytes; it restores bit-exactly, and the next full snapshot codes just those."""
    shard, eps = fill(codec)
    unfinished = eps.episode(4, 30, [9, 20], last=True)
    shard.insert(unfinished[0])
    write_snapshot(tmp_path / "first.ddrq", disk_state(shard.state_dict(), "cm"))
    previous = read_snapshot(tmp_path / "first.ddrq")
    for chunk in unfinished[1:]:
        shard.insert(chunk)

    coded: list[tuple[int, ...]] = []
    real = shard_mod.encode_frames
    monkeypatch.setattr(
        shard_mod, "encode_frames", lambda frames: coded.append(frames.shape) or real(frames)
    )
    quick = disk_state(shard.state_dict(), "cm", previous, code_new=False)
    assert coded == []
    n = len(quick["episode_keys"])
    assert [f"episode.{i}.frames.cm" in quick for i in range(n)] == [True] * (n - 1) + [False]
    write_snapshot(tmp_path / "quick.ddrq", quick)
    restored = ReplayShard(70, 3, GAMMA, 3, codec=codec)
    restored.load_state_dict(read_snapshot(tmp_path / "quick.ddrq"))
    assert_same(
        shard.sample(64, rng=np.random.default_rng(4)),
        restored.sample(64, rng=np.random.default_rng(4)),
    )
    # a shard of another codec cannot take the replay-codec bytes: a clear error, not garbage
    other = "raw" if codec != "raw" else "lz4-tree"
    with pytest.raises(ValueError, match="this shard stores"):
        ReplayShard(70, 3, GAMMA, 3, codec=other).load_state_dict(
            read_snapshot(tmp_path / "quick.ddrq")
        )
    full = disk_state(restored.state_dict(), "cm", read_snapshot(tmp_path / "quick.ddrq"))
    assert coded == [(31, 3, 12, 12)]  # the episode the quick one left in the replay codec
    assert all(f"episode.{i}.frames.cm" in full for i in range(n))
