"""Nothing lost, nothing poisoned: every insert path validates before it changes anything,
rejections are counted and leave the shard as it was, restores are atomic, broken snapshots
and checkpoints are skipped and reported, readers never allocate what the file cannot justify."""

from __future__ import annotations

import pickle
import struct
import tracemalloc
import zipfile
import zlib
from dataclasses import replace

import lz4.frame
import msgpack
import numpy as np
import pytest
import torch
from test_replay_codec_shard import GAMMA, PATHS, Episodes, assert_same, sample_on

from distdrq.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from distdrq.replay import EpisodeWriter, ReplayShard
from distdrq.replay.diskcodec import _HEADER, MAGIC, METHOD_CM, decode_frames, encode_frames
from distdrq.replay.errors import REJECT_REASONS, ChunkRejected, ReplayStateError
from distdrq.replay.shard import disk_state, state_counts
from distdrq.replay.snapshot import (
    SnapshotError,
    SnapshotStore,
    read_snapshot,
    read_snapshot_info,
    write_snapshot,
)

SHAPE = (3, 10, 10)
CODECS = ["raw", "lz4d-star32", "lz4-tree"]


def storage(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.startswith("rejected_")}


def fingerprint(shard: ReplayShard) -> tuple:
    """What a rejected chunk must leave as it was: sizes, episodes, generator and samples."""
    state = shard._rng.bit_generator.state
    batch = shard.sample(64, rng=np.random.default_rng(5)) if shard.num_sampleable else None
    lengths = [(k, e.length, e.ended, len(e.frames)) for k, e in shard._episodes.items()]
    return storage(shard.stats()), lengths, state, batch


def assert_unchanged(shard: ReplayShard, before: tuple) -> None:
    after = fingerprint(shard)
    assert after[:3] == before[:3]
    if before[3] is not None:
        assert_same(after[3], before[3])


def filled(codec: str, seed: int = 0) -> tuple[ReplayShard, list]:
    """A shard with two finished episodes and one open one; returns the open one's unsent chunks."""
    eps = Episodes(SHAPE, seed=seed)
    use = None if codec == "raw" else codec
    shard = ReplayShard(1000, 3, GAMMA, 3, seed=1, codec=codec)
    for key in (1, 2):
        for chunk in eps.episode(key, 20, [7], last=True, codec=use):
            shard.insert(chunk)
    chunks = eps.episode(3, 30, [10, 20], last=True, codec=use)
    shard.insert(chunks[0])
    return shard, chunks[1:]


# ---------------------------------------------------------------------------------------------
# insert


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("rewards", np.nan, "rewards hold a non-finite value"),
        ("rewards", np.inf, "rewards hold a non-finite value"),
        ("actions", -np.inf, "actions hold a non-finite value"),
        ("discounts", np.nan, r"discounts must lie in \[0, 1\]"),
        ("discounts", 1.5, r"discounts must lie in \[0, 1\]"),
        ("discounts", -0.25, r"discounts must lie in \[0, 1\]"),
    ],
)
def test_non_finite_values_are_rejected_and_change_nothing(codec, field, value, match):
    shard, (chunk, _) = filled(codec)
    before = fingerprint(shard)
    bad = np.array(getattr(chunk, field), copy=True)
    bad.reshape(len(bad), -1)[4, 0] = value
    with pytest.raises(ChunkRejected, match=match) as info:
        shard.insert(replace(chunk, **{field: bad}))
    assert info.value.reason == "values" and "\n" not in str(info.value)
    assert "at step 14" in str(info.value)  # counted within the episode
    assert_unchanged(shard, before)
    stats = shard.stats()
    assert stats["rejected_chunks"] == stats["rejected_chunks_values"] == 1
    assert stats["rejected_transitions"] == chunk.num_transitions
    shard.insert(chunk)  # the repaired chunk goes in


