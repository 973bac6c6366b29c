"""Fuzzing the two doors into replay: the chunk validator (:meth:`ReplayShard.insert`) and the
snapshot reader (:func:`read_snapshot` then :meth:`ReplayShard.load_state_dict`).

Thousands of random mutations of valid chunks and snapshot files (bit flips, truncations,
length-field changes, field swaps, bad values) must each end in the documented error
(:class:`ChunkRejected`, :class:`SnapshotError`, :class:`ReplayStateError`) with the shard
exactly as it was, or be accepted with sampling bit-exact to an uncompressed reference holding
the accepted data: never a crash, a hang, another exception or a silent change.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest
from test_replay_codec_shard import GAMMA, PATHS, Episodes, assert_same, sample_on

from distdrq.replay import ReplayShard
from distdrq.replay.errors import ChunkRejected, ReplayStateError
from distdrq.replay.shard import disk_state
from distdrq.replay.snapshot import MAGIC, SnapshotError, read_snapshot, write_snapshot
from distdrq.types import Chunk

SHAPE = (3, 8, 8)
NSTEP, STACK = 3, 2
EXTREMES = [0, 1, -1, 255, 2**31 - 1, 2**32 - 1, 2**62, 2**63 - 1, -(2**63)]


# ---------------------------------------------------------------------------------------------
# chunks


class ChunkWorld:
    """A shard (of ``codec``) and an uncompressed reference fed the same data: a finished
    episode, an open one, and two chunks to mutate (the open episode's next one, whose frames
    refer to earlier ones, and a new episode's first)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        use = None if codec == "raw" else codec
        raw, coded = Episodes(SHAPE, seed=11), Episodes(SHAPE, seed=11)
        plans_raw = [raw.episode(1, 12, [5], True), raw.episode(2, 20, [6, 14], True)]
        plans = [
            coded.episode(1, 12, [5], True, use),
            coded.episode(2, 20, [6, 14], True, use),
        ]
        plans_raw.append(raw.episode(3, 5, [], True))
        plans.append(coded.episode(3, 5, [], True, use))
        self.setup = [plans[0][0], plans[0][1], plans[1][0]]
        self.setup_raw = [plans_raw[0][0], plans_raw[0][1], plans_raw[1][0]]
        # candidates: (chunk as sent, its raw frames)
        self.candidates = [
            (plans[1][1], plans_raw[1][1].frames),
            (plans[2][0], plans_raw[2][0].frames),
        ]
        self.reset()

    def reset(self) -> None:
        self.shard = ReplayShard(1000, NSTEP, GAMMA, STACK, seed=4, codec=self.codec)
        self.reference = ReplayShard(1000, NSTEP, GAMMA, STACK, seed=4)
        for chunk, raw in zip(self.setup, self.setup_raw, strict=True):
            self.shard.insert(chunk)
            self.reference.insert(raw)
        self.shard.sample(1, rng=np.random.default_rng(0))  # the lazy sampling index, built
        self.stored = self._stored()
        self.rng_state = self.shard._rng.bit_generator.state

    def _stored(self) -> tuple:
        stats = {k: v for k, v in self.shard.stats().items() if not k.startswith("rejected")}
        lengths = [(k, e.length, len(e.frames)) for k, e in self.shard._episodes.items()]
        return stats, lengths

    def assert_as_before(self, full: bool) -> None:
        assert self._stored() == self.stored
        assert self.shard._rng.bit_generator.state == self.rng_state
        if full:
            self.assert_same_samples()

    def assert_same_samples(self) -> None:
        for seed in (1, 2):
            b = self.reference.sample(64, rng=np.random.default_rng(seed))
            for path in PATHS:  # decoded by the shard, and by the learner's side
                assert_same(sample_on(path, self.shard, 64, rng=np.random.default_rng(seed)), b)
        for key, episode in self.shard._episodes.items():
            steps = np.arange(max(0, episode.length - NSTEP + 1))
            if len(steps):
                assert_same(self.shard._batch_at(key, steps), self.reference._batch_at(key, steps))


def _copy(chunk: Chunk) -> Chunk:
    """A copy whose arrays may be changed in place."""
    enc = chunk.encoded
    if enc is not None:
        enc = replace(enc, sizes=enc.sizes.copy())
    return replace(
        chunk,
        frames=chunk.frames.copy(),
        actions=chunk.actions.copy(),
        rewards=chunk.rewards.copy(),
        discounts=chunk.discounts.copy(),
        versions=chunk.versions.copy(),
        encoded=enc,
    )


def pick(rng: np.random.Generator, options: list):
    """One of ``options`` (of any types), at random."""
    return options[int(rng.integers(len(options)))]


def _flip(data: bytes, rng: np.random.Generator, count: int) -> bytes:
    buf = bytearray(data)
    for _ in range(count):
        if buf:
            buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
    return bytes(buf)


def _payload_mutation(enc, rng: np.random.Generator):
    data = bytes(enc.payload)
    kind = int(rng.integers(5))
    if kind == 0:
        data = _flip(data, rng, int(rng.integers(1, 9)))
    elif kind == 1:
        cut = int(rng.integers(len(data)))
        data = data[:cut] + data[cut + int(rng.integers(1, 8)) :]
    elif kind == 2:
        data = data + bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
    elif kind == 3:
        at = int(rng.integers(len(data)))
        value = bytes([pick(rng, [0, 0xFF, 0x7F, 0x80])]) * int(rng.integers(1, 5))
        data = data[:at] + value + data[at + len(value) :]
    else:  # swap two frames' bytes, sizes kept
        sizes = enc.sizes
        sane = sizes.dtype.kind in "iu" and len(sizes) > 2 and 0 < sizes.min() <= sizes.max()
        if sane and sizes.max() <= len(data) and int(sizes.sum()) == len(data):
            sizes = sizes.astype(np.int64)
            i, j = sorted(rng.choice(len(sizes), 2, replace=False).tolist())
            starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            blocks = [data[starts[k] : starts[k + 1]] for k in range(len(sizes))]
            blocks[i], blocks[j] = blocks[j], blocks[i]
            data = b"".join(blocks)
            sizes = sizes.copy()
            sizes[i], sizes[j] = sizes[j], sizes[i]
            return replace(enc, payload=data, sizes=sizes)
    return replace(enc, payload=data)


def _sizes_mutation(enc, rng: np.random.Generator):
    sizes = enc.sizes.astype(np.int64)  # (a copy, as int64 whatever an earlier mutation made)
    if not sizes.size:
        return enc
    kind = int(rng.integers(6))
    i = int(rng.integers(len(sizes)))
    if kind == 0:
        sizes[i] += int(rng.integers(-3, 4))
    elif kind == 1:
        sizes[i] = pick(rng, EXTREMES)
    elif kind == 2 and len(sizes) > 1:  # move bytes between two frames: the sum stays
        j = (i + 1) % len(sizes)
        delta = int(rng.integers(1, 5))
        sizes[i] += delta
        sizes[j] -= delta
    elif kind == 3:  # wraps around to the payload size
        sizes = sizes.astype(np.uint64)
        sizes[[i, (i + 1) % len(sizes)]] += np.uint64(2**63)
    elif kind == 4:
        sizes = sizes.astype(pick(rng, ["int32", "float64", "uint8", "int16"]))
    else:
        sizes = np.delete(sizes, i) if rng.random() < 0.5 else np.insert(sizes, i, sizes[i])
    return replace(enc, sizes=sizes)


def _encoded_mutation(enc, rng: np.random.Generator, other):
    kind = int(rng.integers(7))
    if kind == 0 and len(enc.frame_shape) == 3:
        c, h, w = enc.frame_shape
        shape = pick(
            rng, [(c, h, w + 1), (c + 1, h, w), (0, h, w), (c, h), (c, 10**6, 10**6), (c, h, -w)]
        )
        return replace(enc, frame_shape=shape)
    if kind == 1 and isinstance(enc.first_frame, int):
        return replace(enc, first_frame=pick(rng, [enc.first_frame + 1, enc.first_frame - 1, -1]))
    if kind == 2:
        return replace(enc, codec=pick(rng, ["raw", "lz4-tree", "lz4d-star32", "lz4-key16"]))
    if kind == 3:
        return replace(enc, checksum=pick(rng, [None, (enc.checksum or 0) ^ 1, 0]))
    if kind == 4:  # another chunk's encoded frames
        return other
    if kind == 5:
        return replace(enc, first_frame=None)
    return replace(enc, payload=np.frombuffer(bytes(enc.payload), np.uint8))  # still valid


def _values_mutation(chunk: Chunk, rng: np.random.Generator) -> Chunk:
    name = pick(rng, ["actions", "rewards", "discounts"])
    array = getattr(chunk, name)
    kind = int(rng.integers(5))
    if not (isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.ndim):
        return chunk  # an earlier mutation put something else there
    if kind == 0 and array.size:
        array.reshape(-1)[int(rng.integers(array.size))] = pick(rng, [np.nan, np.inf, -np.inf])
    elif kind == 1 and array.size and name == "discounts":
        array[int(rng.integers(array.size))] = pick(rng, [-0.5, 1.0001, 7.0, -0.0, 1.0, 0.0])
    elif kind == 2:
        return replace(chunk, **{name: array.astype(np.float64)})
    elif kind == 3:
        return replace(chunk, **{name: array[:-1]})
    elif kind == 4 and array.size:  # a new valid value
        array.reshape(-1)[int(rng.integers(array.size))] = float(rng.uniform(0, 1))
    return chunk


def _chunk_mutation(chunk: Chunk, rng: np.random.Generator, other: Chunk) -> tuple[Chunk, bool]:
    """One random mutation; also whether it re-stamped the checksum of changed bytes
    (a writer that checksums bad data: only decodability can be required then)."""
    kind = int(rng.integers(12))
    enc = chunk.encoded
    if enc is not None and kind <= 2:
        return replace(chunk, encoded=_payload_mutation(enc, rng)), False
    if enc is not None and kind == 3:
        return replace(chunk, encoded=_sizes_mutation(enc, rng)), False
    if enc is not None and kind == 4:
        return replace(chunk, encoded=_encoded_mutation(enc, rng, other.encoded)), False
    if enc is not None and kind == 5:  # crafted: damage, then a checksum that matches
        bad = pick(rng, [_payload_mutation, _sizes_mutation])(enc, rng)
        if bad.sizes.dtype.kind in "iu" and bad.sizes.size and bad.sizes.max() <= 2**40:
            return replace(chunk, encoded=bad.with_checksum()), True
        return replace(chunk, encoded=bad), False
    if kind <= 6:
        return _values_mutation(chunk, rng), False
    if kind == 7:
        field = pick(rng, ["episode_key", "first_step", "last", "versions"])
        value = pick(
            rng,
            {
                "episode_key": [1, 2, 3, 99, -1, 2**64, "x", True, np.int64(3)],
                "first_step": [chunk.first_step + 1, chunk.first_step - 1, 2**40, 1.0],
                "last": [np.array([True, False]), "yes", 1, False, True],
                "versions": [chunk.versions.astype(np.float64), chunk.versions[:-1]],
            }[field],
        )
        return replace(chunk, **{field: value}), False
    if kind == 8:  # field swaps
        swap = int(rng.integers(3))
        if swap == 0:
            return replace(chunk, rewards=chunk.discounts, discounts=chunk.rewards), False
        if swap == 1:
            return replace(chunk, actions=chunk.frames, frames=chunk.actions), False
        return replace(chunk, encoded=None if enc is not None else other.encoded), False
    frames_ok = isinstance(chunk.frames, np.ndarray) and chunk.frames.ndim == 4
    if kind == 9 and frames_ok and chunk.frames.dtype == np.uint8 and chunk.frames.size:
        chunk.frames.reshape(-1)[int(rng.integers(chunk.frames.size))] ^= 0xFF  # valid pixels
        return chunk, False
    if kind == 10 and frames_ok:
        frames = chunk.frames
        options = [frames[:-1], frames.astype(np.int16), frames[:, :, :-1], frames[None]]
        return replace(chunk, frames=options[int(rng.integers(len(options)))]), False
    return chunk, False  # unchanged: must go in


def _expected_frames(world: ChunkWorld, sent: Chunk, raw_frames: np.ndarray) -> np.ndarray:
    """The frames the shard must hold for an accepted chunk: those sent raw, else (encoded,
    checksum intact) the original ones."""
    if world.codec == "raw" or sent.encoded is None:
        return sent.frames
    return raw_frames


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("codec", "iterations"), [("raw", 1500), ("lz4d-star32", 1500), ("lz4-tree", 1000)]
)
def test_fuzz_chunk_validator(codec, iterations):
    world = ChunkWorld(codec)
    rng = np.random.default_rng(2024)
    outcomes = {"rejected": 0, "accepted": 0, "crafted": 0}
    start = time.perf_counter()
    for it in range(iterations):
        index = int(rng.integers(2))
        original, raw_frames = world.candidates[index]
        other = world.candidates[1 - index][0]
        sent, crafted = _copy(original), False
        for _ in range(int(rng.integers(1, 4))):
            sent, again = _chunk_mutation(sent, rng, other)
            crafted |= again
        try:
            world.shard.insert(sent)
        except ChunkRejected as exc:
            assert "\n" not in str(exc)
            outcomes["rejected"] += 1
            world.assert_as_before(full=it % 25 == 0)
            continue
        if crafted:  # bytes a writer checksummed: they decode, whatever they hold
            outcomes["crafted"] += 1
            for episode in world.shard._episodes.values():
                episode.frames.gather(np.arange(len(episode.frames)))
            world.shard.sample(64)
            world.reset()
            continue
        outcomes["accepted"] += 1
        reference_chunk = Chunk(
            int(sent.episode_key),
            int(sent.first_step),
            _expected_frames(world, sent, raw_frames),
            sent.actions,
            sent.rewards,
            sent.discounts,
            sent.versions,
            bool(sent.last),
        )
        world.reference.insert(reference_chunk)  # what went in must be valid raw data too
        world.assert_same_samples()
        world.reset()
    assert outcomes["rejected"] > iterations // 3 and outcomes["accepted"] > 20, outcomes
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------------------------------
# snapshots


