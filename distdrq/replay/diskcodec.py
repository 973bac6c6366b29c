"""Compact lossless coding of whole episodes for disk (replay snapshots and checkpoints).

On disk, decode speed matters little and every byte counts, so episodes are stored with a
context-modelling arithmetic coder instead of the replay's per-frame LZ4 blocks (which exist
for sampling speed). One call codes all frames of an episode:

- Channels: for RGB frames the green plane is coded first and red and blue as differences to
  green (``R - G``, ``B - G``, mod 256), as in :mod:`distdrq.replay.codec`.
- Prediction: frame 0 predicts each pixel from its left, upper and upper-left neighbours (the
  median edge detector of LOCO-I). A later frame picks, per pixel, one of four predictors: the
  same pixel in the previous frame; that plus the change of the left neighbour; that plus the
  change of the upper neighbour; the median edge detector on this frame. The pick is the
  predictor whose errors at the four causal neighbours (left, up, upper-left, upper-right) add
  up to the least, so the decoder makes the same pick without side information: still
  background takes the first, a floor scrolling under the tracking camera the second or third,
  newly revealed content the last. The error ``e`` (mod 256, read as -128..127) is coded.
- Contexts: the errors already coded around the pixel (left, up, upper-left, upper-right), the
  error at the same pixel of the previous frame, and (red, blue) the green error at the pixel,
  each quantised; walker's floor changes a third of the pixels every frame, but those changes
  come in regions, and the contexts learn where.
- Binarisation: ``e == 0``; sign; the exponent ``floor(log2 |e|)`` in unary; the mantissa bits
  (the top two with their own contexts). Each binary decision is coded with an adaptive 12-bit
  probability by an LZMA-style range coder (carry propagation through a cached byte).

Encoder and decoder are one numba kernel run in two directions, so they cannot drift apart.
A blob carries a header (format, shape, method) and the CRC32 of the frames; decoding checks
it, so a damaged blob is an error, never wrong frames. Data that the model would expand is
stored plainly (method 1).

Speed on this 2-core machine: about 0.6-0.8 ms per 84x84 RGB frame to encode, 0.5-0.7 ms to
decode (single thread, numba); ratios in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from typing import Any

import numpy as np

from distdrq.replay.codec import _from_planes_, _to_planes

MAGIC = b"DCM"
VERSION = 1
_HEADER = struct.Struct("<3sBBIHHHI")  # magic, version, method, frames, C, H, W, crc32
METHOD_CM = 0
METHOD_STORED = 1
_PROB_BITS = 12
_ADAPT = 5
_NQ = 12  # quantisation levels of a context value
_MAX_PIXELS_PER_BYTE = 1024
"""the model codes each pixel with at least one binary decision costing at least
-log2(4065/4096) bits, so a body byte holds at most ~730 pixels (measured: 727 for constant
frames); a header claiming more than this many pixels per body byte is refused"""
_CM_MAX_CHANNELS = 16
_CM_MAX_FRAME = 1 << 24
"""frames with more channels or bytes are stored plainly (the decoder's work arrays grow with
the frame, its context tables with the channels)"""


def _quantise(a):  # pragma: no cover - jitted
    if a == 0:
        return 0
    if a <= 1:
        return 1
    if a <= 2:
        return 2
    if a <= 4:
        return 3
    if a <= 6:
        return 4
    if a <= 9:
        return 5
    if a <= 14:
        return 6
    if a <= 22:
        return 7
    if a <= 36:
        return 8
    if a <= 60:
        return 9
    if a <= 100:
        return 10
    return 11


# The range coder's state: one int64 array, so that the jitted helpers update it in place, read
# through these names. The coder narrows an interval [low, low + range) of 32-bit numbers for each
# binary decision, emitting (encoder) or reading (decoder) a byte whenever range drops below 2^24.
_LOW = 0
"""encoder: low end of the interval (33 bits: bit 32 is a carry into bytes already emitted)"""
_CODE = 0
"""decoder: the code value read so far, relative to the interval's low end"""
_RANGE = 1
"""width of the interval, kept in [2^24, 2^32)"""
_CACHE = 2
"""encoder: the last byte computed but held back, since a carry may still add 1 to it"""
_CACHE_SIZE = 3
"""encoder: 1 + the number of 0xFF bytes held back after the cached byte (a carry flips them)"""
_POS = 4
"""bytes written (encoder) or read (decoder) so far"""
_CODER_FIELDS = 5