@pytest.mark.parametrize("codec", ["lz4d-star32", "lz4-tree"])
def test_damaged_payload_is_rejected_and_sampling_goes_on(codec):
    """The tester's case: payload bytes damaged in transit, sizes consistent."""
    shard, (chunk, rest) = filled(codec)
    before = fingerprint(shard)
    payload = bytearray(chunk.encoded.payload)
    payload[len(payload) // 2] ^= 0x10
    damaged = replace(chunk, encoded=replace(chunk.encoded, payload=bytes(payload)))
    with pytest.raises(ChunkRejected, match="damaged .checksum mismatch.") as info:
        shard.insert(damaged)
    assert info.value.reason == "checksum"
    assert_unchanged(shard, before)
    for _ in range(3):
        shard.sample(32)


@pytest.mark.parametrize("codec", ["lz4d-star32", "lz4-tree"])
def test_undecodable_frames_are_rejected_despite_a_valid_checksum(codec):
    """A writer that checksums bytes that do not decode (a later frame refers to earlier ones:
    nothing may reach sampling that a sample could not decode)."""
    shard, (chunk, rest) = filled(codec)
    before = fingerprint(shard)
    enc = chunk.encoded
    sizes = enc.sizes.copy()
    cut = int(sizes[:3].sum())
    payload = enc.payload[:cut] + b"\xff" * int(sizes[3]) + enc.payload[cut + int(sizes[3]) :]
    broken = replace(enc, payload=payload).with_checksum()
    with pytest.raises(ChunkRejected, match=f"encoded frame {enc.first_frame + 3} does not decode"):
        shard.insert(replace(chunk, encoded=broken))
    assert shard.stats()["rejected_chunks_undecodable"] == 1
    assert_unchanged(shard, before)


def test_encoded_frames_need_a_checksum():
    shard, (chunk, _) = filled("lz4d-star32")
    with pytest.raises(ChunkRejected, match="carry no checksum") as info:
        shard.insert(replace(chunk, encoded=replace(chunk.encoded, checksum=None)))
    assert info.value.reason == "format"
    assert shard.insert(replace(chunk, encoded=chunk.encoded.with_checksum())) is None


@pytest.mark.parametrize(
    "sizes",
    [
        # each adds up to the payload size, modulo 2**64
        lambda s, n: np.array([2**62] * 4 + [1] * (len(s) - 5) + [n - len(s) + 5], np.int64),
        lambda s, n: np.array([2**64 - 5, n + 5 - (len(s) - 2)] + [1] * (len(s) - 2), np.uint64),
        lambda s, n: np.concatenate([[-3, s[0] + s[1] + 3], s[2:]]).astype(np.int64),
        lambda s, n: s.astype(np.float64),
    ],
)
def test_crafted_sizes_are_rejected(sizes):
    shard, (chunk, _) = filled("lz4d-star32")
    before = fingerprint(shard)
    enc = chunk.encoded
    bad = replace(enc, sizes=sizes(enc.sizes, len(enc.payload)))
    with pytest.raises(ChunkRejected) as info:
        shard.insert(replace(chunk, encoded=bad))
    assert info.value.reason == "format"
    assert_unchanged(shard, before)


def test_crafted_frame_shape_is_rejected_before_any_allocation():
    shard = ReplayShard(100, 1, GAMMA, 1, codec="lz4d-star32")
    (chunk,) = Episodes(SHAPE, seed=3).episode(1, 5, [], last=True, codec="lz4d-star32")
    for shape in ((3, 100_000, 100_000), (0, 10, 10), (3, 10), ("3", 10, 10)):
        tracemalloc.start()
        with pytest.raises(ChunkRejected):
            shard.insert(replace(chunk, encoded=replace(chunk.encoded, frame_shape=shape)))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20
    assert len(shard) == 0 and shard.stats()["rejected_chunks_format"] == 4


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("codec", CODECS)
def test_a_rejected_chunk_truncates_its_episode_without_a_gap(codec, path):
    """Chunk 2 of 3 rejected: the episode keeps its first chunk (sampleable as it was), chunk 3
    does not fit (order), the repaired chunk 2 and then chunk 3 still can go in."""
    shard, (second, third) = filled(codec)
    reference, _ = filled(codec)
    bad = replace(second, rewards=np.full_like(second.rewards, np.nan))
    with pytest.raises(ChunkRejected):
        shard.insert(bad)
    with pytest.raises(ChunkRejected, match="chunk starts at step 20, expected step 10") as info:
        shard.insert(third)
    assert info.value.reason == "order"
    assert shard._episodes[3].length == 10 and not shard._episodes[3].ended
    for seed in (3, None):  # a given generator, then each shard's own
        rngs = [np.random.default_rng(seed) if seed else None for _ in range(2)]
        assert_same(sample_on(path, shard, 128, rngs[0]), reference.sample(128, rng=rngs[1]))
    stats = shard.stats()
    assert (stats["rejected_chunks"], stats["rejected_chunks_order"]) == (2, 1)
    assert stats["rejected_transitions"] == 20
    for chunk in (second, third):
        shard.insert(chunk)
        reference.insert(chunk)
    assert_same(sample_on(path, shard, 128), reference.sample(128))


def test_writer_abandons_an_episode_after_a_rejection():
    writer = EpisodeWriter(1, chunk_length=4, codec="lz4d-star32")
    frame = np.zeros(SHAPE, np.uint8)
    writer.begin(frame)
    chunks = [writer.append(np.zeros(2), 0.0, 1.0, frame, False) for _ in range(4)]
    assert chunks[-1] is not None and chunks[-1].encoded.checksum is not None
    writer.abandon_episode()
    assert all(writer.append(np.zeros(2), 0.0, 1.0, frame, t == 6) is None for t in range(7))
    assert writer.episode_key is None and writer.flush() is None
    writer.begin(frame)
    chunk = writer.append(np.zeros(2), 1.0, 1.0, frame, True)
    assert chunk is not None and chunk.first_step == 0 and chunk.episode_key == 1 << 32 | 1


def test_rejections_are_counted_by_reason_and_survive_pickling():
    shard, (chunk, _) = filled("raw")
    stats = shard.stats()
    assert {f"rejected_chunks_{r}" for r in REJECT_REASONS} <= set(stats)
    for bad, reason in (
        (replace(chunk, first_step=99), "order"),
        (replace(chunk, versions=chunk.versions.astype(np.float64)), "format"),
        (replace(chunk, episode_key=2), "ended"),
        (replace(chunk, episode_key=2**64), "format"),
        (replace(chunk, last=np.array([True, False])), "format"),
        ("not a chunk", "format"),
    ):
        with pytest.raises(ChunkRejected) as info:
            shard.insert(bad)
        assert info.value.reason == reason
        again = pickle.loads(pickle.dumps(info.value))
        assert (again.reason, str(again), again.episode_key) == (
            reason,
            str(info.value),
            info.value.episode_key,
        )
    assert shard.stats()["rejected_chunks"] == 6


# ---------------------------------------------------------------------------------------------
# restore


def _inconsistent(state: dict) -> dict:
    """The tester's snapshot: one episode with one reward too few."""
    state = dict(state)
    state["episode.1.rewards"] = state["episode.1.rewards"][:-1]
    return state


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "damage",
    [
        _inconsistent,
        lambda s: {**s, "episode.0.rewards": np.where(np.arange(20) == 3, np.inf, 0.0)},
        lambda s: {**s, "episode.0.discounts": np.full(20, 2.0, np.float32)},
        lambda s: {**s, "episode_keys": np.array([1, 1, 3])},
        lambda s: {**s, "evicted_keys": np.array([2])},
        lambda s: {**s, "rng_state": np.arange(7)},
        lambda s: {**s, "episode.7.rewards": np.zeros(3, np.float32)},
        lambda s: {k: v for k, v in s.items() if k != "episode.2.versions"},
        lambda s: {**s, "frame_shape": [3, 10**6, 10**6]},
        lambda s: {**s, "episode_ended": "yes"},
    ],
)
def test_a_state_that_does_not_load_leaves_the_shard_as_it_was(codec, damage):
    source, _ = filled(codec, seed=7)
    state = damage(source.state_dict())
    shard, _ = filled(codec)
    before = fingerprint(shard)
    with pytest.raises(ReplayStateError) as info:
        shard.load_state_dict(state)
    assert "\n" not in str(info.value)
    assert_unchanged(shard, before)


