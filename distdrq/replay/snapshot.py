"""Replay snapshots on disk: versioned msgpack with lz4-compressed array blocks, no pickle.

File layout (format 2)::

    b"DDRQSNAP" | u32 format version | u32 n | msgpack(info), n bytes | u32 crc32 of info
    | msgpack(state) | u32 crc32 of everything before | b"END!"

``info`` is a small map with its own checksum, readable when the rest is damaged: the replay
``transitions`` and ``episodes`` the snapshot holds (when its state holds a replay state), so
that a skipped snapshot can say what was lost. Format 1 files (no info) are still read.
``state`` is a tree of dicts, lists, str, int, float, bool, None, bytes and numpy arrays; each
array is a msgpack extension (dtype, shape, lz4-frame-compressed bytes). Writes go to a
temporary file that is fsynced and renamed, so a crash leaves the previous snapshot intact.

Reading never unpickles and never allocates more than the file can justify: lengths are
bounded by the bytes present (an array by what its LZ4 frame can decode to: at most about 255
bytes per byte), dtypes are plain numbers, and anything else is a :class:`SnapshotError` with
a one-line message.

:class:`SnapshotStore` keeps the newest ``keep`` (at least 2) snapshots of a shard and restores
from the newest one that reads and loads, setting broken files aside and reporting them
(:attr:`SnapshotStore.skipped`) instead of crash-looping.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.frame
import msgpack
import numpy as np

from distdrq.atomic import atomic_open, newest_intact
from distdrq.types import SkippedFile

MAGIC = b"DDRQSNAP"
TRAILER = b"END!"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_EXT_NDARRAY = 1
_NAME = re.compile(r"^snapshot_(\d{12})\.ddrq$")
_MAX_INFO = 1 << 16
_LZ4_MAX_RATIO = 255
_DTYPE = re.compile(r"^[<>|=]?[biuf]\d{1,2}$")
_MAX_DIMS = 32


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
    """An array from its extension body, checked before anything is allocated."""
    if code != _EXT_NDARRAY:
        raise SnapshotError(f"unknown msgpack extension {code}")
    try:
        body = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"damaged array header: {exc}") from None
    if not (isinstance(body, list) and len(body) == 3):
        raise SnapshotError("damaged array header")
    dtype, shape, payload = body
    if not (isinstance(dtype, str) and _DTYPE.match(dtype)):
        raise SnapshotError(f"array of unsupported dtype {dtype!r:.40}")
    if not (
        isinstance(shape, list)
        and len(shape) <= _MAX_DIMS
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise SnapshotError(f"array of invalid shape {shape!r:.60}")
    if not isinstance(payload, bytes):
        raise SnapshotError("array without data")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise SnapshotError(f"array of unsupported dtype {dtype!r:.40}") from None
    nbytes = math.prod(shape) * dt.itemsize
    try:
        declared = lz4.frame.get_frame_info(payload)["content_size"]
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SnapshotError(f"damaged array data: {exc}") from None
    if nbytes > _LZ4_MAX_RATIO * len(payload) + 1024 or declared != nbytes:
        raise SnapshotError(
            f"array {dtype} {shape} of {nbytes} bytes cannot come from {len(payload)} "
            f"compressed bytes declaring {declared}"
        )
    try:
        raw = lz4.frame.decompress(payload, return_bytearray=True)
    except RuntimeError as exc:
        raise SnapshotError(f"damaged array data: {exc}") from None
    if len(raw) != nbytes:
        raise SnapshotError(f"array data holds {len(raw)} bytes, expected {nbytes}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def _unpack(data: bytes | memoryview) -> Any:
    """msgpack with every length bounded by the bytes present (a list preallocates 8 bytes
    per element: snapshots keep bulk data in arrays, so lists longer than 1/8 of the data are
    refused)."""
    n = len(data)
    return msgpack.unpackb(
        data,
        ext_hook=_ext_hook,
        raw=False,
        strict_map_key=False,
        max_str_len=n,
        max_bin_len=n,
        max_array_len=n // 8 + 16,
        max_map_len=n // 2 + 1,
        max_ext_len=n,
    )


class _CrcWriter:
    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.crc = 0

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.fh.write(data)


def write_snapshot(
    path: str | Path, state: dict[str, Any], info: dict[str, Any] | None = None
) -> int:
    """Atomically write ``state`` to ``path``; returns the file size in bytes.

    ``info``: a small map of plain values for the header (e.g. ``transitions``), readable by
    :func:`read_snapshot_info` even when the rest of the file is damaged.
    """
    path = Path(path)
    head = msgpack.packb(dict(info or {}), use_bin_type=True)
    if len(head) > _MAX_INFO:
        raise ValueError(f"snapshot info of {len(head)} bytes; keep it under {_MAX_INFO}")
    with atomic_open(path) as fh:
        out = _CrcWriter(fh)
        out.write(MAGIC + struct.pack("<II", FORMAT_VERSION, len(head)))
        out.write(head + struct.pack("<I", zlib.crc32(head)))
        packer = msgpack.Packer(default=_default, use_bin_type=True)
        out.write(packer.pack(state))
        fh.write(struct.pack("<I", out.crc) + TRAILER)
    return path.stat().st_size


def _header(path: Path, data: bytes) -> tuple[int, dict[str, Any], int]:
    """Format version, info and the offset of the state; SnapshotError if unreadable."""
    if data[: len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{path} is not a distdrq replay snapshot (bad header)")
    head = len(MAGIC) + 4
    if len(data) < head:
        raise SnapshotError(f"{path} is truncated ({len(data)} bytes)")
    (version,) = struct.unpack("<I", data[len(MAGIC) : head])
    if version not in READABLE_VERSIONS:
        raise SnapshotError(
            f"{path} has snapshot format {version}; this distdrq reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if version == 1:
        return version, {}, head
    if len(data) < head + 4:
        raise SnapshotError(f"{path} is truncated ({len(data)} bytes)")
    (size,) = struct.unpack("<I", data[head : head + 4])
    start, stop = head + 4, head + 4 + size
    if size > _MAX_INFO or len(data) < stop + 4:
        raise SnapshotError(f"{path} is truncated or its header is damaged")
    raw = data[start:stop]
    (crc,) = struct.unpack("<I", data[stop : stop + 4])
    if zlib.crc32(raw) != crc:
        raise SnapshotError(f"{path} has a damaged header (checksum mismatch)")
    try:
        info = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"{path} has a damaged header: {exc}") from None
    if not isinstance(info, dict):
        raise SnapshotError(f"{path} has a damaged header")
    return version, info, stop + 4


def read_snapshot_info(path: str | Path) -> dict[str, Any]:
    """The header info of a snapshot (``{}`` for format 1 files), read without the rest, so
    that it is known even when the state is damaged; :class:`SnapshotError` if unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(len(MAGIC) + 8 + _MAX_INFO + 4)
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from exc
    return _header(path, data)[1]


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """Read a snapshot; raise :class:`SnapshotError` (one line) if it is not intact."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from exc
    _, _, start = _header(path, data)
    if len(data) < start + 8:
        raise SnapshotError(f"{path} is truncated ({len(data)} bytes)")
    if data[-4:] != TRAILER:
        raise SnapshotError(f"{path} is truncated (no end marker)")
    (crc,) = struct.unpack("<I", data[-8:-4])
    if zlib.crc32(memoryview(data)[:-8]) != crc:
        raise SnapshotError(f"{path} is corrupt (checksum mismatch)")
    try:
        state = _unpack(memoryview(data)[start:-8])
    except SnapshotError as exc:
        raise SnapshotError(f"{path} is corrupt: {exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SnapshotError(f"{path} is corrupt: {first}") from None
    if not isinstance(state, dict):
        raise SnapshotError(f"{path} does not hold a snapshot mapping")
    return state


def _counts(info: dict[str, Any]) -> tuple[int | None, int | None]:
    def count(name: str) -> int | None:
        value = info.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return count("transitions"), count("episodes")


class SnapshotStore:
    """Numbered snapshots of one shard in one directory, newest ``keep`` (at least 2) kept."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = max(int(keep), 2)  # one to fall back on when the newest is broken
        self.skipped: list[SkippedFile] = []
        """the snapshots the last :meth:`load_latest` set aside, newest first"""

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, state: dict[str, Any], sequence: int) -> Path:
        """Write snapshot number ``sequence`` (e.g. the inserted-transition count); its header
        records the replay transitions and episodes of ``state`` (or of ``state["shard"]``)."""
        from distdrq.replay.state import state_counts  # the replay state module is heavier

        path = self.directory / f"snapshot_{sequence:012d}.ddrq"
        counts = state_counts(state)
        info = {"transitions": counts[0], "episodes": counts[1]} if counts else {}
        write_snapshot(path, state, info)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(
        self,
        warn: Callable[[str], None] = print,
        restore: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[Path, dict[str, Any]] | None:
        """The newest intact snapshot, or None if there is none (start empty).

        ``restore``, if given, is applied to each candidate state; if it raises ValueError,
        KeyError, TypeError or IndexError (a state that reads but does not load), that snapshot
        counts as broken too. Broken files are renamed to ``*.broken``, reported through
        ``warn`` (one line each, with the transitions they held when known) and listed in
        :attr:`skipped` (reset by each call), so that the caller can report what was lost;
        the next older snapshot is tried.
        """

        def load(path: Path) -> dict[str, Any]:
            state = read_snapshot(path)
            if restore is not None:
                try:
                    restore(state)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise SnapshotError(f"{path} does not load: {first}") from exc
            return state

        found, self.skipped = newest_intact(
            self.paths(),
            load,
            (SnapshotError,),
            self._set_aside,
            warn,
            "snapshot",
            "no older snapshot: starting empty",
        )
        return found

    @staticmethod
    def _set_aside(path: Path, reason: str) -> SkippedFile:
        transitions = episodes = None
        with contextlib.suppress(SnapshotError):
            transitions, episodes = _counts(read_snapshot_info(path))
        aside: Path | None = path.with_name(path.name + ".broken")
        try:
            path.rename(aside)  # type: ignore[arg-type]
        except OSError:
            aside = None
        return SkippedFile(path, aside, reason, transitions, episodes)
