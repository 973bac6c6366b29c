"""Storage of episodes: each episode's frames (coded or not) and per-transition arrays.

Index conventions are those of :mod:`distdrq.types`: an episode with ``T`` transitions stored
so far has ``T + 1`` frames.

Frames live behind :class:`FrameStore` (append frames, gather frames by index):
:class:`RawFrameStore` for ``codec="raw"``, :class:`EncodedFrameStore` for the lossless codecs
of :mod:`distdrq.replay.codec`, whose episodes are decoded together at sample time (see
:mod:`distdrq.replay.sampler`). An :class:`Episode` adds the actions, rewards, env discounts
and weight versions. Both convert to and from their part of the replay state
(:mod:`distdrq.replay.state`), checked on the way in by :mod:`distdrq.replay.validation`.
"""

from __future__ import annotations

import abc
import itertools

import numpy as np

from distdrq.replay.codec import (
    DEFAULT_CODEC,
    EncodedFrames,
    EpisodeFrames,
    FrameEncoder,
    decode_windows,
)
from distdrq.replay.diskcodec import decode_frames
from distdrq.replay.state import CodedFrames, DiskFrames, EpisodeState, RawFrames, StoredFrames
from distdrq.replay.validation import (
    coded_frames_of,
    disk_frames_shape,
    raw_frames_of,
    transitions_of,
)
from distdrq.types import Chunk