@pytest.mark.parametrize("codec", ["lz4d-star32", "raw"])
@pytest.mark.parametrize("disk", ["stored", "cm"])
def test_checksum_valid_snapshot_with_an_inconsistent_episode(tmp_path, codec, disk):
    """The tester's case, through a file: the shard keeps its transitions."""
    source, _ = filled(codec, seed=7)
    path = tmp_path / "s.ddrq"
    write_snapshot(path, _inconsistent(disk_state(source.state_dict(), disk)))
    shard, _ = filled(codec)
    before = fingerprint(shard)
    with pytest.raises(ValueError, match="inconsistent lengths"):
        shard.load_state_dict(read_snapshot(path))
    assert len(shard) == 50
    assert_unchanged(shard, before)


def test_stored_frames_that_do_not_decode_are_refused():
    source, _ = filled("lz4d-star32", seed=7)
    state = source.state_dict()
    payload = np.array(state["episode.0.frames.payload"], copy=True)
    payload[:] = 0xFF
    shard, _ = filled("lz4d-star32")
    with pytest.raises(ReplayStateError, match="stored frame 0 does not decode"):
        shard.load_state_dict({**state, "episode.0.frames.payload": payload})


# ---------------------------------------------------------------------------------------------
# snapshot store


def _snapshot(shard: ReplayShard) -> dict:
    return {"shard": disk_state(shard.state_dict(), "stored"), "limiter": {"inserts": len(shard)}}


