"""What replay accepts: every check of an inserted chunk and of a restored state, in one place.

Replay validates first and applies atomically: :func:`validate_chunk` checks a chunk whole
(types, shapes and dtypes, its place in its episode, finite values, the writer's checksum of
encoded frames, a trial decode of each frame) before the shard changes, and raises
:class:`~distdrq.replay.errors.ChunkRejected` with the reason. A restore reads a state through
:mod:`distdrq.replay.state`, whose parsing and whose frame stores call the state checks below;
any failure there becomes a :class:`~distdrq.replay.errors.ReplayStateError` before anything
replaces the shard's contents. Every message is one line.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from distdrq.replay.codec import (
    MAX_FRAME_BYTES,
    EncodedFrames,
    payload_checksum,
    undecodable_frame,
)
from distdrq.replay.errors import ChunkRejected, ReplayStateError
from distdrq.types import Batch, Chunk

if TYPE_CHECKING:
    from distdrq.replay.episodes import Episode

I64 = np.iinfo(np.int64)
MAX_ACTION_DIM = 1 << 16


# ---------------------------------------------------------------------------------------------
# values shared by chunks and states


def bad_values(
    actions: np.ndarray, rewards: np.ndarray, discounts: np.ndarray, first_step: int = 0
) -> str:
    """What is wrong with float32 per-transition values ('' if nothing): non-finite actions
    or rewards, or discounts that are not in [0, 1] (NaN included). Steps are counted from
    ``first_step``."""
    for name, values in (("actions", actions), ("rewards", rewards)):
        finite = np.isfinite(values)
        if not finite.all():
            step = int(np.argwhere(~finite)[0][0])
            value = values.reshape(len(values), -1)[step][~finite.reshape(len(values), -1)[step]][0]
            return f"{name} hold a non-finite value ({value}) at step {first_step + step}"
    inside = (discounts >= 0) & (discounts <= 1)
    if not inside.all():
        step = int(np.flatnonzero(~inside)[0])
        return f"discounts must lie in [0, 1], got {discounts[step]} at step {first_step + step}"
    return ""


def sizes_fit(sizes: np.ndarray, payload_bytes: int) -> bool:
    """Whether integer ``sizes`` are each 1..payload_bytes and add up to ``payload_bytes``
    (bounds first, so that a crafted size cannot make the sum wrap around)."""
    if not sizes.size:
        return payload_bytes == 0
    if int(sizes.min()) < 1 or int(sizes.max()) > payload_bytes:
        return False
    return int(sizes.astype(np.int64).sum()) == payload_bytes


def frame_shape_of(value: Any) -> tuple[int, ...]:
    """A frame shape from outside: three positive ints, at most MAX_FRAME_BYTES in all."""
    shape = tuple(value)
    if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in shape):
        raise ValueError(f"frame shape {shape!r:.60} is not [C, H, W] of ints")
    shape = tuple(int(x) for x in shape)
    if len(shape) != 3 or min(shape) < 1 or math.prod(shape) > MAX_FRAME_BYTES:
        raise ValueError(f"frame shape {list(shape)} is not [C, H, W] of at most 64 MiB")
    return shape


# ---------------------------------------------------------------------------------------------
# chunks


class ValidChunk(NamedTuple):
    """A chunk that :func:`validate_chunk` accepted."""

    key: int
    """its episode key, as an int"""
    episode: Episode | None
    """the stored episode it continues; None for a new episode"""
    encoded: EncodedFrames | None
    """encoded frames to store as they are, with a payload the shard owns; None: store
    ``chunk.frames``"""


def validate_chunk(
    chunk: Any,
    codec: str,
    frame_shape: tuple[int, ...] | None,
    action_dim: int | None,
    episodes: Mapping[int, Episode],
    evicted: Container[int],
) -> ValidChunk:
    """Check a chunk for a shard of ``codec`` holding ``episodes`` (by key), having evicted
    ``evicted``, whose frames and actions have ``frame_shape`` and ``action_dim`` (None before
    the first chunk); :class:`ChunkRejected` (with its reason) if anything is wrong.

    :meth:`~distdrq.replay.shard.ReplayShard.insert` says what is checked. Cheap checks come
    first; the checksum, then the decoding of every encoded frame, last.
    """
    if not isinstance(chunk, Chunk):
        raise ChunkRejected(f"expected a Chunk, got {type(chunk).__name__}", "format")
    key = chunk.episode_key
    if (
        isinstance(key, bool)
        or not isinstance(key, int | np.integer)
        or not I64.min <= int(key) <= I64.max
    ):
        raise ChunkRejected(f"chunk episode_key must be an int64, got {key!r:.40}", "format")
    key = int(key)
    actions = chunk.actions
    size = int(actions.shape[0]) if isinstance(actions, np.ndarray) and actions.ndim else 0

    def rejected(reason: str, message: str) -> ChunkRejected:
        return ChunkRejected(f"episode {key}: {message}", reason, key, size)

    # its place in its episode
    episode = episodes.get(key)
    if key in evicted:
        raise ChunkRejected(
            f"episode {key} was evicted from replay; it cannot receive chunks", "evicted", key, size
        )
    if episode is not None and episode.ended:
        raise ChunkRejected(
            f"episode {key} ended at step {episode.length}; got a chunk after its last one",
            "ended",
            key,
            size,
        )
    first_step = chunk.first_step
    if isinstance(first_step, bool) or not isinstance(first_step, int | np.integer):
        raise rejected("format", f"chunk first_step must be an int, got {first_step!r:.40}")
    if not isinstance(chunk.last, bool | np.bool_):
        raise rejected("format", f"chunk last must be a bool, got {type(chunk.last).__name__}")
    expected = 0 if episode is None else episode.length
    if first_step != expected:
        raise rejected("order", f"chunk starts at step {first_step}, expected step {expected}")

    # per-transition arrays
    for name, dtype, shape in (
        ("actions", np.float32, None),
        ("rewards", np.float32, (size,)),
        ("discounts", np.float32, (size,)),
        ("versions", np.int64, (size,)),
    ):
        value = getattr(chunk, name)
        if not isinstance(value, np.ndarray) or value.dtype != dtype:
            found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise rejected("format", f"chunk {name} must be {np.dtype(dtype)}, got {found}")
        if shape is not None and value.shape != shape:
            raise rejected("format", f"chunk {name} has shape {value.shape}, expected {shape}")
    if actions.ndim != 2 or (action_dim is not None and actions.shape[1] != action_dim):
        want = f"[{size}, {action_dim if action_dim is not None else 'A'}]"
        raise rejected("format", f"chunk actions have shape {actions.shape}, expected {want}")
    problem = bad_values(actions, chunk.rewards, chunk.discounts, expected)
    if problem:
        raise rejected("values", f"chunk {problem}")

    # frames: the transitions' (plus the reset frame for a new episode)
    want_frames = size + (1 if episode is None else 0)
    what = "transitions + 1 (the reset frame)" if episode is None else "transitions"
    if codec != "raw" and chunk.encoded is not None:
        first_frame = 0 if episode is None else len(episode.frames)
        encoded, shape = _described(chunk.encoded, rejected, codec, frame_shape, first_frame)
        if len(encoded) != want_frames:
            raise rejected(
                "format",
                f"chunk from step {expected} with {size} transitions has {len(encoded)} "
                f"encoded frames, expected {want_frames} ({what})",
            )
        return ValidChunk(key, episode, _verified(encoded, rejected, codec, shape, expected))
    frames = chunk.frames
    if (
        chunk.encoded is not None
        and isinstance(frames, np.ndarray)
        and frames.ndim
        and not len(frames)
    ):
        codec_name = getattr(chunk.encoded, "codec", "?")
        raise rejected(
            "format",
            f"chunk holds only {codec_name!r}-encoded frames and this replay stores raw frames; "
            "build ReplayShard(codec=...) with the writer's codec or use "
            "EpisodeWriter(codec='raw')",
        )
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
        found = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames)
        raise rejected("format", f"chunk frames must be uint8 [F, C, H, W], got {found}")
    if frame_shape is not None and frames.shape[1:] != frame_shape:
        raise rejected(
            "format", f"frames have shape {frames.shape[1:]}, this replay stores {frame_shape}"
        )
    if len(frames) != want_frames:
        raise rejected(
            "format",
            f"chunk from step {expected} with {size} transitions has {len(frames)} frames, "
            f"expected {want_frames} ({what})",
        )
    if frame_shape is None and (
        min(frames.shape[1:]) < 1 or math.prod(frames.shape[1:]) > MAX_FRAME_BYTES
    ):
        raise rejected("format", f"frames have shape {frames.shape[1:]}")
    return ValidChunk(key, episode, None)


def _described(
    encoded: Any,
    rejected: Any,
    codec: str,
    frame_shape: tuple[int, ...] | None,
    first_frame: int,
) -> tuple[EncodedFrames, tuple[int, ...]]:
    """``encoded`` and its frame shape, checked: its type, codec, frame shape, first frame and
    sizes array (what it says of itself, not its bytes)."""
    if not isinstance(encoded, EncodedFrames):
        raise rejected(
            "format", f"chunk.encoded must be EncodedFrames, got {type(encoded).__name__}"
        )
    if not isinstance(encoded.codec, str) or encoded.codec != codec:
        raise rejected(
            "format",
            f"chunk frames are encoded with {encoded.codec!r}, this replay stores {codec!r}",
        )
    try:
        shape = frame_shape_of(encoded.frame_shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or (frame_shape is not None and shape != frame_shape):
        want = frame_shape if frame_shape is not None else "[C, H, W]"
        raise rejected(
            "format",
            f"encoded frames have shape {encoded.frame_shape!r:.40}, this replay stores {want}",
        )
    given = encoded.first_frame
    if isinstance(given, bool) or not isinstance(given, int | np.integer) or given != first_frame:
        raise rejected(
            "format",
            f"encoded frames start at frame {encoded.first_frame!r:.40}, expected frame "
            f"{first_frame}",
        )
    sizes = encoded.sizes
    if not isinstance(sizes, np.ndarray) or sizes.ndim != 1 or sizes.dtype.kind not in "iu":
        raise rejected("format", "encoded sizes must be a 1-d integer array")
    return encoded, shape


def _verified(
    encoded: EncodedFrames, rejected: Any, codec: str, shape: tuple[int, ...], first_step: int
) -> EncodedFrames:
    """``encoded`` (described and counted) with its bytes checked: its sizes add up to the
    payload, its checksum matches, every frame decodes. The payload returned is the shard's
    own: bytes are kept, other buffers copied."""
    payload = encoded.payload
    if not isinstance(payload, bytes):  # a buffer the sender could still change: copy it
        try:
            view = memoryview(payload)
        except TypeError:
            raise rejected(
                "format", f"encoded payload must be bytes, got {type(payload).__name__}"
            ) from None
        payload = view.tobytes()
    sizes = encoded.sizes
    if not sizes_fit(sizes, len(payload)):
        raise rejected(
            "format",
            f"encoded frame sizes add up to {int(sizes.astype(np.int64).sum())} bytes, the "
            f"payload holds {len(payload)}",
        )
    if encoded.checksum is None:
        raise rejected(
            "format",
            "encoded frames carry no checksum; encode them with FrameEncoder "
            "(or EncodedFrames.with_checksum())",
        )
    if payload_checksum(payload, sizes) != encoded.checksum:
        raise rejected(
            "checksum", f"encoded frames from step {first_step} are damaged (checksum mismatch)"
        )
    first_frame = int(encoded.first_frame)
    bad = undecodable_frame(codec, shape, first_frame, payload, sizes)
    if bad >= 0:
        raise rejected(
            "undecodable", f"encoded frame {first_frame + bad} does not decode to {list(shape)}"
        )
    if payload is not encoded.payload or sizes.dtype != np.int64:
        encoded = replace(encoded, payload=payload, sizes=sizes.astype(np.int64))
    return encoded


# ---------------------------------------------------------------------------------------------
# states


def int_array(value: Any, name: str) -> np.ndarray:
    """A 1-d int64 array from a state entry (ints of any width that fit)."""
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ReplayStateError(f"replay state: {name} is {array.dtype} {array.shape}, not ints")
    if array.size and array.dtype.kind == "u" and int(array.max()) > I64.max:
        raise ReplayStateError(f"replay state: {name} holds values beyond int64")
    return array.astype(np.int64)


def ended_flags(value: Any, count: int) -> list[bool]:
    """``count`` episode-ended flags from a state entry."""
    ended = np.asarray(value)
    if ended.ndim != 1 or ended.dtype.kind not in "biu" or len(ended) != count:
        raise ReplayStateError(
            f"replay state: episode_ended is {ended.dtype} {ended.shape}, expected {count} flags"
        )
    return [bool(flag) for flag in ended.tolist()]


def action_dim_of(value: Any) -> int:
    action_dim = int(value)
    if not 0 <= action_dim <= MAX_ACTION_DIM:
        raise ReplayStateError(f"replay state: action_dim {action_dim} is invalid")
    return action_dim


def transitions_of(
    key: int,
    actions: Any,
    rewards: Any,
    discounts: Any,
    versions: Any,
    frames: int,
    action_dim: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An episode's actions, rewards, discounts (float32) and versions (int64) from a state,
    checked: consistent lengths (with ``frames`` frames), actions of ``action_dim``, values
    that :func:`validate_chunk` would accept."""
    versions = np.asarray(versions)
    if versions.dtype.kind not in "iu" or (versions.size and versions.max() > I64.max):
        raise ValueError(f"replay state: episode {key} has versions of type {versions.dtype}")
    actions = np.asarray(actions, np.float32)
    rewards = np.asarray(rewards, np.float32)
    discounts = np.asarray(discounts, np.float32)
    versions = np.ascontiguousarray(versions, np.int64)
    length = len(rewards)
    if not (
        actions.ndim == 2
        and rewards.ndim == discounts.ndim == versions.ndim == 1
        and len(actions) == len(discounts) == len(versions) == length
        and frames == length + 1
    ):
        raise ValueError(
            f"replay state: episode {key} has inconsistent lengths: {frames} frames, "
            f"actions {actions.shape}, {length} rewards, {len(discounts)} discounts, "
            f"{len(versions)} versions"
        )
    problem = bad_values(actions, rewards, discounts)
    if problem:
        raise ValueError(f"replay state: episode {key}: {problem}")
    if actions.shape[1] != action_dim:
        raise ReplayStateError(
            f"replay state: episode {key} has actions of size {actions.shape[1]}, expected "
            f"{action_dim}"
        )
    return actions, rewards, discounts, versions