def _shift_low(coder, buf):  # pragma: no cover - jitted
    """Range encoder: move the top byte of ``low`` out. A byte below 0xFF (or a carry) settles
    the cached byte and the 0xFF bytes after it, which are written (plus the carry); a 0xFF
    byte without carry is held back too, as a later carry would turn it into 0x00."""
    low = coder[_LOW]
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        byte = coder[_CACHE]
        while True:
            if coder[_POS] < buf.size:
                buf[coder[_POS]] = (byte + carry) & 0xFF
            coder[_POS] += 1
            byte = 0xFF
            coder[_CACHE_SIZE] -= 1
            if coder[_CACHE_SIZE] == 0:
                break
        coder[_CACHE] = (low >> 24) & 0xFF
    coder[_CACHE_SIZE] += 1
    coder[_LOW] = (low & 0x00FFFFFF) << 8


def _bit(coder, buf, probs, idx, bit, decode):  # pragma: no cover - jitted
    """Code one binary decision with adaptive probability ``probs[idx]`` (of a 0, in units of
    2^-12): the interval is split at ``bound``, 0 below and 1 above, then the probability moves
    1/32 of the way towards the decision.

    Encoding writes ``bit`` and returns it; decoding ignores ``bit`` and returns the decoded
    one. ``coder``: the range coder's state (``_LOW`` ... ``_POS``)."""
    p = probs[idx]
    rng = coder[_RANGE]
    bound = (rng >> _PROB_BITS) * p
    if decode:
        if coder[_CODE] < bound:
            coder[_RANGE] = bound
            probs[idx] = p + (((1 << _PROB_BITS) - p) >> _ADAPT)
            bit = 0
        else:
            coder[_CODE] -= bound
            coder[_RANGE] = rng - bound
            probs[idx] = p - (p >> _ADAPT)
            bit = 1
        while coder[_RANGE] < (1 << 24):  # renormalise: read the next byte
            coder[_RANGE] <<= 8
            byte = buf[coder[_POS]] if coder[_POS] < buf.size else 0
            coder[_POS] += 1
            coder[_CODE] = ((coder[_CODE] << 8) | byte) & 0xFFFFFFFF
    else:
        if bit == 0:
            coder[_RANGE] = bound
            probs[idx] = p + (((1 << _PROB_BITS) - p) >> _ADAPT)
        else:
            coder[_LOW] += bound
            coder[_RANGE] = rng - bound
            probs[idx] = p - (p >> _ADAPT)
        while coder[_RANGE] < (1 << 24):  # renormalise: emit a byte
            coder[_RANGE] <<= 8
            _shift_low(coder, buf)
    return bit


def _med(a, b, c):  # pragma: no cover - jitted
    if c >= max(a, b):
        return min(a, b)
    if c <= min(a, b):
        return max(a, b)
    return a + b - c


_NPRED = 4


def _predict(planes, f, c, y, x, k):  # pragma: no cover - jitted
    """Predictor ``k`` of pixel (y, x) of frame f > 0, plane c, from the previous frame and
    the causal neighbours: 0 the same pixel before; 1 and 2 that plus the change of the left
    (upper) neighbour; 3 the median edge detector on this frame."""
    before = np.int32(planes[f - 1, c, y, x])
    if k == 0 or x == 0 or y == 0:
        return before
    if k == 1:
        return np.int32(planes[f, c, y, x - 1]) + before - np.int32(planes[f - 1, c, y, x - 1])
    if k == 2:
        return np.int32(planes[f, c, y - 1, x]) + before - np.int32(planes[f - 1, c, y - 1, x])
    return _med(
        np.int32(planes[f, c, y, x - 1]),
        np.int32(planes[f, c, y - 1, x]),
        np.int32(planes[f, c, y - 1, x - 1]),
    )


