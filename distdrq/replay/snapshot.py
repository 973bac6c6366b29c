"""Replay snapshots on disk: versioned msgpack with lz4-compressed array blocks, no pickle.

File layout::

    b"DDRQSNAP" | u32 format version | msgpack(state) | u32 crc32 of everything before | b"END!"

``state`` is a tree of dicts, lists, str, int, float, bool, None, bytes and numpy arrays; each
array is a msgpack extension (dtype, shape, lz4-frame-compressed bytes). Writes go to a
temporary file that is fsynced and renamed, so a crash leaves the previous snapshot intact.
:class:`SnapshotStore` keeps the newest ``keep`` snapshots of a shard and restores from the newest
readable one, reporting (and setting aside) broken files instead of crash-looping.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.frame
import msgpack
import numpy as np

from distdrq.atomic import atomic_open

MAGIC = b"DDRQSNAP"
TRAILER = b"END!"
FORMAT_VERSION = 1
_EXT_NDARRAY = 1
_NAME = re.compile(r"^snapshot_(\d{12})\.ddrq$")


class SnapshotError(RuntimeError):
    """A snapshot file cannot be read: truncated, corrupt, foreign or of another version."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = obj if obj.flags.c_contiguous else np.array(obj, order="C")  # keeps 0-d arrays
        payload = lz4.frame.compress(arr.tobytes(), compression_level=0, store_size=True)
        body = msgpack.packb([arr.dtype.str, list(arr.shape), payload], use_bin_type=True)
        return msgpack.ExtType(_EXT_NDARRAY, body)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot snapshot a {type(obj).__name__}; use arrays and plain values")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _EXT_NDARRAY:
        raise SnapshotError(f"unknown msgpack extension {code}")
    dtype, shape, payload = msgpack.unpackb(data, raw=False)
    raw = lz4.frame.decompress(payload)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()


class _CrcWriter:
    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.crc = 0

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.fh.write(data)


def write_snapshot(path: str | Path, state: dict[str, Any]) -> int:
    """Atomically write ``state`` to ``path``; returns the file size in bytes."""
    path = Path(path)
    with atomic_open(path) as fh:
        out = _CrcWriter(fh)
        out.write(MAGIC + struct.pack("<I", FORMAT_VERSION))
        packer = msgpack.Packer(default=_default, use_bin_type=True)
        out.write(packer.pack(state))
        fh.write(struct.pack("<I", out.crc) + TRAILER)
    return path.stat().st_size


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """Read a snapshot; raise :class:`SnapshotError` (one line) if it is not intact."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from exc
    head = len(MAGIC) + 4
    if data[: len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{path} is not a distdrq replay snapshot (bad header)")
    if len(data) < head + 8:
        raise SnapshotError(f"{path} is truncated ({len(data)} bytes)")
    (version,) = struct.unpack("<I", data[len(MAGIC) : head])
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{path} has snapshot format {version}; this distdrq reads {FORMAT_VERSION}"
        )
    if data[-4:] != TRAILER:
        raise SnapshotError(f"{path} is truncated (no end marker)")
    (crc,) = struct.unpack("<I", data[-8:-4])
    if zlib.crc32(data[:-8]) != crc:
        raise SnapshotError(f"{path} is corrupt (checksum mismatch)")
    try:
        state = msgpack.unpackb(data[head:-8], ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, RuntimeError) as exc:
        raise SnapshotError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(state, dict):
        raise SnapshotError(f"{path} does not hold a snapshot mapping")
    return state


class SnapshotStore:
    """Numbered snapshots of one shard in one directory, newest ``keep`` kept."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = max(int(keep), 1)

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, state: dict[str, Any], sequence: int) -> Path:
        """Write snapshot number ``sequence`` (e.g. the inserted-transition count)."""
        path = self.directory / f"snapshot_{sequence:012d}.ddrq"
        write_snapshot(path, state)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(
        self,
        warn: Callable[[str], None] = print,
        restore: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[Path, dict[str, Any]] | None:
        """The newest intact snapshot, or None if there is none (start empty).

        ``restore``, if given, is applied to each candidate state; if it raises ValueError or
        KeyError (a state that reads but does not load), that snapshot counts as broken too.
        Broken files are renamed to ``*.broken`` and reported through ``warn``.
        """
        for path in self.paths():
            try:
                state = read_snapshot(path)
                if restore is not None:
                    try:
                        restore(state)
                    except (ValueError, KeyError, TypeError) as exc:
                        raise SnapshotError(f"{path} does not load: {exc}") from exc
                return path, state
            except SnapshotError as exc:
                aside = path.with_name(path.name + ".broken")
                path.rename(aside)
                warn(f"warning: {exc}; moved it to {aside.name}, trying the previous snapshot")
        return None