def raw_frames_of(value: Any, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Uncompressed frames ``[F, *frame_shape]`` from a state, contiguous."""
    frames = np.ascontiguousarray(value)
    if frames.dtype != np.uint8 or frames.shape[1:] != tuple(frame_shape):
        raise ValueError(
            f"stored frames are {frames.dtype} {frames.shape}, expected uint8 [F, *{frame_shape}]"
        )
    return frames


def coded_frames_of(
    payload: Any, sizes: Any, codec: str, frame_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A replay codec's stored bytes (uint8) and frame sizes (int64) from a state, checked:
    the sizes add up to the payload and every frame decodes."""
    payload = np.ascontiguousarray(payload)
    sizes = np.asarray(sizes)
    if (
        payload.dtype != np.uint8
        or payload.ndim != 1
        or sizes.ndim != 1
        or sizes.dtype.kind not in "iu"
    ):
        raise ValueError(
            f"stored frames are {payload.dtype} {payload.shape} with sizes {sizes.dtype} "
            f"{sizes.shape}, expected a uint8 payload [N] and integer sizes [F]"
        )
    if not sizes_fit(sizes, payload.size):
        raise ValueError("stored frame sizes do not add up to the stored payload")
    sizes = sizes.astype(np.int64)
    bad = undecodable_frame(codec, tuple(frame_shape), 0, payload, sizes)
    if bad >= 0:
        raise ValueError(f"stored frame {bad} does not decode to {list(frame_shape)}")
    return payload, sizes


def disk_frames_shape(frames: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Frames decoded from a disk-coded blob, checked for ``frame_shape``."""
    if frames.shape[1:] != tuple(frame_shape):
        raise ValueError(
            f"disk-coded frames have shape {list(frames.shape[1:])}, expected {list(frame_shape)}"
        )
    return frames


# ---------------------------------------------------------------------------------------------
# sampling


def check_out(out: Batch, like: Batch, size: int) -> None:
    """``out`` (a caller's batch to fill) has ``like``'s dtypes, ``size`` rows and is
    C-contiguous."""
    for name in ("obs", "action", "reward", "discount", "next_obs", "version"):
        array, want = getattr(out, name), getattr(like, name)
        shape = (size, *want.shape[1:])
        if (
            not isinstance(array, np.ndarray)
            or array.dtype != want.dtype
            or array.shape != shape
            or not array.flags.c_contiguous
        ):
            found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array)
            raise ValueError(f"out.{name} must be C-contiguous {want.dtype} {shape}, got {found}")