def _make_kernel(decode):
    def kernel(planes, buf):  # pragma: no cover - jitted
        """Code ``planes`` (uint8 [F, C, H, W], channel-transformed) into ``buf`` (encode; returns
        the bytes written, which exceed ``buf.size`` when it was too small) or decode ``buf`` into
        ``planes`` (returns the bytes consumed)."""
        nf, nc, h, w = planes.shape
        coder = np.zeros(_CODER_FIELDS, np.int64)
        coder[_RANGE] = 0xFFFFFFFF
        if decode:  # 5 bytes: the first (the encoder's initial cache, 0) shifts out of the 32 bits
            for _ in range(5):
                byte = buf[coder[_POS]] if coder[_POS] < buf.size else 0
                coder[_POS] += 1
                coder[_CODE] = ((coder[_CODE] << 8) | byte) & 0xFFFFFFFF
        else:
            coder[_CACHE_SIZE] = 1
        # Adaptive probabilities, all starting at 1/2. A context `ctx` is (intra or not,
        # channel, quantised activity of the errors around, quantised side error), nctx in all:
        # p_zero[ctx]: e == 0; p_sign[ctx * 3 + s]: e < 0, s the sign of the left plus upper
        # errors; p_exp[ctx * 8 + k]: |e| >= 2^(k + 1), given |e| >= 2^k (a unary exponent);
        # p_man: the mantissa bits below the exponent's, per (channel, exponent): the top two by
        # the bits before them (prefix v, 1..7), the others by their position j (0..7).
        nctx = 2 * nc * _NQ * _NQ
        half = np.int32(1 << (_PROB_BITS - 1))
        p_zero = np.full(nctx, half, np.int32)
        p_sign = np.full(nctx * 3, half, np.int32)
        p_exp = np.full(nctx * 8, half, np.int32)
        p_man = np.full(nc * 8 * 2 * 8, half, np.int32)
        # errors of the current frame, zero-padded (row -1, columns -1 and w), and of the previous
        cur_err = np.zeros((nc, h + 1, w + 2), np.int32)
        prev_err = np.zeros((nc, h, w), np.int32)
        errs = np.zeros((_NPRED, nc, h, w), np.int32)  # |error| of each predictor, this frame
        order = np.arange(nc)
        if nc == 3:
            order[0], order[1] = 1, 0  # green first, then red and blue
        first = order[0]
        for f in range(nf):
            intra = 1 if f == 0 else 0
            for ci in range(nc):
                c = order[ci]
                for y in range(h):
                    for x in range(w):
                        # predict the pixel: the median edge detector in frame 0, else the
                        # predictor whose errors were smallest around it (decoder: the same)
                        if intra:
                            a = np.int32(planes[f, c, y, x - 1]) if x > 0 else 0
                            b = np.int32(planes[f, c, y - 1, x]) if y > 0 else a
                            d = np.int32(planes[f, c, y - 1, x - 1]) if x > 0 and y > 0 else b
                            if x == 0 and y > 0:
                                a = b
                                d = b
                            pred = _med(a, b, d)
                        elif y > 0 and 0 < x < w - 1:
                            # the predictor with the smallest errors at the four causal neighbours
                            best, choice = 1 << 30, 0
                            for k in range(_NPRED):
                                err = (
                                    errs[k, c, y, x - 1]
                                    + errs[k, c, y - 1, x]
                                    + errs[k, c, y - 1, x - 1]
                                    + errs[k, c, y - 1, x + 1]
                                )
                                if err < best:
                                    best, choice = err, k
                            pred = _predict(planes, f, c, y, x, choice)
                        else:
                            pred = np.int32(planes[f - 1, c, y, x])
                        # context: errors left, up, upper-left, upper-right of this frame,
                        # the same pixel's in the previous frame, green's here (red and blue)
                        el = cur_err[c, y + 1, x]
                        eu = cur_err[c, y, x + 1]
                        eul = cur_err[c, y, x]
                        eur = cur_err[c, y, x + 2]
                        act = abs(el) + abs(eu) + (abs(eul) + abs(eur)) // 2
                        side = abs(prev_err[c, y, x])
                        if nc == 3 and ci > 0:
                            side += abs(cur_err[first, y + 1, x + 1])
                        ctx = ((intra * nc + ci) * _NQ + _quantise(act)) * _NQ + _quantise(side)
                        e = 0
                        if not decode:
                            e = (np.int32(planes[f, c, y, x]) - pred) & 0xFF
                            if e >= 128:
                                e -= 256
                        # the error, binarised: zero?, sign, exponent (unary), mantissa
                        if _bit(coder, buf, p_zero, ctx, 1 if e != 0 else 0, decode):
                            around = el + eu
                            sctx = ctx * 3 + (0 if around == 0 else (1 if around > 0 else 2))
                            negative = _bit(coder, buf, p_sign, sctx, 1 if e < 0 else 0, decode)
                            m = abs(e)
                            k = 0
                            while k < 7:
                                if _bit(
                                    coder,
                                    buf,
                                    p_exp,
                                    ctx * 8 + k,
                                    1 if (m >> (k + 1)) else 0,
                                    decode,
                                ):
                                    k += 1
                                else:
                                    break
                            v = 1
                            for j in range(k - 1, -1, -1):
                                if k - 1 - j < 2:
                                    idx = ((ci * 8 + k) * 2) * 8 + v
                                else:
                                    idx = ((ci * 8 + k) * 2 + 1) * 8 + j
                                v = 2 * v + _bit(coder, buf, p_man, idx, (m >> j) & 1, decode)
                            e = -v if negative else v
                        if decode:
                            planes[f, c, y, x] = (pred + e) & 0xFF
                        e = ((e + 128) & 0xFF) - 128
                        cur_err[c, y + 1, x + 1] = e
                        if not intra:  # every predictor's error here, for the next pixels' pick
                            value = np.int32(planes[f, c, y, x])
                            for k in range(_NPRED):
                                miss = (
                                    (value - _predict(planes, f, c, y, x, k) + 128) & 0xFF
                                ) - 128
                                errs[k, c, y, x] = abs(miss)
            for c in range(nc):
                for y in range(h):
                    for x in range(w):
                        prev_err[c, y, x] = 0 if intra else cur_err[c, y + 1, x + 1]
        if not decode:  # flush: the cached byte and the four bytes of low
            for _ in range(5):
                _shift_low(coder, buf)
        return coder[_POS]

    return kernel


