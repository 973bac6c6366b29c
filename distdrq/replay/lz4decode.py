"""The LZ4 decoding kernels of the frame codec (:mod:`distdrq.replay.codec`).

Every kernel takes *items*: item ``i`` is the LZ4 block of one frame, ``size[i]`` bytes at
address ``src[i]``, that decodes to exactly one frame of ``width`` bytes. Items come in
reference order: a frame's reference is decoded before the frame.

- :func:`reconstruct_numba` decodes items into the rows of one work array (``buf[home[i]]``,
  against ``buf[ref_home[i]]``), as ``_reconstruct_numpy`` of :mod:`distdrq.replay.codec` does;
- :func:`reconstruct_into` (numba only) decodes them straight into a batch's two output arrays
  and a small scratch array, window by window, as a *placement table* says (below);
- :func:`check_blocks` only tries each block: does it decode to exactly one frame?
- :func:`gather_bytes` copies items' bytes into one array (a batch's coded frames, packed to
  travel to the learner, which decodes them there).

A predicted frame is coded against its reference in one of two ways. *Residual*: the block
holds the wraparound difference to the reference; decode it, undo the channel transform
(``R += G``, ``B += G`` for RGB), add the decoded reference. *Dictionary*: the block holds the
channel-transformed frame, LZ4-coded with the channel-transformed reference as LZ4's
dictionary; decode it with the reference as dictionary, and undo the channel transform only
once no later frame needs it as a dictionary.

numba fuses decompression, channel transform and reference add into one pass per frame; the
liblz4 that the lz4 package bundles is called through ctypes, so that blocks are decoded into
our arrays and dictionaries are read where they lie.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import lz4.block as _lz4
import numpy as np

_liblz4 = ctypes.CDLL(_lz4._block.__file__)
lz4_decompress = _liblz4.LZ4_decompress_safe
"""LZ4_decompress_safe(src, dst, compressed size, dst capacity) -> bytes written or < 0"""
lz4_decompress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lz4_decompress.restype = ctypes.c_int
lz4_decompress_dict = _liblz4.LZ4_decompress_safe_usingDict
"""the same with (dictionary address, dictionary size) appended"""
lz4_decompress_dict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
lz4_decompress_dict.argtypes += [ctypes.c_void_p, ctypes.c_int]
lz4_decompress_dict.restype = ctypes.c_int

# A placement table (int64 [4, n]) says, for each of n entries, where the frame goes
# (DEST_ARRAY, DEST_ROW) and which frame it is built from (SRC_ARRAY, SRC_ROW): for a decoded
# item its reference (SRC_ARRAY NOWHERE: an intra frame), for a copy the frame it copies.
# Arrays are named FIRST and SECOND (the two output arrays) and SCRATCH.
DEST_ARRAY, DEST_ROW, SRC_ARRAY, SRC_ROW = 0, 1, 2, 3
FIRST, SECOND, SCRATCH, NOWHERE = 0, 1, 2, -1


def _check_numpy(
    src: np.ndarray, size: np.ndarray, has_ref: np.ndarray, work: np.ndarray, by_dict: bool
) -> int:
    width = work.shape[1]
    dictionary, out = work[0].ctypes.data, work[1].ctypes.data
    for i, (a, n, r) in enumerate(zip(src.tolist(), size.tolist(), has_ref.tolist(), strict=True)):
        if by_dict and r:
            got = lz4_decompress_dict(a, out, n, width, dictionary, width)
        else:
            got = lz4_decompress(a, out, n, width)
        if got != width:
            return i
    return -1


def _gather_numpy(src: np.ndarray, size: np.ndarray, offset: np.ndarray, out: np.ndarray) -> None:
    base = out.ctypes.data
    for a, n, o in zip(src.tolist(), size.tolist(), offset.tolist(), strict=True):
        ctypes.memmove(base + o, a, n)


gather_bytes: Callable[..., None] = _gather_numpy
"""``gather_bytes(src, size, offset, out)``: copy ``size[i]`` bytes from address ``src[i]`` to
``out[offset[i]:]`` for every ``i`` (the caller has checked that they fit)"""
reconstruct_numba: Callable[..., None] | None = None
"""the codec's ``_reconstruct_numpy`` in one pass per frame (None without numba)"""
reconstruct_into: Callable[..., int] | None = None
"""the window-by-window kernel writing straight into output arrays (None without numba)"""
check_blocks: Callable[..., int] = _check_numpy
"""``check_blocks(src, size, has_ref, work, by_dict)``: index of the first item whose block
does not decode to exactly one frame (-1: none), decoded into ``work[1]`` with ``work[0]`` as
dictionary where ``by_dict and has_ref[i]``"""