def _populated(codec: str, seed: int, lengths=(15, 9, 22)) -> ReplayShard:
    eps = Episodes(SHAPE, seed=seed)
    shard = ReplayShard(1000, NSTEP, GAMMA, STACK, seed=seed, codec=codec)
    for key, length in enumerate(lengths):
        use = None if codec == "raw" else codec
        chunks = eps.episode(key + 10, length, [4], last=key < 2, codec=use)
        for chunk in chunks:
            shard.insert(chunk)
    shard.sample(3)
    return shard


def _fix_checksums(data: bytearray) -> bytes:
    """Re-stamp the header and file checksums of a (damaged) format 2 snapshot."""
    if len(data) >= 16 and data[:8] == MAGIC:
        (size,) = struct.unpack("<I", data[12:16])
        if 16 + size + 4 <= len(data) - 8:
            data[16 + size : 20 + size] = struct.pack("<I", zlib.crc32(data[16 : 16 + size]))
    if len(data) >= 8:
        data[-8:-4] = struct.pack("<I", zlib.crc32(data[:-8]))
    return bytes(data)


def _byte_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = int(rng.integers(6))
    if kind == 0:
        return _flip(data, rng, int(rng.integers(1, 17)))
    if kind == 1:
        return data[: int(rng.integers(len(data)))]
    if kind == 2:  # bytes inserted or removed
        at = int(rng.integers(len(data)))
        if rng.random() < 0.5:
            return (
                data[:at]
                + bytes(rng.integers(0, 256, int(rng.integers(1, 9)), np.uint8))
                + data[at:]
            )
        return data[:at] + data[at + int(rng.integers(1, 9)) :]
    if kind == 3:  # a length field (msgpack: big-endian) set to an extreme value
        width = int(rng.choice([1, 2, 4, 8]))
        at = int(rng.integers(max(1, len(data) - width)))
        value = pick(rng, [0, 1, len(data), 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1])
        buf[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
        return bytes(buf)
    if kind == 4:  # two byte ranges swapped
        n = int(rng.integers(1, 33))
        i, j = sorted(rng.integers(0, max(1, len(data) - n), 2).tolist())
        if j - i >= n:
            buf[i : i + n], buf[j : j + n] = data[j : j + n], data[i : i + n]
        return bytes(buf)
    at = int(rng.integers(len(data)))
    buf[at] = pick(rng, [0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xDD, 0xDF, 0xC6, 0xC9])
    return bytes(buf)


def _state_mutation(state: dict, rng: np.random.Generator) -> dict:
    """A change to the decoded state, written back with valid checksums."""
    state = dict(state)
    names = sorted(state)
    name = names[int(rng.integers(len(names)))]
    value = state[name]
    kind = int(rng.integers(8))
    if kind == 0:  # two fields swapped
        other = names[int(rng.integers(len(names)))]
        state[name], state[other] = state[other], value
    elif kind == 1:
        del state[name]
    elif kind == 2 and isinstance(value, np.ndarray) and value.size:
        array = np.array(value, copy=True)
        flat = array.reshape(-1)
        i = int(rng.integers(flat.size))
        if array.dtype.kind == "f":
            flat[i] = pick(rng, [np.nan, np.inf, -1.0, 2.0, 0.5])
        elif array.dtype.kind in "iu":
            flat[i] = np.array(pick(rng, EXTREMES)).astype(array.dtype)
        elif array.dtype.kind == "b":
            flat[i] = not flat[i]
        state[name] = array
    elif kind == 3 and isinstance(value, np.ndarray):
        options = [value[:-1], value[::-1], value.reshape(-1)]
        options += [value.astype(t) for t in ("float64", "int32", "uint8", "bool")]
        state[name] = options[int(rng.integers(len(options)))]
    elif kind == 4:
        state[name] = pick(rng, [None, "x", 3, -1, [1, 2], [3, 8, 8], b"\x00"])
    elif kind == 5:
        field = pick(rng, ["rewards", "frames.sizes", "x"])
        state[f"episode.{int(rng.integers(5))}.{field}"] = np.zeros(3, np.float32)
    elif kind == 6 and name.endswith("frames.sizes"):  # sizes still adding up
        sizes = np.array(value, copy=True)
        if len(sizes) > 1:
            sizes[0] += 1
            sizes[1] -= 1
        state[name] = sizes
    return state


def _reference_of(shard: ReplayShard) -> ReplayShard:
    """An uncompressed shard holding what ``shard`` holds (decoded), with its generator."""
    ref = ReplayShard(10**9, NSTEP, GAMMA, STACK)
    for key, episode in shard._episodes.items():
        arrays = episode.arrays()
        frames = episode.frames.gather(np.arange(len(episode.frames)))
        ref.insert(
            Chunk(
                key,
                0,
                frames,
                arrays["actions"],
                arrays["rewards"],
                arrays["discounts"],
                arrays["versions"].astype(np.int64),
                episode.ended,
            )
        )
    ref._rng.bit_generator.state = shard._rng.bit_generator.state
    return ref


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("codec", "disk", "iterations"),
    [("lz4d-star32", "stored", 1200), ("raw", "stored", 600), ("lz4d-star32", "cm", 400)],
)
def test_fuzz_snapshot_reader(tmp_path, monkeypatch, codec, disk, iterations):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # speed: durability is not tested here
    source = _populated(codec, seed=3)
    state = disk_state(source.state_dict(), disk)
    path = tmp_path / "s.ddrq"
    write_snapshot(path, state, {"transitions": len(source)})
    good = path.read_bytes()
    victim = _populated(codec, seed=8, lengths=(7, 30))
    victim_state = victim.state_dict()
    kept = (len(victim), victim._rng.bit_generator.state)
    probe = victim.sample(64, rng=np.random.default_rng(0))
    rng = np.random.default_rng(7)
    outcomes = {"read_error": 0, "load_error": 0, "loaded": 0}
    start = time.perf_counter()
    for it in range(iterations):
        mode = int(rng.integers(3))  # damage | damage with re-stamped checksums | crafted state
        if mode == 2:
            write_snapshot(path, _state_mutation(state, rng))
        else:
            data = good
            for _ in range(int(rng.integers(1, 4))):
                data = _byte_mutation(data, rng)
            path.write_bytes(_fix_checksums(bytearray(data)) if mode == 1 else data)
        try:
            loaded = read_snapshot(path)
        except SnapshotError as exc:
            assert "\n" not in str(exc)
            outcomes["read_error"] += 1
            continue
        if mode == 0:  # undetected damage must not exist: the bytes were not changed
            assert path.read_bytes() == good
        try:
            victim.load_state_dict(loaded, threads=1)
        except ReplayStateError as exc:
            assert "\n" not in str(exc)
            outcomes["load_error"] += 1
            assert (len(victim), victim._rng.bit_generator.state) == kept
            if it % 20 == 0:
                assert_same(victim.sample(64, rng=np.random.default_rng(0)), probe)
            continue
        outcomes["loaded"] += 1
        reference = _reference_of(victim)
        for seed in (None, 5):
            rngs = [np.random.default_rng(seed) if seed else None for _ in range(2)]
            if reference.num_sampleable:
                assert_same(victim.sample(32, rng=rngs[0]), reference.sample(32, rng=rngs[1]))
        victim.load_state_dict(victim_state)
        kept = (len(victim), victim._rng.bit_generator.state)
    assert outcomes["read_error"] > iterations // 4 and outcomes["load_error"] > 10, outcomes
    assert time.perf_counter() - start < 30
