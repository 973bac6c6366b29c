"""Lossless frame codec for replay: a frame is encoded once (actor side), stored once, decoded
only when sampled, bit for bit.

Which codec to pick, and the codecs there are, is told in :mod:`distdrq.replay.registry`
(``CODECS``; ``DEFAULT_CODEC`` is ``lz4d-star32``); this module is how they work.

Prediction. Every frame ``t`` of an episode is either an intra frame (stored as itself) or
coded against one earlier frame ``ref(t)`` of the same episode, chosen by a fixed *reference
structure* that depends only on ``t`` (:func:`reference_frames`):

- ``key``:   intra every ``K`` frames; the others refer to their group's intra frame;
- ``chain``: intra every ``K`` frames; the others refer to the previous frame;
- ``tree``:  intra every ``K`` frames; anchors every ``M`` frames refer to the previous anchor
  (or intra), the others to the previous frame (a window needs few decodes, references stay close);
- ``star``:  as ``tree``, but anchors refer to their group's intra frame: fewer decodes per
  window (8.4 for K=32, M=4, against 9.0 for ``tree`` with K=16), references farther away,
  which suits dictionary coding only.

For 3-channel frames every frame is first channel-transformed (``R' = R - G``,
``B' = B - G``, mod 256: green predicts red and blue). A predicted frame is then coded against
its reference in one of two ways (``CodecSpec.predict``):

- ``residual`` (``lz4-*``): the uint8 wraparound difference to the reference, LZ4-compressed;
  decoding decompresses, undoes the channel transform and adds the decoded reference.
- ``dict`` (``lz4d-*``): the frame itself, LZ4-compressed with the reference as LZ4's
  dictionary, so unchanged pixels become copies from the reference, found at any shift (the
  walker's floor moves under the tracking camera), and changed ones stay literals. Decoding is
  one LZ4 call per frame with no add pass; frames stay channel-transformed until their window
  is complete (later frames use them as dictionaries), then the window's output rows are
  transformed back while they are in cache. The size grows little with the distance to the
  reference (walker_walk: +16% at 15 frames, against +40% for residuals), which is what lets
  ``star`` reach far. Measured in a full-size shard (benchmarks/RESULTS.md), ``lz4d-star32``
  against ``lz4-tree``: walker_walk 16% fewer bytes, 5% slower to sample; cheetah_run 7% fewer,
  as fast; quadruped_walk as large, 17% slower; half the encoding time everywhere. (LZ4 decodes
  matches into an external dictionary on a slower path than matches into its own output.)

Each frame's bytes are compressed alone with LZ4 (fast or HC), so decoding a window touches only
the frames it needs.

Decoding (:func:`decode_windows`, :func:`decode_windows_into`: the sampling hot path) is
vectorised across the batch: a *plan* computes with numpy the closure (window frames plus their
reference ancestors) of every window and the row each needed frame is decoded into; one kernel
of :mod:`distdrq.replay.lz4decode` then LZ4-decodes each needed frame once per window, undoes
the channel transform and adds references.

Integrity: :class:`FrameEncoder` stamps each :class:`EncodedFrames` with a CRC32 of its sizes
and bytes (:func:`payload_checksum`); a shard verifies it and trial-decodes every frame
(:func:`undecodable_frame`) before storing anything, so damaged bytes are refused at insert and
a sample never meets a frame it cannot decode.
"""

from __future__ import annotations

import ctypes
import zlib
from dataclasses import dataclass, replace
from typing import Any

import lz4.block as _lz4
import msgpack
import numpy as np

from distdrq.replay.lz4decode import (
    DEST_ARRAY,
    DEST_ROW,
    FIRST,
    NOWHERE,
    SCRATCH,
    SRC_ARRAY,
    SRC_ROW,
    check_blocks,
    kernels,
    lz4_decompress,
    lz4_decompress_dict,
)
from distdrq.replay.registry import (
    CODECS,
    DEFAULT_CODEC,
    CodecSpec,
    codec_spec,
    register_codec,
)

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "MAX_FRAME_BYTES",
    "CodecSpec",
    "EncodedFrames",
    "EpisodeFrames",
    "FrameEncoder",
    "codec_spec",
    "decode_windows",
    "WindowPlan",
    "decode_windows_into",
    "plan_into",
    "run_plan",
    "payload_checksum",
    "reference_frames",
    "register_codec",
    "undecodable_frame",
]

