"""Replay storage: each episode's frames stored once; stacks and n-step targets rebuilt at sample time.

Index conventions are those of :mod:`distdrq.types`. An episode with ``T`` transitions stored so
far has ``T + 1`` frames and ``max(0, T - nstep + 1)`` valid sample starts ``0 <= t <= T - nstep``;
sampling is uniform over all valid ``(episode, t)`` pairs of all episodes, finished or not.

Frames live behind :class:`FrameStore` (append frames, gather frames by index):
:class:`RawFrameStore` for ``codec="raw"``, :class:`EncodedFrameStore` for the lossless codecs of
:mod:`distdrq.replay.codec`, whose episodes are decoded together at sample time by
:func:`~distdrq.replay.codec.decode_windows` (one vectorised call per batch).
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from distdrq.replay.codec import (
    DEFAULT_CODEC,
    MAX_FRAME_BYTES,
    EncodedFrames,
    EpisodeFrames,
    FrameEncoder,
    codec_spec,
    decode_windows,
    decode_windows_into,
    payload_checksum,
    undecodable_frame,
)
from distdrq.replay.diskcodec import decode_frames, describes, encode_frames
from distdrq.replay.errors import REJECT_REASONS, ChunkRejected, ReplayStateError
from distdrq.types import Batch, Chunk

_U32 = (1 << 32) - 1
_I64 = np.iinfo(np.int64)
_MAX_ACTION_DIM = 1 << 16


def drqv2_bytes_per_transition(frame_shape: tuple[int, ...], frame_stack: int) -> int:
    """Bytes DrQ-v2's replay layout spends per transition on observations.

    DrQ-v2 writes every time step's stacked observation (uint8 ``[frame_stack * C, H, W]``) to
    its episode ``.npz`` and reads ``next_obs`` from the following step, so a transition costs one
    stacked observation: ``frame_stack * C * H * W`` bytes, 63,504 B for 9x84x84. Like the
    ANCHORS figure (63.5 GB per 1M transitions) this leaves out its float32 action, reward and
    discount (``4 * A + 8`` bytes, under 0.1%), while :meth:`ReplayShard.stats` counts ours, so
    ``ratio_vs_drqv2`` errs low.
    """
    return int(frame_stack * int(np.prod(frame_shape)))


def _grown(array: np.ndarray, used: int, needed: int) -> np.ndarray:
    """``array`` if it has room for ``needed`` rows, else a copy of its first ``used`` rows with
    capacity ``max(needed, 2 * len(array))``."""
    if needed <= len(array):
        return array
    bigger = np.empty((max(needed, 2 * len(array)), *array.shape[1:]), array.dtype)
    bigger[:used] = array[:used]
    return bigger


class FrameStore(abc.ABC):
    """The frames of one episode, in order; one subclass per storage (raw, encoded)."""

    @abc.abstractmethod
    def append(self, frames: np.ndarray) -> None:
        """Append uint8 frames ``[F, C, H, W]`` (the caller has checked dtype and shape)."""

    @abc.abstractmethod
    def gather(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Frames at ``indices`` (any shape, each ``0 <= i < len(self)``, not checked) as
        ``indices.shape + (C, H, W)``, written into ``out`` (C-contiguous) if given."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of frames stored."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes held, allocated slack included."""

    def finalize(self) -> None:  # noqa: B027 (optional hook)
        """The episode has ended: release growth slack, finish encoding."""

    @abc.abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`from_state` restores the store from; keys start with ``frames``."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any], frame_shape: tuple[int, ...]) -> FrameStore:
        """Rebuild a store from :meth:`state` (taking ownership of the arrays)."""