@pytest.mark.parametrize("damage", ["inconsistent", "flip", "truncate"])
def test_store_skips_a_broken_snapshot_for_the_older_one_and_reports_it(tmp_path, damage):
    store = SnapshotStore(tmp_path / "shard_000", keep=1)
    assert store.keep == 2
    old, (chunk, _) = filled("lz4d-star32")
    store.save(_snapshot(old), 50)
    new, _ = filled("lz4d-star32")
    new.insert(chunk)
    state = _snapshot(new)
    if damage == "inconsistent":
        state["shard"] = _inconsistent(state["shard"])
    newest = store.save(state, 60)
    held = 59 if damage == "inconsistent" else 60  # what the header counts
    assert read_snapshot_info(newest) == {"transitions": held, "episodes": 3}
    if damage != "inconsistent":
        data = bytearray(newest.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            del data[len(data) // 3 :]
        newest.write_bytes(bytes(data))
    shard, _ = filled("lz4d-star32", seed=9)
    warnings: list[str] = []
    path, _ = store.load_latest(
        warn=warnings.append, restore=lambda s: shard.load_state_dict(s["shard"])
    )
    assert path.name == "snapshot_000000000050.ddrq"
    assert_same(
        shard.sample(64, rng=np.random.default_rng(1)), old.sample(64, rng=np.random.default_rng(1))
    )
    (skipped,) = store.skipped
    assert skipped.path == newest and skipped.moved_to == newest.with_name(newest.name + ".broken")
    assert skipped.moved_to.exists() and (skipped.transitions, skipped.episodes) == (held, 3)
    assert len(warnings) == 1 and f"{held} replay transitions in 3 episodes" in warnings[0]
    assert "trying the previous snapshot" in warnings[0] and "\n" not in warnings[0]


def test_store_with_nothing_intact_reports_every_file(tmp_path):
    store = SnapshotStore(tmp_path)
    shard, _ = filled("raw")
    for sequence in (1, 2):
        path = store.save(_snapshot(shard), sequence)
        path.write_bytes(path.read_bytes()[:-3])
    warnings: list[str] = []
    assert store.load_latest(warn=warnings.append) is None
    assert [s.transitions for s in store.skipped] == [50, 50]
    assert "no older snapshot: starting empty" in warnings[-1]


def test_format_1_snapshots_still_read(tmp_path):
    body = msgpack.packb({"n": 1, "name": "x"}, use_bin_type=True)
    head = b"DDRQSNAP" + struct.pack("<I", 1) + body
    path = tmp_path / "v1.ddrq"
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + b"END!")
    assert read_snapshot(path) == {"n": 1, "name": "x"}
    assert read_snapshot_info(path) == {}
    path.write_bytes(head.replace(struct.pack("<I", 1), struct.pack("<I", 3), 1))
    with pytest.raises(SnapshotError, match="snapshot format 3; this distdrq reads 1, 2"):
        read_snapshot(path)


def _lz4_frame_claiming(size: int) -> bytes:
    """A valid LZ4 frame of a few zeros whose header declares ``size`` bytes of content."""
    data = bytearray(lz4.frame.compress(b"\0" * 64, compression_level=0, store_size=True))
    data[6:14] = struct.pack("<Q", size)
    for check in range(256):  # the header checksum byte
        data[14] = check
        try:
            lz4.frame.get_frame_info(bytes(data))
            return bytes(data)
        except RuntimeError:
            continue
    raise AssertionError("no header checksum fits")


@pytest.mark.parametrize(
    "array",
    [
        ["<u1", [1 << 40], "frame"],  # shape far beyond the data
        ["<u1", [64], "claim"],  # LZ4 header claiming 8 GiB for 64 bytes of shape
        ["<f8", [8, 1 << 30], "claim"],  # both claim 64 GiB: more than the bytes can decode to
        ["|O", [4], "frame"],  # object dtype
        ["<i3", [4], "frame"],
        ["<u1", [-1], "frame"],
    ],
)
def test_crafted_lengths_are_errors_not_allocations(tmp_path, array):
    dtype, shape, kind = array
    size = 8 << 30 if kind == "claim" else 64
    payload = _lz4_frame_claiming(size) if kind == "claim" else lz4.frame.compress(b"\0" * 64)
    if dtype == "<f8" and kind == "claim":
        payload = _lz4_frame_claiming(64 << 30)
    ext = msgpack.ExtType(1, msgpack.packb([dtype, shape, payload], use_bin_type=True))
    path = tmp_path / "crafted.ddrq"
    crafted(path, msgpack.packb({"a": ext}, use_bin_type=True))
    tracemalloc.start()
    with pytest.raises(SnapshotError) as info:
        read_snapshot(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert "\n" not in str(info.value)


def crafted(path, state: bytes) -> None:
    """A format 2 snapshot holding ``state`` (msgpack bytes) with valid checksums."""
    info = msgpack.packb({})
    data = b"DDRQSNAP" + struct.pack("<II", 2, len(info)) + info
    data += struct.pack("<I", zlib.crc32(info)) + state
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)) + b"END!")