_KERNELS: tuple[Any, ...] | None = None
_KERNELS_LOCK = threading.Lock()


def _kernels() -> tuple[Any, ...]:
    """(encode kernel, decode kernel), jit-compiled on the first call (numba and its LLVM
    cost a process about 60 MB: a shard that has not snapshotted yet does not pay them);
    () without numba."""
    global _KERNELS, _quantise, _shift_low, _bit, _med, _predict
    if _KERNELS is None:
        with _KERNELS_LOCK:
            if _KERNELS is None:
                try:
                    import numba
                except ImportError:  # pragma: no cover - numba is a dependency
                    _KERNELS = ()
                    return _KERNELS
                jit = numba.njit(cache=True, nogil=True)
                inline = numba.njit(cache=True, nogil=True, inline="always")
                # the kernels call these by their module names: jitted before they compile
                _quantise, _med = jit(_quantise), jit(_med)
                _shift_low, _bit, _predict = inline(_shift_low), inline(_bit), inline(_predict)
                _KERNELS = (jit(_make_kernel(False)), jit(_make_kernel(True)))
    return _KERNELS


def encode_frames(frames: np.ndarray) -> np.ndarray:
    """Code uint8 frames ``[F, C, H, W]`` (one episode, in order) into a uint8 blob."""
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 frames [F, C, H, W], got {frames.dtype} {frames.shape}")
    nf, nc, h, w = frames.shape
    method, body = METHOD_STORED, frames.reshape(-1)
    modelled = nc <= _CM_MAX_CHANNELS and nc * h * w <= _CM_MAX_FRAME
    if frames.size and modelled and _kernels():
        buf = np.empty(frames.size + 64, np.uint8)
        n = int(_kernels()[0](_to_planes(frames), buf))
        if n < frames.size:
            method, body = METHOD_CM, buf[:n]
    header = _HEADER.pack(MAGIC, VERSION, method, nf, nc, h, w, zlib.crc32(frames.data))
    out = np.empty(len(header) + body.size, np.uint8)
    out[: len(header)] = np.frombuffer(header, np.uint8)
    out[len(header) :] = body
    return out