class RawFrameStore(FrameStore):
    """Uncompressed frames in one preallocated uint8 array whose capacity doubles as it grows."""

    def __init__(self, frame_shape: tuple[int, ...], capacity: int = 0) -> None:
        self._buffer = np.empty((capacity, *frame_shape), np.uint8)
        self._length = 0

    def append(self, frames: np.ndarray) -> None:
        needed = self._length + len(frames)
        self._buffer = _grown(self._buffer, self._length, needed)
        self._buffer[self._length : needed] = frames
        self._length = needed

    def gather(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # mode="clip" lets np.take write straight into `out` (mode="raise" buffers a copy)
        return np.take(self._buffer, indices, axis=0, out=out, mode="clip")

    def __len__(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    def finalize(self) -> None:
        if len(self._buffer) > self._length:
            self._buffer = self._buffer[: self._length].copy()

    def state(self) -> dict[str, np.ndarray]:
        return {"frames": self._buffer[: self._length]}

    @classmethod
    def from_state(cls, state: dict[str, Any], frame_shape: tuple[int, ...]) -> RawFrameStore:
        if "frames.cm" in state:
            frames = _disk_frames(state["frames.cm"], frame_shape)
        else:
            frames = np.ascontiguousarray(state["frames"])
        if frames.dtype != np.uint8 or frames.shape[1:] != tuple(frame_shape):
            raise ValueError(
                f"stored frames are {frames.dtype} {frames.shape}, expected uint8 [F, *{frame_shape}]"
            )
        store = cls(frame_shape)
        store._buffer = frames
        store._length = len(frames)
        return store


class EncodedFrameStore(FrameStore):
    """Frames compressed by a codec of :mod:`distdrq.replay.codec`, held as
    :class:`~distdrq.replay.codec.EpisodeFrames`.

    Encoded chunks (from the actor's :class:`~distdrq.replay.codec.FrameEncoder`) are stored as
    they are (:meth:`append_encoded`); raw frames (:meth:`append`) are encoded here first, by an
    encoder kept until the episode ends. When the episode ends its chunks are joined into one
    payload (no per-chunk objects for finished episodes).
    """

    def __init__(self, codec: str, frame_shape: tuple[int, ...]) -> None:
        self.codec = codec
        self.episode = EpisodeFrames(codec, frame_shape)
        self._encoder: FrameEncoder | None = None

    def append(self, frames: np.ndarray) -> None:
        if not len(frames):
            return
        count = len(self.episode)
        if self._encoder is None or self._encoder.frames_encoded != count:
            # the frames so far came encoded: pick up their references
            self._encoder = FrameEncoder(self.codec, self.episode.frame_shape)
            if count:
                group = self._encoder.spec.group
                previous = self.episode.decode(np.arange(max(0, count - group), count))
                self._encoder.resume(count, previous)
        self.episode.append(self._encoder.encode(frames))

    def append_encoded(self, encoded: EncodedFrames) -> None:
        """Store frames encoded elsewhere (codec, shape and first frame checked by the caller)."""
        self._encoder = None
        self.episode.append(encoded)

    def gather(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        flat = indices.reshape(1, -1)
        frames = decode_windows([self.episode], np.zeros(1, np.int64), flat)
        frames = frames.reshape(*indices.shape, *self.episode.frame_shape)
        if out is None:
            return frames
        out[...] = frames
        return out

    def __len__(self) -> int:
        return len(self.episode)

    @property
    def nbytes(self) -> int:
        encoder = self._encoder.nbytes if self._encoder is not None else 0
        return int(self.episode.nbytes() + encoder)

    def finalize(self) -> None:
        self._encoder = None
        if len(self.episode.chunks()) > 1:
            self.episode = self._rebuilt(*self.episode.payload_and_sizes())

    def _rebuilt(self, payload: np.ndarray, sizes: np.ndarray) -> EpisodeFrames:
        episode = EpisodeFrames(self.codec, self.episode.frame_shape)
        if len(sizes):
            episode.append(
                EncodedFrames(self.codec, episode.frame_shape, 0, payload, np.asarray(sizes))
            )
        return episode

    def state(self) -> dict[str, np.ndarray]:
        """``frames.payload`` (uint8, the compressed bytes) and ``frames.sizes`` (int64 bytes
        per frame); a view of the stored bytes once the episode has ended."""
        payload, sizes = self.episode.payload_and_sizes()
        return {"frames.payload": payload, "frames.sizes": sizes}

    @classmethod
    def from_state(
        cls, state: dict[str, Any], frame_shape: tuple[int, ...], codec: str = DEFAULT_CODEC
    ) -> EncodedFrameStore:
        if "frames.cm" in state:  # disk-coded: decode, then encode with this store's codec
            store = cls(codec, frame_shape)
            store.append(_disk_frames(state["frames.cm"], frame_shape))
            store.finalize()
            return store
        payload = np.ascontiguousarray(state["frames.payload"])
        sizes = np.asarray(state["frames.sizes"])
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
        if not _sizes_fit(sizes, payload.size):
            raise ValueError("stored frame sizes do not add up to the stored payload")
        sizes = sizes.astype(np.int64)
        bad = undecodable_frame(codec, tuple(frame_shape), 0, payload, sizes)
        if bad >= 0:
            raise ValueError(f"stored frame {bad} does not decode to {list(frame_shape)}")
        store = cls(codec, frame_shape)
        store.episode = store._rebuilt(payload, sizes)
        return store


def _sizes_fit(sizes: np.ndarray, payload_bytes: int) -> bool:
    """Whether integer ``sizes`` are each 1..payload_bytes and add up to ``payload_bytes``
    (bounds first, so that a crafted size cannot make the sum wrap around)."""
    if not sizes.size:
        return payload_bytes == 0
    if int(sizes.min()) < 1 or int(sizes.max()) > payload_bytes:
        return False
    return int(sizes.astype(np.int64).sum()) == payload_bytes


def _frame_shape_of(value: Any) -> tuple[int, ...]:
    """A frame shape from outside: three positive ints, at most MAX_FRAME_BYTES in all."""
    shape = tuple(value)
    if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in shape):
        raise ValueError(f"frame shape {shape!r:.60} is not [C, H, W] of ints")
    shape = tuple(int(x) for x in shape)
    if len(shape) != 3 or min(shape) < 1 or math.prod(shape) > MAX_FRAME_BYTES:
        raise ValueError(f"frame shape {list(shape)} is not [C, H, W] of at most 64 MiB")
    return shape


def _disk_frames(blob: Any, frame_shape: tuple[int, ...]) -> np.ndarray:
    frames = decode_frames(np.ascontiguousarray(np.asarray(blob, np.uint8)).reshape(-1))
    if frames.shape[1:] != tuple(frame_shape):
        raise ValueError(
            f"disk-coded frames have shape {list(frames.shape[1:])}, expected {list(frame_shape)}"
        )
    return frames


def state_counts(state: Any) -> tuple[int, int] | None:
    """``(transitions, episodes)`` of a :meth:`ReplayShard.state_dict` or :func:`disk_state`,
    found at the top of ``state`` or one level down (e.g. a snapshot's ``{"shard": ...}``);
    None if there is none or it is malformed. Reads lengths only."""
    if not isinstance(state, Mapping):
        return None
    candidates = [state, *(v for v in state.values() if isinstance(v, Mapping))]
    for candidate in candidates:
        if "episode_keys" not in candidate:
            continue
        try:
            episodes = len(candidate["episode_keys"])
            transitions = sum(len(candidate[f"episode.{i}.rewards"]) for i in range(episodes))
        except (TypeError, KeyError):
            return None
        return int(transitions), int(episodes)
    return None


DISK_CODECS = ("cm", "stored")


def disk_state(
    state: dict[str, Any], disk_codec: str = "cm", previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A :meth:`ReplayShard.state_dict` made compact for disk (snapshots, checkpoints).

    ``disk_codec="cm"``: each episode's frames become one ``episode.{i}.frames.cm`` blob of
    :mod:`distdrq.replay.diskcodec` (decoded from the replay codec first, bit-exact);
    :meth:`ReplayShard.load_state_dict` decodes it and re-encodes with the loading shard's codec.
    ``previous``: an earlier ``cm`` disk state of the same replay (e.g. the last snapshot, as
    read back); an episode whose frames it already holds (same key, shape and CRC32) reuses that
    blob instead of being coded again, so a snapshot codes only what is new since the last one.
    ``"stored"``: the state as it is (the replay codec's bytes; fastest to write and restore).
    Runs without any lock: the state's arrays are immutable views. Returns a new dict.
    """
    if disk_codec not in DISK_CODECS:
        raise ValueError(
            f"unknown disk codec {disk_codec!r}; choose one of {', '.join(DISK_CODECS)}"
        )
    if disk_codec == "stored":
        return dict(state)
    shape = tuple(int(x) for x in state.get("frame_shape", ()))
    codec = str(state.get("codec"))
    keys = np.asarray(state.get("episode_keys", ()), np.int64).tolist()
    reuse: dict[int, Any] = {}
    if previous is not None:
        old_keys = np.asarray(previous.get("episode_keys", ()), np.int64).tolist()
        for i, key in enumerate(old_keys):
            blob = previous.get(f"episode.{i}.frames.cm")
            if blob is not None:
                reuse[key] = np.asarray(blob, np.uint8)
    # everything but the replay codec's frames as it is; then one coded blob per episode
    out = {k: v for k, v in state.items() if not (k.startswith("episode.") and ".frames" in k)}
    for i, key in enumerate(keys):
        prefix = f"episode.{i}.frames"
        names = [n for n in ("", ".payload", ".sizes") if prefix + n in state]
        fields = {"frames" + n: state[prefix + n] for n in names}  # as FrameStore.state() names
        store = (
            RawFrameStore.from_state(fields, shape)
            if codec == "raw"
            else EncodedFrameStore.from_state(fields, shape, codec)
        )
        frames = store.gather(np.arange(len(store)))
        old = reuse.get(key)
        out[prefix + ".cm"] = (
            old if old is not None and describes(old, frames) else encode_frames(frames)
        )
    return out


def _bad_values(
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


class _Episode:
    """One episode's frames, per-transition data and bookkeeping.

    Actions, rewards and env discounts share one float32 array ``[capacity, A + 2]`` (columns
    ``:A``, ``A``, ``A + 1``) so that sampling reads them with one gather per episode.
    """

    __slots__ = ("key", "slot", "frames", "floats", "versions", "length", "ended")

    def __init__(
        self, key: int, slot: int, frames: FrameStore, action_dim: int, capacity: int
    ) -> None:
        self.key = key
        self.slot = slot
        self.frames = frames
        self.floats = np.empty((capacity, action_dim + 2), np.float32)
        self.versions = np.empty(capacity, np.int64)
        self.length = 0
        self.ended = False

    def append(self, chunk: Chunk, encoded: EncodedFrames | None = None) -> None:
        """Append a chunk; its frames are ``encoded`` if given (an EncodedFrameStore), else
        ``chunk.frames``."""
        start, stop = self.length, self.length + chunk.num_transitions
        self.floats = _grown(self.floats, start, stop)
        self.floats[start:stop, :-2] = chunk.actions
        self.floats[start:stop, -2] = chunk.rewards
        self.floats[start:stop, -1] = chunk.discounts
        self.versions = _grown(self.versions, start, stop)
        self.versions[start:stop] = chunk.versions
        if encoded is not None:
            assert isinstance(self.frames, EncodedFrameStore)
            self.frames.append_encoded(encoded)
        else:
            self.frames.append(chunk.frames)
        self.length = stop
        self.ended = bool(chunk.last)
        if self.ended:
            if len(self.floats) > stop:
                self.floats = self.floats[:stop].copy()
                self.versions = self.versions[:stop].copy()
            self.frames.finalize()

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-transition arrays of the stored steps, contiguous."""
        floats = self.floats[: self.length]
        return {
            "actions": np.ascontiguousarray(floats[:, :-2]),
            "rewards": np.ascontiguousarray(floats[:, -2]),
            "discounts": np.ascontiguousarray(floats[:, -1]),
            "versions": self.versions[: self.length],
        }

    @classmethod
    def from_arrays(
        cls, key: int, slot: int, frames: FrameStore, arrays: dict[str, Any], ended: bool
    ) -> _Episode:
        """An episode from :meth:`arrays` and its frames; ValueError (storing nothing) if the
        arrays are inconsistent, of the wrong kind or hold values :meth:`ReplayShard.insert`
        would refuse."""
        versions = np.asarray(arrays["versions"])
        if versions.dtype.kind not in "iu" or (versions.size and versions.max() > _I64.max):
            raise ValueError(f"replay state: episode {key} has versions of type {versions.dtype}")
        actions = np.asarray(arrays["actions"], np.float32)
        rewards = np.asarray(arrays["rewards"], np.float32)
        discounts = np.asarray(arrays["discounts"], np.float32)
        versions = np.ascontiguousarray(versions, np.int64)
        length = len(rewards)
        if not (
            actions.ndim == 2
            and rewards.ndim == discounts.ndim == versions.ndim == 1
            and len(actions) == len(discounts) == len(versions) == length
            and len(frames) == length + 1
        ):
            raise ValueError(
                f"replay state: episode {key} has inconsistent lengths: {len(frames)} frames, "
                f"actions {actions.shape}, {length} rewards, {len(discounts)} discounts, "
                f"{len(versions)} versions"
            )
        problem = _bad_values(actions, rewards, discounts)
        if problem:
            raise ValueError(f"replay state: episode {key}: {problem}")
        episode = cls(key, slot, frames, actions.shape[1], length)
        episode.floats[:, :-2] = actions
        episode.floats[:, -2] = rewards
        episode.floats[:, -1] = discounts
        episode.versions = versions
        episode.length = length
        episode.ended = ended
        return episode

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.floats.nbytes + self.versions.nbytes)


class ReplayShard:
    """Episodes stored frame-once; samples uniform over valid n-step transitions.

    ``capacity`` counts transitions. After each insert, while more than ``capacity`` are stored,
    whole episodes are evicted oldest first (by first insertion), finished or not, skipping the
    episode the insert just wrote to: if that episode is all that is left it stays, and the shard
    holds more than ``capacity`` until another episode arrives. A chunk for an evicted episode
    raises :class:`~distdrq.replay.errors.ChunkRejected`.

    Nothing poisoned, nothing lost: :meth:`insert` validates a chunk completely before it
    changes anything (shapes and dtypes, finite actions and rewards, discounts in [0, 1], the
    writer's checksum of encoded frames, every encoded frame decodable), and a rejected chunk
    raises :class:`~distdrq.replay.errors.ChunkRejected`, is counted in :meth:`stats` and
    leaves the shard exactly as it was: length, contents, sampling and generator. An episode
    whose chunk was rejected stays as it was, truncated at its last good chunk and still
    sampleable: the same chunk (repaired) may be inserted again, while the episode's later
    chunks no longer fit (their ``first_step`` is past its stored length) and are rejected
    too (reason ``order``), so an episode never has a gap; it leaves with eviction like any
    other. :meth:`load_state_dict` builds the new contents completely before replacing the old.

    Samples of a batch come out grouped by episode (oldest first) and ordered by step: a batch is
    a sorted multiset of independent uniform draws, which lets frames be copied straight into the
    output. Shuffle it if you split it into correlated parts.

    ``codec`` is a name from :data:`distdrq.replay.codec.CODECS`. ``"raw"`` stores frames
    uncompressed (:class:`RawFrameStore`); any other codec stores them compressed
    (:class:`EncodedFrameStore`) and decodes a batch's frame windows in one
    :func:`~distdrq.replay.codec.decode_windows` call. Sampling is bit-exact across codecs: the
    same chunks and generator give the same batches. A compressed shard stores chunks whose
    ``encoded`` frames (see :class:`~distdrq.types.Chunk`) use its codec as they are, and encodes
    the ``frames`` of chunks without ``encoded`` itself.
    """

    def __init__(
        self,
        capacity: int,
        nstep: int,
        discount: float,
        frame_stack: int,
        seed: int = 0,
        codec: str = "raw",
    ) -> None:
        codec_spec(codec)  # ValueError naming the choices
        if capacity <= 0 or nstep <= 0 or frame_stack <= 0:
            raise ValueError(
                f"capacity={capacity}, nstep={nstep} and frame_stack={frame_stack} must be > 0"
            )
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount={discount} must be in (0, 1]")
        self.capacity = int(capacity)
        self.nstep = int(nstep)
        self.discount = float(discount)
        self.frame_stack = int(frame_stack)
        self.codec = codec
        self._scratch: np.ndarray | None = None  # decode work space, reused across batches
        self._rng = np.random.default_rng(seed)
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)  # chunks refused, by reason
        self._rejected_transitions = 0
        self.clear()

    def clear(self) -> None:
        """Drop every episode and the shapes learnt from them (the sampling generator stays)."""
        self._frame_shape: tuple[int, ...] | None = None
        self._action_dim: int | None = None
        self._episodes: dict[int, _Episode] = {}  # insertion order = eviction order
        self._evicted: set[int] = set()
        self._slots: list[_Episode | None] = []  # slot of each episode, by first insertion
        self._valid = np.zeros(64, np.int64)  # valid sample starts per slot (0 for evicted)
        self._head = 0  # slots before it are all evicted
        self._cumulative: np.ndarray | None = None  # cumsum of _valid[_head:], None when stale
        self._transitions = 0
        self._num_frames = 0

    # -----------------------------------------------------------------------------------------
    # insert

    def insert(self, chunk: Chunk) -> None:
        """Store a chunk (a whole or partial episode), then evict down to capacity.

        Frames: a compressed shard stores ``chunk.encoded`` when it is set (ignoring
        ``chunk.frames``), else encodes ``chunk.frames``. A raw shard stores ``chunk.frames``; it
        rejects a chunk whose ``encoded`` is set and whose ``frames`` are empty (decoding a
        partial episode would need the references it does not keep): build it with the writer's
        codec, or have the writer use ``codec="raw"``.

        Raises :class:`~distdrq.replay.errors.ChunkRejected` (a :class:`ValueError`), storing
        nothing and counting it in :meth:`stats`, if the chunk's episode was evicted or has
        ended, if ``first_step`` is not the number of transitions already stored for its
        episode, if array shapes or dtypes disagree with :class:`~distdrq.types.Chunk` or with
        earlier chunks (dtypes must match exactly: frames uint8, actions/rewards/discounts
        float32, versions int64), if an action or reward is not finite or a discount is outside
        [0, 1], or if encoded frames have another codec, frame shape, first frame or frame count
        than this shard and the episode call for, carry no checksum or one that differs from
        their bytes (:func:`~distdrq.replay.codec.payload_checksum`), or hold a frame that does
        not decode. The class docstring says what becomes of the rejected chunk's episode.
        """
        try:
            key, episode, encoded = self._validate(chunk)
        except ChunkRejected as exc:
            self._rejected[exc.reason] = self._rejected.get(exc.reason, 0) + 1
            self._rejected_transitions += exc.transitions
            raise
        if episode is None:
            if encoded is not None:
                frame_shape = tuple(int(x) for x in encoded.frame_shape)
            else:
                frame_shape = tuple(chunk.frames.shape[1:])
            if self._frame_shape is None:
                self._frame_shape = frame_shape
                self._action_dim = int(chunk.actions.shape[1])
            size = chunk.num_transitions
            assert self._action_dim is not None
            episode = _Episode(
                key, len(self._slots), self._new_store(size + 1), self._action_dim, size
            )
            self._episodes[key] = episode
            self._slots.append(episode)
            self._valid = _grown(self._valid, len(self._slots) - 1, len(self._slots))
        frames_before = len(episode.frames)
        episode.append(chunk, encoded)
        self._transitions += chunk.num_transitions
        self._num_frames += len(episode.frames) - frames_before
        self._valid[episode.slot] = max(0, episode.length - self.nstep + 1)
        self._cumulative = None
        self._evict(keep=episode)

    def _new_store(self, capacity: int) -> FrameStore:
        assert self._frame_shape is not None
        if self.codec == "raw":
            return RawFrameStore(self._frame_shape, capacity)
        return EncodedFrameStore(self.codec, self._frame_shape)

    def _validate(self, chunk: Chunk) -> tuple[int, _Episode | None, EncodedFrames | None]:
        """The chunk's key, its stored episode (None if new) and the encoded frames to store
        (None: store ``chunk.frames``); :class:`ChunkRejected` if anything is wrong."""
        if not isinstance(chunk, Chunk):
            raise ChunkRejected(f"expected a Chunk, got {type(chunk).__name__}", "format")
        key = chunk.episode_key
        if (
            isinstance(key, bool)
            or not isinstance(key, int | np.integer)
            or not _I64.min <= int(key) <= _I64.max
        ):
            raise ChunkRejected(f"chunk episode_key must be an int64, got {key!r:.40}", "format")
        key = int(key)
        actions = chunk.actions
        size = int(actions.shape[0]) if isinstance(actions, np.ndarray) and actions.ndim else 0

        def rejected(reason: str, message: str) -> ChunkRejected:
            return ChunkRejected(f"episode {key}: {message}", reason, key, size)

        episode = self._episodes.get(key)
        if key in self._evicted:
            raise ChunkRejected(
                f"episode {key} was evicted from replay; it cannot receive chunks",
                "evicted",
                key,
                size,
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
        if actions.ndim != 2 or (
            self._action_dim is not None and actions.shape[1] != self._action_dim
        ):
            want = f"[{size}, {self._action_dim if self._action_dim is not None else 'A'}]"
            raise rejected("format", f"chunk actions have shape {actions.shape}, expected {want}")
        problem = _bad_values(actions, chunk.rewards, chunk.discounts, expected)
        if problem:
            raise rejected("values", f"chunk {problem}")
        want_frames = size + (1 if episode is None else 0)
        encoded = chunk.encoded if self.codec != "raw" else None
        if encoded is not None:
            encoded = self._validate_encoded(encoded, rejected, expected, episode, want_frames)
            return key, episode, encoded
        frames = chunk.frames
        if (
            chunk.encoded is not None
            and isinstance(frames, np.ndarray)
            and frames.ndim
            and not len(frames)
        ):
            codec = getattr(chunk.encoded, "codec", "?")
            raise rejected(
                "format",
                f"chunk holds only {codec!r}-encoded frames and this replay stores raw frames; "
                "build ReplayShard(codec=...) with the writer's codec or use "
                "EpisodeWriter(codec='raw')",
            )
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
            found = (
                f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames)
            )
            raise rejected("format", f"chunk frames must be uint8 [F, C, H, W], got {found}")
        if self._frame_shape is not None and frames.shape[1:] != self._frame_shape:
            raise rejected(
                "format",
                f"frames have shape {frames.shape[1:]}, this replay stores {self._frame_shape}",
            )
        if len(frames) != want_frames:
            what = "transitions + 1 (the reset frame)" if episode is None else "transitions"
            raise rejected(
                "format",
                f"chunk from step {expected} with {size} transitions has {len(frames)} frames, "
                f"expected {want_frames} ({what})",
            )
        if self._frame_shape is None and (
            min(frames.shape[1:]) < 1 or math.prod(frames.shape[1:]) > MAX_FRAME_BYTES
        ):
            raise rejected("format", f"frames have shape {frames.shape[1:]}")
        return key, episode, None

    def _validate_encoded(
        self,
        encoded: Any,
        rejected: Any,
        expected: int,
        episode: _Episode | None,
        want_frames: int,
    ) -> EncodedFrames:
        """``encoded`` checked (cheap checks first, then the checksum, then decoding every
        frame), with a payload the shard owns: bytes are kept, other buffers copied."""
        chunk_size = want_frames - (1 if episode is None else 0)
        if not isinstance(encoded, EncodedFrames):
            raise rejected(
                "format", f"chunk.encoded must be EncodedFrames, got {type(encoded).__name__}"
            )
        if not isinstance(encoded.codec, str) or encoded.codec != self.codec:
            raise rejected(
                "format",
                f"chunk frames are encoded with {encoded.codec!r}, this replay stores "
                f"{self.codec!r}",
            )
        try:
            shape = _frame_shape_of(encoded.frame_shape)
        except (TypeError, ValueError):
            shape = None
        if shape is None or (self._frame_shape is not None and shape != self._frame_shape):
            want = self._frame_shape if self._frame_shape is not None else "[C, H, W]"
            raise rejected(
                "format",
                f"encoded frames have shape {encoded.frame_shape!r:.40}, this replay stores {want}",
            )
        first_frame = 0 if episode is None else len(episode.frames)
        given = encoded.first_frame
        if (
            isinstance(given, bool)
            or not isinstance(given, int | np.integer)
            or given != first_frame
        ):
            raise rejected(
                "format",
                f"encoded frames start at frame {encoded.first_frame!r:.40}, expected frame "
                f"{first_frame}",
            )
        sizes = encoded.sizes
        if not isinstance(sizes, np.ndarray) or sizes.ndim != 1 or sizes.dtype.kind not in "iu":
            raise rejected("format", "encoded sizes must be a 1-d integer array")
        if len(encoded) != want_frames:
            what = "transitions + 1 (the reset frame)" if episode is None else "transitions"
            raise rejected(
                "format",
                f"chunk from step {expected} with {chunk_size} transitions has {len(encoded)} "
                f"encoded frames, expected {want_frames} ({what})",
            )
        payload = encoded.payload
        if not isinstance(payload, bytes):  # a buffer the sender could still change: copy it
            try:
                view = memoryview(payload)
            except TypeError:
                raise rejected(
                    "format", f"encoded payload must be bytes, got {type(payload).__name__}"
                ) from None
            payload = view.tobytes()
        if not _sizes_fit(sizes, len(payload)):
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
                "checksum",
                f"encoded frames from step {expected} are damaged (checksum mismatch)",
            )
        bad = undecodable_frame(self.codec, shape, first_frame, payload, sizes)
        if bad >= 0:
            raise rejected(
                "undecodable",
                f"encoded frame {first_frame + bad} does not decode to {list(shape)}",
            )
        if payload is not encoded.payload or sizes.dtype != np.int64:
            encoded = replace(encoded, payload=payload, sizes=sizes.astype(np.int64))
        return encoded

    def _evict(self, keep: _Episode | None) -> None:
        slot = self._head
        while self._transitions > self.capacity and slot < len(self._slots):
            episode = self._slots[slot]
            if episode is not None and episode is not keep:
                self._remove(episode)
            slot += 1
        while self._head < len(self._slots) and self._slots[self._head] is None:
            self._head += 1
        if self._head > 1024 and 2 * self._head > len(self._slots):
            self._compact()

    def _remove(self, episode: _Episode) -> None:
        del self._episodes[episode.key]
        self._evicted.add(episode.key)
        self._slots[episode.slot] = None
        self._valid[episode.slot] = 0
        self._transitions -= episode.length
        self._num_frames -= len(episode.frames)
        self._cumulative = None

    def _compact(self) -> None:
        """Drop the evicted slots before the head so slot arrays stay proportional to episodes."""
        live = len(self._slots) - self._head
        valid = np.zeros(max(64, live), np.int64)
        valid[:live] = self._valid[self._head : len(self._slots)]
        self._valid = valid
        self._slots = self._slots[self._head :]
        for slot, episode in enumerate(self._slots):
            if episode is not None:
                episode.slot = slot
        self._head = 0
        self._cumulative = None

    # -----------------------------------------------------------------------------------------
    # sample

    def __len__(self) -> int:
        """Transitions stored."""
        return self._transitions

    @property
    def num_sampleable(self) -> int:
        """Number of valid n-step start indices over all episodes."""
        return int(self._valid[self._head : len(self._slots)].sum())

    @property
    def num_episodes(self) -> int:
        """Episodes stored (finished or not)."""
        return len(self._episodes)

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Batch | None = None
    ) -> Batch:
        """``batch_size`` n-step transitions drawn uniformly (with replacement) over all valid
        starts, grouped by episode as the class docstring says; uses the shard's own generator
        (seeded at construction) unless ``rng`` is given.

        ``out``, if given, is a batch of C-contiguous arrays of the right shapes and dtypes (for
        example in pinned memory) that is filled and returned: reusing buffers saves allocating
        and page-faulting two fresh observation arrays per batch.

        Raises :class:`ValueError` if no episode has ``nstep`` transitions yet.
        """
        slots, steps = self._sample_indices(batch_size, rng)
        return self._gather(slots, steps, out)

    def empty_batch(self, batch_size: int) -> Batch:
        """Uninitialised arrays shaped as :meth:`sample` returns them (for ``out``)."""
        if self._frame_shape is None or self._action_dim is None:
            raise ValueError("the shape of a batch is known once a chunk has been inserted")
        channels, *image = self._frame_shape
        obs_shape = (batch_size, self.frame_stack * channels, *image)
        return Batch(
            obs=np.empty(obs_shape, np.uint8),
            action=np.empty((batch_size, self._action_dim), np.float32),
            reward=np.empty(batch_size, np.float32),
            discount=np.empty(batch_size, np.float32),
            next_obs=np.empty(obs_shape, np.uint8),
            version=np.empty(batch_size, np.int64),
        )

    def _sample_indices(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots (ascending) and steps of ``batch_size`` uniform draws over valid starts."""
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be > 0")
        if self._cumulative is None:
            self._cumulative = np.cumsum(self._valid[self._head : len(self._slots)])
        total = int(self._cumulative[-1]) if len(self._cumulative) else 0
        if total == 0:
            raise ValueError(
                f"nothing to sample: {self._transitions} transitions in {len(self._episodes)} "
                f"episodes and none has nstep={self.nstep} transitions yet"
            )
        draws = (rng if rng is not None else self._rng).integers(0, total, size=batch_size)
        draws.sort()
        live = np.searchsorted(self._cumulative, draws, side="right")
        steps = draws - (self._cumulative[live] - self._valid[self._head + live])
        return live + self._head, steps

    def _batch_at(self, episode_key: int, steps: np.ndarray) -> Batch:
        """The transitions at ``steps`` (each a valid start) of one episode; for tests."""
        episode = self._episodes[episode_key]
        steps = np.asarray(steps, np.int64)
        if len(steps) and not 0 <= steps.min() <= steps.max() <= episode.length - self.nstep:
            raise ValueError(
                f"steps outside 0..{episode.length - self.nstep} for episode {episode_key}"
            )
        return self._gather(np.full(len(steps), episode.slot), steps)

    def _gather(self, slots: np.ndarray, steps: np.ndarray, out: Batch | None = None) -> Batch:
        """Build a batch from (slot, step) pairs; equal slots must be adjacent."""
        size, k, n = len(steps), self.frame_stack, self.nstep
        batch = self.empty_batch(size) if out is None else out
        if out is not None:
            _check_out(out, self.empty_batch(0), size)
        frame_shape = self._frame_shape
        assert frame_shape is not None and self._action_dim is not None
        floats = np.empty((size, n, self._action_dim + 2), np.float32)

        # frame indices: the stack ending at t and at t + n, clamped to the reset frame
        offsets = np.arange(1 - k, 1)
        obs_frames = np.maximum(steps[:, None] + offsets, 0)
        next_frames = np.maximum(steps[:, None] + (n + offsets), 0)
        window = steps[:, None] + np.arange(n)
        obs_split = batch.obs.reshape(size, k, *frame_shape)
        next_split = batch.next_obs.reshape(size, k, *frame_shape)

        # gather, one episode at a time (compressed frames: decoded below, all episodes at once)
        raw = self.codec == "raw"
        bounds = (np.flatnonzero(slots[1:] != slots[:-1]) + 1).tolist()
        for start, stop in zip([0, *bounds], [*bounds, size], strict=True):
            episode = self._slots[int(slots[start])]
            assert episode is not None
            if raw:
                episode.frames.gather(obs_frames[start:stop], out=obs_split[start:stop])
                episode.frames.gather(next_frames[start:stop], out=next_split[start:stop])
            np.take(episode.floats, window[start:stop], axis=0, out=floats[start:stop], mode="clip")
            np.take(episode.versions, steps[start:stop], out=batch.version[start:stop], mode="clip")
        if not raw:
            self._decode_frames(slots, steps, obs_split, next_split)
        batch.action[...] = floats[:, 0, :-2]
        rewards, discounts = floats[:, :, -2], floats[:, :, -1]

        # n-step: reward = sum_j (prod_{i<j} gamma d_{t+i}) r_{t+j}, discount = prod_j gamma d_{t+j}
        gamma = np.float32(self.discount)
        reward, discount = batch.reward, batch.discount
        reward.fill(0.0)
        discount.fill(1.0)
        for j in range(n):
            reward += discount * rewards[:, j]
            discount *= gamma * discounts[:, j]
        return batch

    def _decode_frames(
        self, slots: np.ndarray, steps: np.ndarray, obs: np.ndarray, next_obs: np.ndarray
    ) -> None:
        """Decode the frames of ``obs`` and ``next_obs`` (``[B, k, C, H, W]`` each) of every
        sample straight into them, in one :func:`decode_windows_into` call."""
        k, n = self.frame_stack, self.nstep
        uniq, local = np.unique(slots, return_inverse=True)
        tables = []
        for slot in uniq.tolist():
            episode = self._slots[slot]
            assert episode is not None and isinstance(episode.frames, EncodedFrameStore)
            tables.append(episode.frames.episode)
        offsets = np.concatenate([np.arange(1 - k, 1), np.arange(n + 1 - k, n + 1)])
        windows = np.maximum(steps[:, None] + offsets, 0)
        self._scratch = decode_windows_into(tables, local, windows, (obs, next_obs), self._scratch)

    # -----------------------------------------------------------------------------------------
    # stats and checkpoints

    def stats(self) -> dict[str, float]:
        """Sizes and memory.

        ``stored_bytes`` counts the ``.nbytes`` of every array held (frames, actions, rewards,
        discounts, versions, growth slack of unfinished episodes included, plus the slot index);
        Python object overhead (a few hundred bytes per episode) is not counted. For a compressed
        shard, frames count as their compressed payload plus a 16 B per-frame index, plus the
        reference frames an unfinished episode's encoder keeps when the shard encodes raw
        chunks itself; the reused decode work space of :meth:`sample` is not counted.
        ``ratio_vs_drqv2`` is :func:`drqv2_bytes_per_transition` over ``bytes_per_transition``.

        Rejected chunks (counted since this shard object was made; restores do not reset
        them): ``rejected_chunks`` and ``rejected_transitions`` in all, and
        ``rejected_chunks_<reason>`` for every reason of
        :data:`~distdrq.replay.errors.REJECT_REASONS`.
        """
        stored = sum(episode.nbytes for episode in self._episodes.values()) + self._valid.nbytes
        if self._cumulative is not None:
            stored += self._cumulative.nbytes
        per_transition = stored / self._transitions if self._transitions else 0.0
        ratio = 0.0
        if self._frame_shape is not None and per_transition:
            ratio = drqv2_bytes_per_transition(self._frame_shape, self.frame_stack) / per_transition
        return {
            "transitions": float(self._transitions),
            "episodes": float(len(self._episodes)),
            "frames": float(self._num_frames),
            "stored_bytes": float(stored),
            "bytes_per_transition": float(per_transition),
            "ratio_vs_drqv2": float(ratio),
            "rejected_chunks": float(sum(self._rejected.values())),
            "rejected_transitions": float(self._rejected_transitions),
            **{f"rejected_chunks_{r}": float(n) for r, n in self._rejected.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the shard: numpy arrays, ints, floats, strings, lists.

        Per-episode arrays are views of the live buffer (no copy; for a compressed shard, the
        payload of an unfinished episode is a joined copy): they stay valid while the shard keeps
        running, but do not modify them. Keys: ``episode.{i}.{name}`` for the i-th stored episode
        (oldest first) and names ``actions``, ``rewards``, ``discounts``, ``versions`` and the
        frames: ``frames`` (raw) or ``frames.payload`` and ``frames.sizes`` (compressed: the
        codec's bytes as stored, never decoded frames). ``codec`` names the codec.
        """
        episodes = list(self._episodes.values())
        state: dict[str, Any] = {
            "codec": self.codec,
            "capacity": self.capacity,
            "nstep": self.nstep,
            "discount": self.discount,
            "frame_stack": self.frame_stack,
            "frame_shape": list(self._frame_shape) if self._frame_shape is not None else [],
            "action_dim": self._action_dim if self._action_dim is not None else -1,
            "episode_keys": np.array([e.key for e in episodes], np.int64),
            "episode_ended": np.array([e.ended for e in episodes], np.bool_),
            "evicted_keys": np.array(sorted(self._evicted), np.int64),
            "rng_state": _pack_rng(self._rng),
        }
        for i, episode in enumerate(episodes):
            for name, array in episode.frames.state().items():
                state[f"episode.{i}.{name}"] = array
            for name, array in episode.arrays().items():
                state[f"episode.{i}.{name}"] = array
        return state

    def load_state_dict(self, state: dict[str, Any], threads: int | None = None) -> None:
        """Replace the contents with a :meth:`state_dict` (taking ownership of its arrays).

        Sampling uses this shard's ``nstep``, ``discount`` and ``frame_stack``; if the state holds
        more than this shard's capacity, the oldest episodes are evicted. A :func:`disk_state`
        with ``cm`` frames loads into a shard of any codec (the frames are decoded and
        re-encoded, about 1.5 ms per frame: episodes are done on ``threads`` threads, by default
        one per CPU up to 8, since both coders release the GIL).

        The state is checked as :meth:`insert` checks chunks (consistent lengths and keys,
        finite values, discounts in [0, 1], every stored frame decodable) and the new contents
        are built completely before they replace the old ones: on
        :class:`~distdrq.replay.errors.ReplayStateError` (a :class:`ValueError`, one line) the
        shard keeps what it had, generator included.
        """
        try:
            fresh = self._built_from(state, threads)
        except ReplayStateError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ReplayStateError(f"replay state does not load: {first}") from exc
        # nothing below can fail: adopt the new contents and generator state
        for name in _CONTENTS:
            setattr(self, name, getattr(fresh, name))
        self._rng.bit_generator.state = fresh._rng.bit_generator.state

    def _built_from(self, state: Any, threads: int | None) -> ReplayShard:
        """A new shard like this one holding ``state`` (this one untouched)."""
        if not isinstance(state, Mapping):
            raise ReplayStateError(f"replay state must be a mapping, got {type(state).__name__}")
        stored = any(
            isinstance(name, str)
            and name.startswith("episode.")
            and name.endswith((".frames", ".frames.payload"))
            for name in state
        )
        codec = state.get("codec")
        if stored and not (isinstance(codec, str) and codec == self.codec):
            raise ReplayStateError(
                f"replay state has codec {codec!r:.40}; this shard stores {self.codec!r}"
            )
        fresh = ReplayShard(
            self.capacity, self.nstep, self.discount, self.frame_stack, codec=self.codec
        )
        frame_shape = tuple(state["frame_shape"])
        keys = _int_array(state["episode_keys"], "episode_keys").tolist()
        ended = np.asarray(state["episode_ended"])
        if ended.ndim != 1 or ended.dtype.kind not in "biu" or len(ended) != len(keys):
            raise ReplayStateError(
                f"replay state: episode_ended is {ended.dtype} {ended.shape}, expected "
                f"{len(keys)} flags"
            )
        if len(set(keys)) != len(keys):
            raise ReplayStateError("replay state: an episode key appears twice")
        if frame_shape:
            fresh._frame_shape = _frame_shape_of(frame_shape)
            fresh._action_dim = int(state["action_dim"])
            if not 0 <= fresh._action_dim <= _MAX_ACTION_DIM:
                raise ReplayStateError(f"replay state: action_dim {fresh._action_dim} is invalid")
        elif keys:
            raise ReplayStateError(f"replay state: {len(keys)} episodes but no frame shape")
        per_episode: dict[int, dict[str, Any]] = {i: {} for i in range(len(keys))}
        for name, value in state.items():
            if isinstance(name, str) and name.startswith("episode."):
                _, index, field = name.split(".", 2)
                if not index.isdigit() or int(index) not in per_episode:
                    raise ReplayStateError(
                        f"replay state: {name!r:.60} names no episode (it holds {len(keys)})"
                    )
                per_episode[int(index)][field] = value
        frame_shape = fresh._frame_shape or ()

        def frame_store(i: int) -> FrameStore:
            if self.codec == "raw":
                return RawFrameStore.from_state(per_episode[i], frame_shape)
            return EncodedFrameStore.from_state(per_episode[i], frame_shape, self.codec)

        # cm frames are decoded and re-encoded, stored ones trial-decoded: both release the GIL
        disk_coded = any(isinstance(name, str) and name.endswith(".frames.cm") for name in state)
        workers = min(8, os.cpu_count() or 1) if threads is None else max(1, threads)
        if (disk_coded or self.codec != "raw") and workers > 1 and len(keys) > 1:
            with ThreadPoolExecutor(min(workers, len(keys))) as pool:
                stores = list(pool.map(frame_store, range(len(keys))))
        else:
            stores = [frame_store(i) for i in range(len(keys))]
        for i, (key, is_ended) in enumerate(zip(keys, ended.tolist(), strict=True)):
            frames = stores[i]
            episode = _Episode.from_arrays(
                key, len(fresh._slots), frames, per_episode[i], bool(is_ended)
            )
            if episode.floats.shape[1] != (fresh._action_dim or 0) + 2:
                raise ReplayStateError(
                    f"replay state: episode {key} has actions of size "
                    f"{episode.floats.shape[1] - 2}, expected {fresh._action_dim}"
                )
            fresh._episodes[key] = episode
            fresh._slots.append(episode)
            fresh._valid = _grown(fresh._valid, len(fresh._slots) - 1, len(fresh._slots))
            fresh._valid[episode.slot] = max(0, episode.length - self.nstep + 1)
            fresh._transitions += episode.length
            fresh._num_frames += len(frames)
        fresh._evicted = set(_int_array(state["evicted_keys"], "evicted_keys").tolist())
        if fresh._evicted & fresh._episodes.keys():
            raise ReplayStateError("replay state: an episode is both stored and evicted")
        _unpack_rng(fresh._rng, np.asarray(state["rng_state"]))
        fresh._evict(keep=None)
        return fresh


_CONTENTS = (
    "_frame_shape",
    "_action_dim",
    "_episodes",
    "_evicted",
    "_slots",
    "_valid",
    "_head",
    "_cumulative",
    "_transitions",
    "_num_frames",
)
"""what :meth:`ReplayShard.clear` resets and :meth:`ReplayShard.load_state_dict` replaces"""


def _int_array(value: Any, name: str) -> np.ndarray:
    """A 1-d int64 array from a state entry (ints of any width that fit)."""
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ReplayStateError(f"replay state: {name} is {array.dtype} {array.shape}, not ints")
    if array.size and array.dtype.kind == "u" and int(array.max()) > _I64.max:
        raise ReplayStateError(f"replay state: {name} holds values beyond int64")
    return array.astype(np.int64)


def _check_out(out: Batch, like: Batch, size: int) -> None:
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


def _pack_rng(rng: np.random.Generator) -> np.ndarray:
    """PCG64 state as int64 array of 32-bit pieces (so it survives any tensor conversion)."""
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise ValueError(f"cannot save a {state['bit_generator']} generator")
    pieces = []
    for value in (state["state"]["state"], state["state"]["inc"]):
        pieces += [(value >> shift) & _U32 for shift in (96, 64, 32, 0)]
    pieces += [state["has_uint32"], state["uinteger"]]
    return np.array(pieces, np.int64)


def _unpack_rng(rng: np.random.Generator, pieces: np.ndarray) -> None:
    """Inverse of :func:`_pack_rng`; ValueError (``rng`` untouched) unless ``pieces`` are ten
    32-bit pieces as it writes them."""
    if pieces.shape != (10,) or pieces.dtype.kind not in "iu":
        raise ValueError(f"generator state is {pieces.dtype} {pieces.shape}, expected 10 ints")
    values = [int(x) for x in pieces.tolist()]
    if min(values) < 0 or max(values) > _U32 or values[8] > 1:
        raise ValueError("generator state pieces out of range")

    def join(part: list[int]) -> int:
        return (part[0] << 96) | (part[1] << 64) | (part[2] << 32) | part[3]

    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": join(values[0:4]), "inc": join(values[4:8])},
        "has_uint32": values[8],
        "uinteger": values[9],
    }