def test_crafted_msgpack_lengths_are_errors(tmp_path):
    path = tmp_path / "s.ddrq"
    crafted(path, msgpack.packb({"a": 1}))
    assert read_snapshot(path) == {"a": 1}
    for body in (
        b"\xdd\xff\xff\xff\xff",  # array of 4 G elements
        b"\xdf\xff\xff\xff\xf0",  # map of 4 G pairs
        b"\xc6\x7f\xff\xff\xff",  # 2 GiB of bin
        b"\xc9\x7f\xff\xff\xff\x01",  # 2 GiB extension
        b"\x91" * 5000,  # deeply nested
    ):
        crafted(path, body)
        with pytest.raises(SnapshotError):
            read_snapshot(path)


def test_disk_codec_refuses_headers_its_bytes_cannot_justify():
    frames = (np.arange(2 * 3 * 8 * 8) % 7).astype(np.uint8).reshape(2, 3, 8, 8)
    blob = encode_frames(frames)
    assert blob[4] == METHOD_CM
    body = blob[_HEADER.size :]
    for nf, nc, h, w in ((2**32 - 1, 3, 8, 8), (2, 3, 65535, 65535), (2, 0, 8, 8), (2, 300, 1, 1)):
        header = _HEADER.pack(MAGIC, 1, METHOD_CM, nf, nc, h, w, 0)
        tracemalloc.start()
        with pytest.raises(ValueError, match="impossible shape|damaged header"):
            decode_frames(np.concatenate([np.frombuffer(header, np.uint8), body]))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20


