"""numba kernels of :mod:`distdrq.replay.lz4decode`, compiled on first use.

Imported by :func:`distdrq.replay.lz4decode.kernels` only when something decodes: numba and
its LLVM cost a process about 60 MB, which env actors (they only encode) and an empty replay
shard do not pay. The names it exports: ``reconstruct_numba``, ``reconstruct_into``,
``check_blocks``, ``gather_bytes`` (see that module).
"""

# ruff: noqa: E501
from __future__ import annotations

import ctypes

import numba as _numba

from distdrq.replay.lz4decode import (
    DEST_ARRAY,
    DEST_ROW,
    FIRST,
    NOWHERE,
    SECOND,
    SRC_ARRAY,
    SRC_ROW,
    lz4_decompress,
    lz4_decompress_dict,
)

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