def grown(array: np.ndarray, used: int, needed: int) -> np.ndarray:
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
    def state(self) -> RawFrames | CodedFrames:
        """The frames as a replay state holds them (views of the stored arrays)."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, frames: StoredFrames, frame_shape: tuple[int, ...]) -> FrameStore:
        """Rebuild a store from a state's frames, checked (ValueError), taking ownership of the
        arrays; disk-coded frames are decoded (and encoded with the store's codec)."""


class RawFrameStore(FrameStore):
    """Uncompressed frames in one preallocated uint8 array whose capacity doubles as it grows."""

    def __init__(self, frame_shape: tuple[int, ...], capacity: int = 0) -> None:
        self._buffer = np.empty((capacity, *frame_shape), np.uint8)
        self._length = 0

    def append(self, frames: np.ndarray) -> None:
        needed = self._length + len(frames)
        self._buffer = grown(self._buffer, self._length, needed)
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

    def state(self) -> RawFrames:
        return RawFrames(self._buffer[: self._length])

    @classmethod
    def from_state(cls, frames: StoredFrames, frame_shape: tuple[int, ...]) -> RawFrameStore:
        if isinstance(frames, CodedFrames):
            raise ValueError("stored frames are a codec's bytes; this store holds raw frames")
        store = cls(frame_shape)
        store._buffer = decoded_frames(frames, "raw", frame_shape)
        store._length = len(store._buffer)
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
        frames = decode_windows([self.episode], np.zeros(1, np.int64), indices.reshape(1, -1))
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

    def state(self) -> CodedFrames:
        """The compressed bytes and the bytes per frame; a view of the stored bytes once the
        episode has ended."""
        return CodedFrames(*self.episode.payload_and_sizes())

    @classmethod
    def from_state(
        cls, frames: StoredFrames, frame_shape: tuple[int, ...], codec: str = DEFAULT_CODEC
    ) -> EncodedFrameStore:
        store = cls(codec, frame_shape)
        if isinstance(frames, CodedFrames):
            store.episode = store._rebuilt(
                *coded_frames_of(frames.payload, frames.sizes, codec, frame_shape)
            )
        else:
            store.append(decoded_frames(frames, codec, frame_shape))
            store.finalize()
        return store


def new_frame_store(codec: str, frame_shape: tuple[int, ...], capacity: int) -> FrameStore:
    """An empty store for an episode's frames (``capacity`` frames preallocated if raw)."""
    if codec == "raw":
        return RawFrameStore(frame_shape, capacity)
    return EncodedFrameStore(codec, frame_shape)


def restored_frame_store(
    codec: str, frame_shape: tuple[int, ...], frames: StoredFrames
) -> FrameStore:
    """A store of ``codec`` holding a state's frames (ValueError if they do not check out)."""
    if codec == "raw":
        return RawFrameStore.from_state(frames, frame_shape)
    return EncodedFrameStore.from_state(frames, frame_shape, codec)


def decoded_frames(frames: StoredFrames, codec: str, frame_shape: tuple[int, ...]) -> np.ndarray:
    """All the frames of a state's episode, uint8 ``[F, *frame_shape]``, checked; ``codec`` is
    the codec of coded frames."""
    if isinstance(frames, RawFrames):
        return raw_frames_of(frames.frames, frame_shape)
    if isinstance(frames, DiskFrames):
        blob = np.ascontiguousarray(np.asarray(frames.blob, np.uint8)).reshape(-1)
        return disk_frames_shape(decode_frames(blob), frame_shape)
    store = EncodedFrameStore.from_state(frames, frame_shape, codec)
    return store.gather(np.arange(len(store)))


_SERIALS = itertools.count(1)


class Episode:
    """One episode's frames, per-transition data and bookkeeping.

    Actions, rewards and env discounts share one float32 array ``[capacity, A + 2]`` (columns
    ``:A``, ``A``, ``A + 1``) so that sampling reads them with one gather per episode.
    """

    __slots__ = ("key", "serial", "slot", "frames", "floats", "versions", "length", "ended")

    def __init__(self, key: int, frames: FrameStore, action_dim: int, capacity: int) -> None:
        self.key = key
        self.serial = next(_SERIALS)
        """unique among the episodes this process ever held (a key may come back: a writer
        restarted, a snapshot restored); names its frames in a learner's frame cache"""
        self.slot = -1
        """its place in the sampling index, set by :class:`~distdrq.replay.sampler.SampleIndex`"""
        self.frames = frames
        self.floats = np.empty((capacity, action_dim + 2), np.float32)
        self.versions = np.empty(capacity, np.int64)
        self.length = 0
        """transitions stored"""
        self.ended = False

    def append(self, chunk: Chunk, encoded: EncodedFrames | None = None) -> None:
        """Append a chunk; its frames are ``encoded`` if given (an EncodedFrameStore), else
        ``chunk.frames``."""
        start, stop = self.length, self.length + chunk.num_transitions
        self.floats = grown(self.floats, start, stop)
        self.floats[start:stop, :-2] = chunk.actions
        self.floats[start:stop, -2] = chunk.rewards
        self.floats[start:stop, -1] = chunk.discounts
        self.versions = grown(self.versions, start, stop)
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
        """Per-transition arrays of the stored steps, contiguous, by their state names."""
        floats = self.floats[: self.length]
        return {
            "actions": np.ascontiguousarray(floats[:, :-2]),
            "rewards": np.ascontiguousarray(floats[:, -2]),
            "discounts": np.ascontiguousarray(floats[:, -1]),
            "versions": self.versions[: self.length],
        }

    def state(self) -> EpisodeState:
        """The episode as a replay state holds it (views of the stored frames)."""
        return EpisodeState(self.key, self.ended, self.frames.state(), **self.arrays())

    @classmethod
    def restored(cls, state: EpisodeState, frames: FrameStore, action_dim: int) -> Episode:
        """An episode from its state and its restored frames; ValueError (storing nothing) if
        the arrays are inconsistent, of the wrong kind or hold values an insert would refuse."""
        actions, rewards, discounts, versions = transitions_of(
            state.key,
            state.actions,
            state.rewards,
            state.discounts,
            state.versions,
            len(frames),
            action_dim,
        )
        episode = cls(state.key, frames, action_dim, len(rewards))
        episode.floats[:, :-2] = actions
        episode.floats[:, -2] = rewards
        episode.floats[:, -1] = discounts
        episode.versions = versions
        episode.length = len(rewards)
        episode.ended = state.ended
        return episode

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.floats.nbytes + self.versions.nbytes)
