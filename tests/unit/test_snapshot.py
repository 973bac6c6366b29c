"""Replay snapshots: round trip, no pickle, corrupt and truncated files handled."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from distdrq.replay.snapshot import (
    MAGIC,
    SnapshotError,
    SnapshotStore,
    read_snapshot,
    write_snapshot,
)


def _state():
    return {
        "frames": np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8),
        "actions": np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2),
        "episodes": [{"key": 1, "last": True, "blob": b"\x00\x01"}, {"key": 2, "last": False}],
        "count": 5,
        "ratio": 0.5,
        "name": "shard-0",
        "none": None,
    }


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_round_trip(tmp_path):
    path = tmp_path / "s.ddrq"
    write_snapshot(path, _state())
    assert path.read_bytes().startswith(MAGIC)
    assert _equal(_state(), read_snapshot(path))


@settings(max_examples=50, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=6),
    )
)
def test_arrays_round_trip_exactly(tmp_path_factory, arr):
    path = tmp_path_factory.mktemp("snap") / "a.ddrq"
    write_snapshot(path, {"a": arr})
    back = read_snapshot(path)["a"]
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr, equal_nan=arr.dtype.kind == "f")


def test_rejects_objects_that_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match="cannot snapshot a object"):
        write_snapshot(tmp_path / "x.ddrq", {"x": object()})
    assert not (tmp_path / "x.ddrq").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty"])
def test_damaged_files_give_one_line_errors(tmp_path, damage):
    path = tmp_path / "s.ddrq"
    write_snapshot(path, _state())
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "foreign":
        data = bytearray(b"PK\x03\x04 not ours" * 20)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as info:
        read_snapshot(path)
    assert "\n" not in str(info.value)


def test_store_falls_back_to_previous_then_empty(tmp_path):
    store = SnapshotStore(tmp_path / "shard0", keep=2)
    assert store.load_latest() is None
    store.save({"n": 1}, 1)
    store.save({"n": 2}, 2)
    store.save({"n": 3}, 3)
    assert [p.name for p in store.paths()] == [
        "snapshot_000000000003.ddrq",
        "snapshot_000000000002.ddrq",
    ]
    newest = store.paths()[0]
    newest.write_bytes(newest.read_bytes()[:-10])
    warnings = []
    path, state = store.load_latest(warn=warnings.append)
    assert state == {"n": 2} and len(warnings) == 1 and "truncated" in warnings[0]
    store.paths()[0].write_bytes(b"garbage")
    assert store.load_latest(warn=warnings.append) is None  # starts empty, no crash loop
    assert len(list((tmp_path / "shard0").glob("*.broken"))) == 2
