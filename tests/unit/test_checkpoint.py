"""Checkpoints: atomic, weights_only-loadable, corrupt files reported and skipped."""

import numpy as np
import pytest
import torch

from distdrq.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from distdrq.replay.diskcodec import decode_frames, encode_frames


def _state(x: float) -> dict:
    return {"w": torch.full((3,), x), "counters": {"frame": int(x)}, "arr": np.arange(4) * x}


def test_round_trip_with_parts_and_plain_torch_load(tmp_path):
    path = save_checkpoint(
        tmp_path, 10, _state(1.0), parts={"replay": {"frames": np.ones((2, 3), np.uint8)}}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "distdrq-checkpoint" and raw["frame"] == 10
    state, parts = load_checkpoint(path)
    assert torch.equal(state["w"], torch.ones(3))
    assert isinstance(state["arr"], np.ndarray) and state["arr"].tolist() == [0, 1, 2, 3]
    assert parts["replay"]["frames"].dtype == np.uint8


def test_keeps_the_newest_two(tmp_path):
    for frame in (1, 2, 3):
        save_checkpoint(tmp_path, frame, _state(frame), parts={"replay": {"x": np.zeros(1)}})
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt_000000000003.pt", "ckpt_000000000002.pt"]
    assert not list((tmp_path / "checkpoints").glob("ckpt_000000000001*"))


@pytest.mark.parametrize("damage", ["truncate", "foreign", "empty", "missing_part"])
def test_broken_newest_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, 1, _state(1.0), parts={"replay": {"x": np.zeros(1)}})
    newest = save_checkpoint(tmp_path, 2, _state(2.0), parts={"replay": {"x": np.zeros(1)}})
    if damage == "truncate":
        data = newest.read_bytes()
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        newest.write_bytes(b"this is not a checkpoint" * 10)
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        newest.with_suffix(".replay.pt").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(newest)
    assert "\n" not in str(info.value)
    warnings: list[str] = []
    path, state, _ = load_latest(tmp_path, warn=warnings.append)
    assert path.name == "ckpt_000000000001.pt"
    assert state["counters"]["frame"] == 1
    assert len(warnings) == 1 and "ckpt_000000000002.pt" in warnings[0]
    # the broken file is kept aside, not deleted, and no longer counts in the rotation
    assert (tmp_path / "checkpoints" / "ckpt_000000000002.pt.broken").exists()
    save_checkpoint(tmp_path, 3, _state(3.0), parts={"replay": {"x": np.zeros(1)}})
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "ckpt_000000000001.pt"


def test_checkpoint_whose_replay_does_not_load_falls_back(tmp_path):
    """Damaged disk-coded replay frames inside an intact torch file: the previous checkpoint."""
    frames = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8) // 7
    for frame in (1, 2):
        blob = encode_frames(frames)
        if frame == 2:
            blob[blob.size // 2] ^= 0xFF
        save_checkpoint(tmp_path, frame, _state(frame), parts={"replay": {"frames.cm": blob}})
    loaded: list[int] = []

    def restore(state, parts):
        decode_frames(parts["replay"]["frames.cm"])
        loaded.append(state["counters"]["frame"])

    warnings: list[str] = []
    path, state, _ = load_latest(tmp_path, warn=warnings.append, restore=restore)
    assert path.name == "ckpt_000000000001.pt" and loaded == [1]
    assert len(warnings) == 1 and "does not load" in warnings[0] and "corrupt" in warnings[0]
    assert (tmp_path / "checkpoints" / "ckpt_000000000002.pt.broken").exists()


def test_foreign_torch_file_is_rejected(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "ckpt_000000000005.pt"
    torch.save({"some": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a distdrq checkpoint"):
        load_checkpoint(path)


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_latest(tmp_path)


def test_interrupted_write_leaves_previous_intact(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, 1, _state(1.0))
    before = good.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, _state(2.0))
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000000001.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]