_LZ4_MAX_RATIO = 255
"""an LZ4 block never decodes to more than about 255 bytes per byte (one byte of match length
adds at most 255 bytes of output)"""
MAX_FRAME_BYTES = 1 << 26
"""largest frame (C * H * W bytes) accepted from outside: 64 MiB, far above any pixel frame"""


def reference_frames(spec: CodecSpec, t: np.ndarray) -> np.ndarray:
    """Reference frame of each frame index ``t`` (int64 array) under ``spec``'s structure (the
    module docstring); -1 for intra frames."""
    t = np.asarray(t, dtype=np.int64)
    if spec.structure == "raw":
        return np.full_like(t, -1)
    pos = t % spec.group  # position in the group; 0: the intra frame
    m = spec.anchor
    if spec.structure == "key":
        ref = t - pos
    elif spec.structure == "chain":
        ref = t - 1
    elif spec.structure == "tree":
        ref = np.where(t % m == 0, t - m, t - 1)
    else:  # star (CodecSpec checks the structure)
        ref = np.where(t % m == 0, t - pos, t - 1)
    return np.where(pos == 0, -1, ref)


def reference_depth(spec: CodecSpec, t: np.ndarray) -> np.ndarray:
    """Number of predicted frames between frame ``t`` and its intra frame, ``t`` included (the
    decodes a frame needs, less one)."""
    t = np.asarray(t, dtype=np.int64)
    if spec.structure == "raw":
        return np.zeros_like(t)
    pos = t % spec.group
    m = spec.anchor
    if spec.structure == "key":
        return (pos != 0).astype(np.int64)
    if spec.structure == "chain":
        return pos
    if spec.structure == "star":
        return (pos >= m).astype(np.int64) + pos % m
    return pos // m + pos % m  # tree


def _max_depth(spec: CodecSpec) -> int:
    return int(reference_depth(spec, np.arange(spec.group)).max())


def _to_planes(frames: np.ndarray) -> np.ndarray:
    """Forward channel transform (copy): for C == 3, R -= G and B -= G (mod 256)."""
    out = np.array(frames, dtype=np.uint8, copy=True)
    if out.shape[1] == 3:
        out[:, 0] -= out[:, 1]
        out[:, 2] -= out[:, 1]
    return out


def _from_planes_(planes: np.ndarray) -> None:
    """Inverse channel transform in place on ``[N, C, H, W]``."""
    if planes.shape[1] == 3:
        planes[:, 0] += planes[:, 1]
        planes[:, 2] += planes[:, 1]


def payload_checksum(payload: bytes | np.ndarray, sizes: np.ndarray) -> int:
    """CRC32 of the frame sizes (as little-endian int64) followed by the payload bytes: what
    :class:`FrameEncoder` stamps on each :class:`EncodedFrames` and the shard verifies."""
    crc = zlib.crc32(np.ascontiguousarray(sizes, "<i8").tobytes())
    return zlib.crc32(memoryview(payload).cast("B"), crc)