try:
    import numba as _numba
except ImportError:  # pragma: no cover - numba is optional
    _numba = None

if _numba is not None:
    _lz4_ptr = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_int
    )(ctypes.cast(lz4_decompress, ctypes.c_void_p).value)
    _lz4_dict_ptr = ctypes.CFUNCTYPE(
        ctypes.c_int,
        ctypes.c_ssize_t,
        ctypes.c_ssize_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_ssize_t,
        ctypes.c_int,
    )(ctypes.cast(lz4_decompress_dict, ctypes.c_void_p).value)

    @_numba.njit(nogil=True, inline="always")
    def _undo_channel_transform(frame, plane):  # pragma: no cover - jitted
        """R += G and B += G on one RGB frame (flat, ``plane`` bytes per channel). Inlined: as
        a call, this loop ran 20x slower in the by-dictionary kernel."""
        for j in range(plane):
            green = frame[plane + j]
            frame[j] += green
            frame[2 * plane + j] += green

    @_numba.njit(nogil=True)
    def _reconstruct_kernel(src, size, home, ref_home, buf, rgb, by_dict):  # pragma: no cover
        """The codec's ``_reconstruct_numpy`` in one pass per frame; returns the first item
        that does not decode (-1: none)."""
        width = buf.shape[1]
        plane = width // 3
        base = buf.ctypes.data
        if by_dict:
            for i in range(home.size):
                dest = base + home[i] * width
                if ref_home[i] >= 0:
                    dictionary = base + ref_home[i] * width
                    got = _lz4_dict_ptr(src[i], dest, size[i], width, dictionary, width)
                else:
                    got = _lz4_ptr(src[i], dest, size[i], width)
                if got != width:
                    return i
            if rgb:  # every frame decoded: none is needed as a dictionary any more
                for row in range(buf.shape[0]):
                    _undo_channel_transform(buf[row], plane)
            return -1
        for i in range(home.size):
            if _lz4_ptr(src[i], base + home[i] * width, size[i], width) != width:
                return i
            frame = buf[home[i]]
            if rgb:
                _undo_channel_transform(frame, plane)
            if ref_home[i] >= 0:
                reference = buf[ref_home[i]]
                for j in range(width):
                    frame[j] += reference[j]
        return -1

    def _reconstruct_numba(src, size, home, ref_home, buf, rgb, by_dict=False):
        if _reconstruct_kernel(src, size, home, ref_home, buf, rgb, by_dict) >= 0:
            raise ValueError("corrupt LZ4 frame in replay")

    reconstruct_numba = _reconstruct_numba

    @_numba.njit(nogil=True)
    def _frame(first, second, scratch, array, row):  # pragma: no cover - jitted
        """Row ``row`` of the array named ``array`` (FIRST, SECOND or SCRATCH)."""
        if array == FIRST:
            return first[row]
        if array == SECOND:
            return second[row]
        return scratch[row]

    @_numba.njit(nogil=True, inline="always")
    def _source(first, second, scratch, table, k):  # pragma: no cover - jitted
        return _frame(first, second, scratch, table[SRC_ARRAY, k], table[SRC_ROW, k])

    @_numba.njit(nogil=True, inline="always")
    def _dest(first, second, scratch, table, k):  # pragma: no cover - jitted
        return _frame(first, second, scratch, table[DEST_ARRAY, k], table[DEST_ROW, k])

    @_numba.njit(nogil=True, inline="always")
    def _copy(first, second, scratch, copies, k):  # pragma: no cover - jitted
        dest = _dest(first, second, scratch, copies, k)
        source = _source(first, second, scratch, copies, k)
        for j in range(dest.size):
            dest[j] = source[j]

    @_numba.njit(nogil=True)
    def _reconstruct_into_kernel(
        src, size, items, copies, first, second, scratch, rgb, by_dict, item_end, copy_end, lo, hi
    ):  # pragma: no cover - jitted
        """Decode the items of windows ``lo .. hi - 1`` (placement table ``items``: destination
        and reference of each) into ``first``, ``second`` and ``scratch`` ([rows, width] each),
        and fill their ``copies`` (placement table: an output row that repeats another, the
        same frame twice in a window). Returns the first item that does not decode (-1: none).

        Items and copies are window-major: window ``w``'s end before ``item_end[w]`` and
        ``copy_end[w]``, and refer only to their own window's rows, so disjoint window ranges
        may be decoded at once on several threads (each with scratch rows of its own).
        Dictionary coding stays in the channel-transformed domain until the window is
        complete, since later frames of the window use earlier ones as dictionaries; the
        window's output rows are transformed back at its end, while they are in cache.
        Residual coding finishes each frame at once (decode, transform back, add the
        reference)."""
        width = first.shape[1]
        plane = width // 3
        windows = item_end.size
        first_rows, second_rows = first.shape[0] // windows, second.shape[0] // windows
        i = item_end[lo - 1] if lo > 0 else 0
        k = copy_end[lo - 1] if lo > 0 else 0
        for window in range(lo, hi):
            while i < item_end[window]:
                dest = _dest(first, second, scratch, items, i)
                has_ref = items[SRC_ARRAY, i] != NOWHERE
                if by_dict and has_ref:
                    reference = _source(first, second, scratch, items, i)
                    got = _lz4_dict_ptr(
                        src[i], dest.ctypes.data, size[i], width, reference.ctypes.data, width
                    )
                else:
                    got = _lz4_ptr(src[i], dest.ctypes.data, size[i], width)
                if got != width:
                    return i
                if not by_dict:
                    if rgb:
                        _undo_channel_transform(dest, plane)
                    if has_ref:
                        reference = _source(first, second, scratch, items, i)
                        for j in range(width):
                            dest[j] += reference[j]
                i += 1
            while k < copy_end[window]:
                _copy(first, second, scratch, copies, k)
                k += 1
            if by_dict and rgb:
                for row in range(window * first_rows, (window + 1) * first_rows):
                    _undo_channel_transform(first[row], plane)
                for row in range(window * second_rows, (window + 1) * second_rows):
                    _undo_channel_transform(second[row], plane)
        return -1

    reconstruct_into = _reconstruct_into_kernel

    _memmove_ptr = ctypes.CFUNCTYPE(
        ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_size_t
    )(ctypes.cast(ctypes.memmove, ctypes.c_void_p).value)

    @_numba.njit(nogil=True)
    def _gather_kernel(src, size, offset, out):  # pragma: no cover - jitted
        base = out.ctypes.data
        for i in range(src.size):
            _memmove_ptr(base + offset[i], src[i], size[i])

    gather_bytes = _gather_kernel

    @_numba.njit(nogil=True)
    def _check_kernel(src, size, has_ref, work, by_dict):  # pragma: no cover - jitted
        width = work.shape[1]
        dictionary = work[0].ctypes.data
        out = work[1].ctypes.data
        for i in range(src.size):
            if by_dict and has_ref[i]:
                got = _lz4_dict_ptr(src[i], out, size[i], width, dictionary, width)
            else:
                got = _lz4_ptr(src[i], out, size[i], width)
            if got != width:
                return i
        return -1

    check_blocks = _check_kernel
