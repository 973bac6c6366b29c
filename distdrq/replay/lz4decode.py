"""The LZ4 decoding kernels of the frame codec (:mod:`distdrq.replay.codec`).

Every kernel takes *items*: item ``i`` is the LZ4 block of one frame, ``size[i]`` bytes at
address ``src[i]``, that decodes to exactly one frame of ``width`` bytes. Items come in
reference order: a frame's reference is decoded before the frame.

- ``reconstruct_numba`` (:func:`kernels`) decodes items into the rows of one work array (``buf[home[i]]``,
  against ``buf[ref_home[i]]``), as ``_reconstruct_numpy`` of :mod:`distdrq.replay.codec` does;
- ``reconstruct_into`` (numba only) decodes them straight into a batch's two output arrays
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
our arrays and dictionaries are read where they lie. The kernels live in
:mod:`distdrq.replay.lz4kernels`, imported on first use (:func:`kernels`), so that a process that
never decodes (an env actor, an empty shard) never loads numba.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

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


_KERNELS: Any = None
_LOADED = False
_LOCK = threading.Lock()


def kernels() -> Any | None:
    """The numba kernels (:mod:`distdrq.replay.lz4kernels`: ``reconstruct_numba``,
    ``reconstruct_into``, ``check_blocks``, ``gather_bytes``), imported and compiled on the
    first call; None without numba (then the NumPy versions here are used)."""
    global _KERNELS, _LOADED
    if not _LOADED:
        with _LOCK:
            if not _LOADED:
                try:
                    from distdrq.replay import lz4kernels as loaded
                except ImportError:  # pragma: no cover - numba is a dependency
                    loaded = None
                _KERNELS, _LOADED = loaded, True
    return _KERNELS


def gather_bytes(src: np.ndarray, size: np.ndarray, offset: np.ndarray, out: np.ndarray) -> None:
    """Copy ``size[i]`` bytes from address ``src[i]`` to ``out[offset[i]:]`` for every ``i``
    (the caller has checked that they fit)."""
    k = kernels()
    (k.gather_bytes if k is not None else _gather_numpy)(src, size, offset, out)


def check_blocks(
    src: np.ndarray, size: np.ndarray, has_ref: np.ndarray, work: np.ndarray, by_dict: bool
) -> int:
    """Index of the first item whose block does not decode to exactly one frame (-1: none),
    decoded into ``work[1]`` with ``work[0]`` as dictionary where ``by_dict and has_ref[i]``."""
    k = kernels()
    return int(
        (k.check_blocks if k is not None else _check_numpy)(src, size, has_ref, work, by_dict)
    )