@dataclass
class EncodedFrames:
    """Consecutive frames of one episode as they travel to the replay shard."""

    codec: str
    frame_shape: tuple[int, int, int]
    first_frame: int
    """index within the episode of the first frame here"""
    payload: bytes | np.ndarray
    """the frames' compressed bytes, concatenated (bytes, or a contiguous uint8 array)"""
    sizes: np.ndarray
    """int64 [F], bytes of each frame in ``payload``"""
    checksum: int | None = None
    """:func:`payload_checksum` of ``payload`` and ``sizes``, set by the encoder; a shard
    refuses encoded frames without it (damage that still decodes would go unnoticed)"""

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    def with_checksum(self) -> EncodedFrames:
        """A copy (sharing the payload) carrying the checksum of its current bytes."""
        return replace(self, checksum=payload_checksum(self.payload, self.sizes))

    def to_msgpack(self) -> bytes:
        return msgpack.packb(
            {
                "codec": self.codec,
                "shape": list(self.frame_shape),
                "first": self.first_frame,
                "payload": bytes(self.payload),
                "sizes": self.sizes.astype("<u4").tobytes(),
                "crc": self.checksum,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_msgpack(cls, data: bytes) -> EncodedFrames:
        """Inverse of :meth:`to_msgpack`; ValueError (one line) for anything else."""
        try:
            d = msgpack.unpackb(data, raw=False)
            crc = d.get("crc")
            out = cls(
                codec=str(d["codec"]),
                frame_shape=tuple(int(x) for x in d["shape"]),
                first_frame=int(d["first"]),
                payload=bytes(d["payload"]),
                sizes=np.frombuffer(d["sizes"], dtype="<u4").astype(np.int64),
                checksum=None if crc is None else int(crc),
            )
        except (ValueError, TypeError, KeyError, AttributeError, msgpack.ExtraData) as exc:
            raise ValueError(f"not msgpack-encoded frames: {exc}") from None
        return out


class FrameEncoder:
    """Encodes the frames of one episode, in order, in chunks of any size (actor side)."""

    def __init__(self, codec: str = DEFAULT_CODEC, frame_shape: tuple[int, int, int] = (3, 84, 84)):
        self.spec = codec_spec(codec)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self._count = 0
        self._window: dict[int, np.ndarray] = {}  # recent original frames, as planes

    @property
    def frames_encoded(self) -> int:
        """Frames of this episode encoded so far (the next frame's index)."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of the recent frames kept as references (at most ``group`` frames)."""
        return int(sum(plane.nbytes for plane in self._window.values()))

    def resume(self, first_frame: int, previous: np.ndarray) -> None:
        """Continue an episode whose frames before ``first_frame`` were encoded elsewhere.

        ``previous`` holds (at least) the last ``min(group, first_frame)`` original frames
        before ``first_frame``, uint8 ``[P, C, H, W]``, oldest first: the references that
        the next frames may use.
        """
        previous = np.asarray(previous)
        want = min(self.spec.group, int(first_frame))
        if previous.dtype != np.uint8 or tuple(previous.shape[1:]) != self.frame_shape:
            raise ValueError(f"previous frames must be uint8 [P, {self.frame_shape}]")
        if len(previous) < want:
            raise ValueError(f"resume at frame {first_frame} needs the last {want} frames")
        self._count = int(first_frame)
        self._window = {}
        if self.spec.structure != "raw" and want:
            planes = _to_planes(previous[len(previous) - want :])
            for i, plane in enumerate(planes):
                self._window[first_frame - want + i] = plane

    def encode(self, frames: np.ndarray) -> EncodedFrames:
        """Encode the next ``frames`` (uint8 ``[F, C, H, W]``) of this episode."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or tuple(frames.shape[1:]) != self.frame_shape:
            raise ValueError(
                f"expected uint8 frames [F, {', '.join(map(str, self.frame_shape))}], "
                f"got {frames.dtype} {list(frames.shape)}"
            )
        spec, start = self.spec, self._count
        blobs: list[bytes] = []
        if spec.structure == "raw":
            blobs = [f.tobytes() for f in frames]
        else:
            planes = _to_planes(frames)
            t = np.arange(start, start + len(frames))
            refs = reference_frames(spec, t)
            by_dict = spec.by_dict(int(np.prod(self.frame_shape)))
            for i, (ti, ri) in enumerate(zip(t.tolist(), refs.tolist(), strict=True)):
                cur = planes[i]
                if ri < 0:
                    blobs.append(_compress(cur.tobytes(), spec.hc_level))
                elif by_dict:
                    ref = self._window[ri].tobytes()
                    blobs.append(_compress(cur.tobytes(), spec.hc_level, ref))
                else:
                    blobs.append(_compress((cur - self._window[ri]).tobytes(), spec.hc_level))
                self._window[ti] = cur
            keep = start + len(frames) - spec.group
            for old in [k for k in self._window if k < keep]:
                del self._window[old]
        self._count += len(frames)
        payload = b"".join(blobs)
        sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        return EncodedFrames(
            codec=spec.name,
            frame_shape=self.frame_shape,
            first_frame=start,
            payload=payload,
            sizes=sizes,
            checksum=payload_checksum(payload, sizes),
        )


def _compress(data: bytes, level: int, ref: bytes = b"") -> bytes:
    """LZ4 block of ``data`` (HC at ``level`` > 0), with ``ref`` as dictionary if given."""
    if level <= 0:
        return _lz4.compress(data, store_size=False, dict=ref)
    return _lz4.compress(
        data, mode="high_compression", compression=level, store_size=False, dict=ref
    )


class EpisodeFrames:
    """The stored frames of one episode (shard side): append chunks, decode frames or windows.

    Chunk payloads are kept as they arrive (no copy); each frame is addressed by a pointer into
    its chunk and a size, so that decoding hands LZ4 raw pointers (no per-frame Python objects).
    """

    def __init__(self, codec: str = DEFAULT_CODEC, frame_shape: tuple[int, int, int] = (3, 84, 84)):
        self.codec = codec
        self.spec = codec_spec(codec)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.frame_bytes = int(np.prod(self.frame_shape))
        self._chunks: list[EncodedFrames] = []
        self._payloads: list[np.ndarray] = []
        self.addr = np.zeros(0, np.int64)
        """int64 [F]: address of each frame's bytes"""
        self.size = np.zeros(0, np.int64)
        """int64 [F]: number of bytes of each frame"""
        self._payload_bytes = 0

    def __len__(self) -> int:
        return int(self.size.shape[0])

    def append(self, enc: EncodedFrames) -> None:
        if enc.codec != self.codec or tuple(enc.frame_shape) != self.frame_shape:
            raise ValueError(
                f"chunk is {enc.codec} {enc.frame_shape}, episode is {self.codec} {self.frame_shape}"
            )
        if enc.first_frame != len(self):
            raise ValueError(f"chunk starts at frame {enc.first_frame}, expected {len(self)}")
        if len(enc) == 0:
            return
        payload = np.frombuffer(enc.payload, np.uint8)
        sizes = np.asarray(enc.sizes)
        # each size in 1..payload first, so that the sum cannot wrap around
        if sizes.min() < 1 or sizes.max() > payload.size or int(sizes.sum()) != payload.size:
            raise ValueError("chunk sizes do not add up to its payload")
        sizes = sizes.astype(np.int64)
        if self.spec.structure == "raw" and (sizes != self.frame_bytes).any():
            raise ValueError(f"raw frames must be {self.frame_bytes} bytes each")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        base = payload.ctypes.data if payload.size else 0
        self._chunks.append(enc)
        self._payloads.append(payload)
        self.addr = np.concatenate([self.addr, base + starts])
        self.size = np.concatenate([self.size, sizes])
        self._payload_bytes += payload.size

    def payload_and_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """All frames' bytes as one uint8 array (a view when one chunk holds them all, else a
        copy) and int64 sizes per frame: with ``first_frame=0`` they form one
        :class:`EncodedFrames` that rebuilds this episode."""
        if len(self._payloads) == 1:
            return self._payloads[0], self.size
        if not self._payloads:
            return np.zeros(0, np.uint8), self.size
        return np.concatenate(self._payloads), self.size

    def chunks(self) -> list[EncodedFrames]:
        """What was appended, in order (for snapshots: re-append to rebuild)."""
        return list(self._chunks)

    def __getstate__(self) -> dict[str, Any]:
        return {"codec": self.codec, "shape": self.frame_shape, "chunks": self._chunks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["codec"], state["shape"])
        for enc in state["chunks"]:
            self.append(enc)

    def nbytes(self) -> int:
        """Payload plus the per-frame index (address and size, 16 B per frame)."""
        return self._payload_bytes + 16 * len(self)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``[N, C, H, W]``."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            return np.empty((0, *self.frame_shape), np.uint8)
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"frame index out of range 0..{len(self) - 1}")
        return decode_windows([self], np.zeros(1, np.int64), indices[None, :])[0]


def _reconstruct_numpy(
    src: np.ndarray,
    size: np.ndarray,
    home: np.ndarray,
    ref_home: np.ndarray,
    buf: np.ndarray,
    rgb: bool,
    by_dict: bool = False,
) -> None:
    """Item ``i`` (LZ4 block of ``size[i]`` bytes at address ``src[i]``) becomes frame
    ``buf[home[i]]``. Residual coding: decompress, undo the channel transform, add
    ``buf[ref_home[i]]`` (if >= 0). Dictionary coding: decompress with ``buf[ref_home[i]]``
    (still channel-transformed) as dictionary; the inverse transform comes last, on every row.
    Items come in reference order (a reference is reconstructed before its users)."""
    width = buf.shape[1]
    base = buf.ctypes.data
    for a, n, h, r in zip(
        src.tolist(), size.tolist(), home.tolist(), ref_home.tolist(), strict=True
    ):
        if by_dict and r >= 0:
            got = lz4_decompress_dict(a, base + h * width, n, width, base + r * width, width)
        else:
            got = lz4_decompress(a, base + h * width, n, width)
        if got != width:
            raise ValueError("corrupt LZ4 frame in replay")
    if rgb:
        _from_planes_(buf.reshape(buf.shape[0], 3, -1))
    if by_dict:  # whole frames already: no residuals to add
        return
    rows = np.flatnonzero(ref_home >= 0)
    if rows.size == 0:
        return
    # level by level: an item's reference has a smaller level
    level = np.zeros(home.size, np.int64)
    ref_item = np.full(home.size, -1, np.int64)
    item_of_home = np.full(buf.shape[0], -1, np.int64)
    item_of_home[home] = np.arange(home.size)
    ref_item[rows] = item_of_home[ref_home[rows]]
    for i in rows.tolist():  # items are in reference order
        level[i] = level[ref_item[i]] + 1
    for d in range(1, int(level.max()) + 1):
        sel = home[level == d]
        buf[sel] += buf[ref_home[level == d]]


_reconstruct: Any = None
"""decodes a plan's items into the rows of one array; None: numba's kernel when numba is
there, else the numpy version (tests set it to the one they check)"""


def _reconstructor() -> Any:
    """What decodes a plan's items: :data:`_reconstruct` if set, else the default."""
    if _reconstruct is not None:
        return _reconstruct
    k = kernels()
    return k.reconstruct_numba if k is not None else _reconstruct_numpy


def undecodable_frame(
    codec: str,
    frame_shape: tuple[int, ...],
    first_frame: int,
    payload: bytes | np.ndarray,
    sizes: np.ndarray,
) -> int:
    """Index (within ``sizes``) of the first frame that does not decode, -1 if all do.

    Frame ``first_frame + i`` is the ``sizes[i]`` bytes of ``payload`` after the earlier
    frames'. Each frame is LZ4-decoded once into scratch space, with a dictionary of one frame
    where the codec decodes it against its reference: whether an LZ4 block decodes to exactly
    one frame depends on its own bytes and the dictionary's size only, never on the content, so
    a frame that passes here decodes at sample time too. About 5-10 us per 84x84 RGB frame.
    The caller has checked that the sizes are positive and add up to the payload, and
    that the frame is at most :data:`MAX_FRAME_BYTES`.
    """
    spec = codec_spec(codec)
    width = int(np.prod(frame_shape))
    sizes = np.asarray(sizes, np.int64)
    if not sizes.size:
        return -1
    if spec.structure == "raw":
        wrong = np.flatnonzero(sizes != width)
        return int(wrong[0]) if wrong.size else -1
    # a block cannot decode to more than 255 bytes per byte: too small is undecodable, and no
    # scratch space is allocated for a frame size that the bytes cannot justify
    short = np.flatnonzero(sizes * _LZ4_MAX_RATIO + 64 < width)
    if short.size:
        return int(short[0])
    data = np.frombuffer(payload, np.uint8)
    src = data.ctypes.data + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    has_ref = reference_frames(spec, np.arange(first_frame, first_frame + sizes.size)) >= 0
    work = np.zeros((2, width), np.uint8)
    return int(check_blocks(src, sizes, has_ref, work, spec.by_dict(width)))


@dataclass
class _Plan:
    """What :func:`decode_windows` decodes: LZ4 items in reference order, each with a *home*
    row (virtual rows ``0 .. nrows - 1`` are the output ``[B * W]``, later ones scratch)."""

    spec: CodecSpec
    shape: tuple[int, ...]
    frame_bytes: int
    nrows: int
    nscratch: int
    src: np.ndarray
    size: np.ndarray
    frame: np.ndarray
    """each item's frame, numbered over the concatenated episodes"""
    home: np.ndarray
    ref_home: np.ndarray
    dup: np.ndarray
    """output rows that copy another output row (the same frame twice in a window)"""
    dup_src: np.ndarray
    item_end: np.ndarray
    """int64 [B]: items of window ``b`` end before ``item_end[b]`` (items are window-major)"""
    dup_end: np.ndarray
    """int64 [B]: the same for ``dup``"""


def _plan(
    episodes: list[EpisodeFrames],
    episode_idx: np.ndarray,
    frame_idx: np.ndarray,
    reuse_scratch: bool = False,
) -> tuple[_Plan | None, np.ndarray, np.ndarray]:
    """The plan (None for raw storage or an empty batch), the frames' global addresses and
    sizes (raw storage) and the frame indices in the concatenated tables.

    With ``reuse_scratch`` every window's scratch frames use the same few rows (items come
    window by window and only refer to their own window), so that they stay in the CPU caches:
    for decoders that finish one item before starting the next."""
    nb, nw = frame_idx.shape
    first = episodes[int(episode_idx[0])]
    spec, fb = first.spec, first.frame_bytes
    uniq, inv = np.unique(episode_idx, return_inverse=True)
    tables = [episodes[int(u)] for u in uniq]
    base = np.concatenate([[0], np.cumsum([len(e) for e in tables])[:-1]])[inv]
    addr = np.concatenate([e.addr for e in tables])
    size = np.concatenate([e.size for e in tables])
    if spec.structure == "raw":
        return None, addr, (base[:, None] + frame_idx).reshape(-1)

    # closure of every window: its frames and their reference ancestors, all >= lo[b]
    lo = frame_idx.min(axis=1)
    lo -= lo % spec.group
    span = int((frame_idx.max(axis=1) - lo).max()) + 1
    mask = np.zeros((nb, span), bool)
    rows = np.repeat(np.arange(nb), nw)
    cur = frame_idx.reshape(-1)
    for _ in range(_max_depth(spec) + 1):
        mask[rows, cur - lo[rows]] = True
        cur = reference_frames(spec, cur)
        live = cur >= 0
        if not live.any():
            break
        rows, cur = rows[live], cur[live]
    item_b, item_off = np.nonzero(mask)  # window-major, frame ascending: references come first
    item_t = item_off + lo[item_b]
    rowmap = np.cumsum(mask.ravel()).reshape(nb, span) - 1

    # every needed frame gets a home row: its first output row, or a scratch row after them
    n = item_t.size
    pos = rowmap[np.arange(nb)[:, None], frame_idx - lo[:, None]].reshape(-1)
    nrows = nb * nw
    home = np.full(n, nrows, np.int64)
    np.minimum.at(home, pos, np.arange(nrows))
    scratch = np.flatnonzero(home == nrows)
    if reuse_scratch and scratch.size:
        # rank of each scratch item within its window (items are window-major)
        b = item_b[scratch]
        rank = np.arange(scratch.size) - np.searchsorted(b, b)
        home[scratch] = nrows + rank
        nscratch = int(rank.max()) + 1
    else:
        home[scratch] = nrows + np.arange(scratch.size)
        nscratch = int(scratch.size)
    ref_t = reference_frames(spec, item_t)
    ref_home = np.where(
        ref_t >= 0, home[rowmap[item_b, np.where(ref_t >= 0, ref_t, item_t) - lo[item_b]]], -1
    )
    glob = base[item_b] + item_t
    dup = np.flatnonzero(home[pos] != np.arange(nrows))
    plan = _Plan(
        spec=spec,
        shape=first.frame_shape,
        frame_bytes=fb,
        nrows=nrows,
        nscratch=nscratch,
        src=addr[glob],
        size=size[glob],
        frame=glob,
        home=home,
        ref_home=ref_home,
        dup=dup,
        dup_src=home[pos[dup]],
        item_end=np.searchsorted(item_b, np.arange(nb), side="right"),
        dup_end=np.searchsorted(dup // nw, np.arange(nb), side="right"),
    )
    return plan, addr, glob


def decode_windows(
    episodes: list[EpisodeFrames], episode_idx: np.ndarray, frame_idx: np.ndarray
) -> np.ndarray:
    """Decode ``frame_idx[b]`` of ``episodes[episode_idx[b]]`` for every row ``b``.

    ``frame_idx`` is int ``[B, W]`` (typically W consecutive, clamped frames); the result is
    uint8 ``[B, W, C, H, W]``. All episodes must share codec and frame shape. Indices are
    not bounds-checked here (the sampler's job); :meth:`EpisodeFrames.decode` checks them.
    """
    episode_idx = np.asarray(episode_idx, dtype=np.int64).reshape(-1)
    frame_idx = np.asarray(frame_idx, dtype=np.int64)
    nb, nw = frame_idx.shape
    first = episodes[int(episode_idx[0])] if nb else None
    shape = first.frame_shape if first is not None else (0, 0, 0)
    out = np.empty((nb, nw, *shape), np.uint8)
    if nb == 0 or nw == 0:
        return out
    plan, addr, glob = _plan(episodes, episode_idx, frame_idx)
    if plan is None:  # raw storage: copy the bytes
        fb = first.frame_bytes
        flat = out.reshape(nb * nw, fb)
        dst = flat.ctypes.data
        for i, a in enumerate(addr[glob].tolist()):
            ctypes.memmove(dst + i * fb, a, fb)
        return out
    buf = np.empty((plan.nrows + plan.nscratch, plan.frame_bytes), np.uint8)
    by_dict = plan.spec.by_dict(plan.frame_bytes)
    _reconstructor()(plan.src, plan.size, plan.home, plan.ref_home, buf, shape[0] == 3, by_dict)
    if plan.dup.size:
        buf[plan.dup] = buf[plan.dup_src]
    return buf[: plan.nrows].reshape(out.shape)


def decode_windows_into(
    episodes: list[EpisodeFrames],
    episode_idx: np.ndarray,
    frame_idx: np.ndarray,
    outs: tuple[np.ndarray, ...],
    scratch: np.ndarray | None = None,
) -> np.ndarray | None:
    """:func:`decode_windows` straight into caller-owned arrays (no output allocation or copy).

    ``outs`` are one or two C-contiguous uint8 arrays of ``B * w_i`` frames each (for example
    ``obs`` and ``next_obs`` of a batch, ``[B, k * C, H, W]``) with ``sum(w_i) == W``: columns
    ``0 .. w_0 - 1`` of ``frame_idx`` fill ``outs[0]`` (``[B, w_0, C, H, W]`` in C order), the
    next ``w_1`` columns ``outs[1]``. ``scratch`` is an optional uint8 work array for the
    reference frames outside the windows, reused when big enough; the scratch array used is
    returned so that the caller can pass it again (None if none was needed).
    """
    episode_idx = np.asarray(episode_idx, dtype=np.int64).reshape(-1)
    frame_idx = np.asarray(frame_idx, dtype=np.int64)
    nb, nw = frame_idx.shape
    if not 1 <= len(outs) <= 2:
        raise ValueError(f"decode_windows_into takes one or two output arrays, got {len(outs)}")
    if nb == 0 or nw == 0:
        return scratch
    fb = episodes[int(episode_idx[0])].frame_bytes
    widths = _output_widths(outs, nb, fb)
    if sum(widths) != nw:
        raise ValueError(f"outputs hold {sum(widths)} frames per window, frame_idx has {nw}")
    plan = None
    if _reconstruct is None and kernels() is not None:  # the default: numba's
        plan = plan_into(episodes, episode_idx, frame_idx, tuple(widths))
    if plan is None:
        # raw storage, no numba, or a test's reconstructor: decode, then copy
        frames = decode_windows(episodes, episode_idx, frame_idx)
        start = 0
        for out, width in zip(outs, widths, strict=True):
            out.reshape(nb, width, fb)[...] = frames[:, start : start + width].reshape(
                nb, width, fb
            )
            start += width
        return scratch
    return run_plan(plan, outs, scratch)


def _output_widths(outs: tuple[np.ndarray, ...], windows: int, frame_bytes: int) -> list[int]:
    """Frames per window of each output array (ValueError unless C-contiguous uint8 arrays of
    a whole number of frames per window)."""
    widths = []
    for out in outs:
        if (
            out.dtype != np.uint8
            or not out.flags.c_contiguous
            or out.size % (windows * frame_bytes)
        ):
            raise ValueError("outputs must be C-contiguous uint8 arrays of B * w frames")
        widths.append(out.size // (windows * frame_bytes))
    return widths


@dataclass
class WindowPlan:
    """A batch's windows as the decoding kernel takes them: every LZ4 item (a frame decoded
    for one window) with the address and size of its bytes and its placement.

    Placement tables (int64 ``[4, n]``, rows ``DEST_ARRAY``, ``DEST_ROW``, ``SRC_ARRAY``,
    ``SRC_ROW`` of :mod:`distdrq.replay.lz4decode`) name rows of the output arrays (``FIRST``,
    ``SECOND``: window ``b``'s ``widths[i]`` frames are rows ``b * widths[i] ..``) or of a
    scratch array of ``scratch_rows`` rows that each window reuses."""

    src: np.ndarray
    """int64 [n]: address of each item's bytes"""
    size: np.ndarray
    """int64 [n]: bytes of each item"""
    frame: np.ndarray
    """int64 [n]: each item's frame, numbered over the batch's episodes (equal: same bytes)"""
    items: np.ndarray
    """placement table of the items: destination, and the reference decoded against"""
    copies: np.ndarray
    """placement table of output rows that repeat another row of their window"""
    item_end: np.ndarray
    """int64 [B]: window ``b``'s items end before ``item_end[b]`` (items are window-major)"""
    copy_end: np.ndarray
    """int64 [B]: the same for ``copies``"""
    widths: tuple[int, ...]
    """frames per window in each output array"""
    scratch_rows: int
    frame_bytes: int
    rgb: bool
    """frames are channel-transformed RGB"""
    by_dict: bool
    """predicted frames are LZ4-coded with their reference as dictionary"""

    @property
    def windows(self) -> int:
        return int(self.item_end.size)


def plan_into(
    episodes: list[EpisodeFrames],
    episode_idx: np.ndarray,
    frame_idx: np.ndarray,
    widths: tuple[int, ...],
) -> WindowPlan | None:
    """The :class:`WindowPlan` that decodes ``frame_idx[b]`` of ``episodes[episode_idx[b]]``
    (as :func:`decode_windows` does) into output arrays of ``widths`` frames per window (one
    or two, summing to ``W``); None for raw storage. At least one window."""
    nw = frame_idx.shape[1]
    plan, _, _ = _plan(episodes, episode_idx, frame_idx, reuse_scratch=True)
    if plan is None:
        return None
    # the kernel addresses a frame as (array, row): plan rows 0 .. nrows - 1 are window b's
    # column j, which lies in output FIRST or SECOND; rows from nrows on are SCRATCH rows
    width_arr = np.array(widths)
    col_array = FIRST + np.repeat(np.arange(len(widths)), widths)
    col_offset = np.arange(nw) - np.repeat(np.cumsum(width_arr) - width_arr, widths)
    col_width = width_arr[col_array - FIRST]

    def locate(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        in_scratch = rows >= plan.nrows
        b, j = np.divmod(np.clip(rows, 0, plan.nrows - 1), nw)
        array = np.where(in_scratch, SCRATCH, col_array[j])
        row = np.where(in_scratch, rows - plan.nrows, b * col_width[j] + col_offset[j])
        return np.where(rows < 0, NOWHERE, array), row

    def placement(dest: np.ndarray, source: np.ndarray) -> np.ndarray:
        table = np.empty((4, dest.size), np.int64)
        table[DEST_ARRAY], table[DEST_ROW] = locate(dest)
        table[SRC_ARRAY], table[SRC_ROW] = locate(source)
        return table

    return WindowPlan(
        src=plan.src,
        size=plan.size,
        frame=plan.frame,
        items=placement(plan.home, plan.ref_home),  # each item, decoded against its reference
        copies=placement(plan.dup, plan.dup_src),  # output rows that repeat another
        item_end=plan.item_end,
        copy_end=plan.dup_end,
        widths=tuple(int(w) for w in widths),
        scratch_rows=plan.nscratch,
        frame_bytes=plan.frame_bytes,
        rgb=plan.shape[0] == 3,
        by_dict=plan.spec.by_dict(plan.frame_bytes),
    )


def run_plan(
    plan: WindowPlan,
    outs: tuple[np.ndarray, ...],
    scratch: np.ndarray | None = None,
    windows: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """Decode ``plan``'s windows ``windows = (lo, hi)`` (default: all) into ``outs`` (as
    :func:`decode_windows_into` takes them; rows of other windows are not touched), with
    ``scratch`` as work space when big enough; returns the scratch array used. Needs numba.
    Disjoint window ranges may run at once on several threads, each with its own scratch."""
    k = kernels()
    if k is None:
        raise RuntimeError("decoding into output arrays needs numba (pip install numba)")
    fb = plan.frame_bytes
    if tuple(_output_widths(outs, plan.windows, fb)) != plan.widths:
        raise ValueError(f"outputs must hold {plan.widths} frames per window")
    lo, hi = (0, plan.windows) if windows is None else windows
    need = plan.scratch_rows * fb
    if need and (scratch is None or scratch.size < need):
        scratch = np.empty(max(need, 2 * (scratch.size if scratch is not None else 0)), np.uint8)
    work = scratch[:need] if scratch is not None else np.empty(0, np.uint8)
    arrays = [out.reshape(-1, fb) for out in outs]
    if len(arrays) == 1:
        arrays.append(np.empty((0, fb), np.uint8))
    failed = k.reconstruct_into(
        plan.src,
        plan.size,
        plan.items,
        plan.copies,
        arrays[0],
        arrays[1],
        work.reshape(-1, fb),
        plan.rgb,
        plan.by_dict,
        plan.item_end,
        plan.copy_end,
        lo,
        hi,
    )
    if failed >= 0:
        raise ValueError("corrupt LZ4 frame in replay")
    return scratch