def _read_header(blob: np.ndarray | bytes) -> tuple[np.ndarray, int, tuple[int, ...], int]:
    """The blob as a flat uint8 array, its method, frame shape ``(F, C, H, W)`` and CRC32."""
    data = np.frombuffer(blob, np.uint8) if isinstance(blob, bytes | bytearray) else blob
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    if data.size < _HEADER.size:
        raise ValueError(f"disk-coded frames are truncated ({data.size} bytes)")
    magic, version, method, nf, nc, h, w, crc = _HEADER.unpack(data[: _HEADER.size].tobytes())
    if magic != MAGIC:
        raise ValueError("not disk-coded frames (bad header)")
    if version != VERSION or method not in (METHOD_CM, METHOD_STORED):
        raise ValueError(
            f"disk-coded frames of format {version}.{method}; this distdrq reads {VERSION}"
        )
    return data, method, (nf, nc, h, w), crc


def describes(blob: np.ndarray | bytes, frames: np.ndarray) -> bool:
    """Whether ``blob`` (from an earlier :func:`encode_frames`) holds exactly ``frames``: same
    shape and CRC32, checked from its header without decoding (lets snapshots reuse blobs)."""
    try:
        _, _, shape, crc = _read_header(blob)
    except ValueError:
        return False
    frames = np.ascontiguousarray(frames)
    return shape == frames.shape and crc == zlib.crc32(frames.data)


def decode_frames(blob: np.ndarray | bytes) -> np.ndarray:
    """The uint8 frames ``[F, C, H, W]`` of an :func:`encode_frames` blob; ValueError if the
    blob is damaged (CRC of the decoded frames checked).

    Never allocates more than the blob can justify: a header that claims more pixels than its
    bytes can code is an error before any allocation."""
    data, method, shape, crc = _read_header(blob)
    body = data[_HEADER.size :]
    pixels = math.prod(shape)
    if method == METHOD_STORED:
        if body.size != pixels:
            raise ValueError(f"disk-coded frames hold {body.size} bytes, expected {pixels}")
        frames = body.reshape(shape).copy()
    else:
        nf, nc, h, w = shape
        if min(shape) < 1 or nc > _CM_MAX_CHANNELS or nc * h * w > _CM_MAX_FRAME:
            raise ValueError(f"disk-coded frames have an impossible shape {list(shape)}")
        if pixels > _MAX_PIXELS_PER_BYTE * body.size:
            raise ValueError(
                f"disk-coded frames claim {pixels} pixels in {body.size} bytes (damaged header)"
            )
        if not _kernels():  # pragma: no cover
            raise ValueError("decoding disk-coded frames needs numba (pip install numba)")
        frames = np.zeros(shape, np.uint8)
        _kernels()[1](frames, body)
        _from_planes_(frames)
    if zlib.crc32(frames.data) != crc:
        raise ValueError("disk-coded frames are corrupt (checksum of the decoded frames differs)")
    return frames