def test_state_counts():
    shard, _ = filled("raw")
    assert state_counts(shard.state_dict()) == (50, 3)
    assert state_counts({"shard": shard.state_dict(), "limiter": {}}) == (50, 3)
    assert state_counts({"n": 1}) is None and state_counts(None) is None


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_holding_objects_gives_one_line_without_unsafe_advice(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "ckpt_000000000005.pt"
    torch.save({"format": "distdrq-checkpoint", "x": zipfile.ZipInfo("x")}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text and "weights_only" not in text and "trust" not in text
    assert "zipfile.ZipInfo" in text and "only tensors and plain data" in text


def test_checkpoint_with_compressed_entries_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(1000)})
    with zipfile.ZipFile(path) as src:
        entries = [(i, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info, data in entries:
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, data)
    with pytest.raises(CheckpointError, match="compressed entries"):
        load_checkpoint(path)


def test_checkpoint_load_latest_reports_what_it_skipped(tmp_path):
    shard, _ = filled("raw")
    for frame in (1, 2):
        replay = shard.state_dict()
        if frame == 2:
            replay = _inconsistent(replay)
        save_checkpoint(tmp_path, frame, {"frame": frame}, parts={"replay": replay})

    def restore(state, parts):
        ReplayShard(1000, 3, GAMMA, 3).load_state_dict(parts["replay"])

    skipped: list = []
    warnings: list[str] = []
    path, state, _ = load_latest(tmp_path, warn=warnings.append, restore=restore, skipped=skipped)
    assert state["frame"] == 1
    (item,) = skipped
    assert item.path.name == "ckpt_000000000002.pt" and item.transitions == 49
    root = tmp_path / "checkpoints"
    assert (root / "ckpt_000000000002.pt.broken").exists()
    assert (root / "ckpt_000000000002.replay.pt.broken").exists()  # parts set aside too
    assert not (root / "ckpt_000000000002.replay.pt").exists()
    assert "49 replay transitions" in warnings[0]
    (root / "ckpt_000000000001.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError) as info:
        load_latest(tmp_path, warn=warnings.append)
    assert [s.path.name for s in info.value.skipped] == ["ckpt_000000000001.pt"]


def test_rejections_reach_prometheus():
    from prometheus_client import generate_latest

    from distdrq.distributed.messages import RunSnapshot
    from distdrq.metrics import RunMetrics
    from distdrq.run.counters import Counters

    shard, (chunk, _) = filled("raw")
    with pytest.raises(ChunkRejected):
        shard.insert(replace(chunk, rewards=np.full_like(chunk.rewards, np.nan)))
    metrics = RunMetrics("run")
    snapshot = RunSnapshot(Counters(last_train_return=0.0, last_eval_return=0.0))
    metrics.update(snapshot, {}, {}, [{"shard": 0, **shard.stats()}], None, [])
    text = generate_latest(metrics.registry).decode()
    assert 'distdrq_replay_rejected_chunks_total{reason="values",run="run",shard="0"} 1.0' in text


def test_encoded_frames_travel_with_their_checksum_through_msgpack():
    (chunk,) = Episodes(SHAPE, seed=3).episode(1, 5, [], last=True, codec="lz4d-star32")
    back = type(chunk.encoded).from_msgpack(chunk.encoded.to_msgpack())
    assert back.checksum == chunk.encoded.checksum is not None
    shard = ReplayShard(100, 1, GAMMA, 1, codec="lz4d-star32")
    shard.insert(replace(chunk, encoded=back))
    for junk in (b"", b"\x91\x01", msgpack.packb({"codec": 1})):
        with pytest.raises(ValueError, match="not msgpack-encoded frames"):
            type(chunk.encoded).from_msgpack(junk)


def test_damaged_coded_batches_are_one_line_errors_never_stray_writes():
    """A coded batch (replay.decode_on=learner) whose tables or bytes were damaged on the way:
    a :class:`CodedBatchError` in one line, or (bytes that still decode, rows still in range)
    a batch of other pixels; never a crash. Random mutations of every table, then targeted
    ones."""
    from test_replay_codec_shard import POOL

    from distdrq.replay.decoding import CodedBatchError

    shard, _ = filled("lz4d-star32")
    good = shard.sample_coded(48, rng=np.random.default_rng(0))
    out = shard.empty_batch(48)
    rng = np.random.default_rng(7)
    outcomes = {"refused": 0, "decoded": 0}
    tables = ("offset", "size", "items", "copies", "item_end", "copy_end", "payload")
    for _ in range(400):
        windows = replace(good.windows, **{n: getattr(good.windows, n).copy() for n in tables})
        for _ in range(int(rng.integers(1, 4))):
            array = getattr(windows, tables[int(rng.integers(len(tables)))])
            if array.size:
                flat = array.reshape(-1)
                i = int(rng.integers(flat.size))
                if array.dtype == np.uint8:
                    flat[i] ^= np.uint8(1 << int(rng.integers(8)))
                else:
                    flat[i] = rng.choice([-1, 0, 1, flat[i] + 1, flat[i] - 1, 2**31 - 1, 7])
        try:
            POOL.assemble([replace(good, windows=windows)], out)
            outcomes["decoded"] += 1
        except CodedBatchError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 10, outcomes

    def damaged(**changes):
        return replace(good, windows=replace(good.windows, **changes))

    w = good.windows
    for bad, match in (
        (damaged(payload=w.payload[:-1]), "outside the payload"),
        (damaged(scratch_rows=0), "row outside the batch"),
        (damaged(item_end=w.item_end[:-1]), "window ends"),
        (damaged(widths=(3, 3, 3)), "one or two output arrays"),
        (damaged(widths=(2, 3)), "row outside the batch|frames per window"),
        (damaged(payload=np.zeros_like(w.payload)), "does not decode"),
    ):
        with pytest.raises(CodedBatchError, match=match):
            POOL.assemble([bad], out)
    assert_same(POOL.assemble([good], out), shard.sample(48, rng=np.random.default_rng(0)))
