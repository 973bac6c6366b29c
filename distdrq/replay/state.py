"""The replay state, defined once: what :meth:`ReplayShard.state_dict` returns and
:meth:`ReplayShard.load_state_dict` takes, what :func:`~distdrq.replay.shard.disk_state`
re-codes for disk and what snapshots and checkpoints store.

In memory it is a :class:`ReplayState` of :class:`EpisodeState` s; in files it is a flat
mapping of plain values and numpy arrays (msgpack, no pickle: :meth:`ReplayState.to_flat` and
:meth:`ReplayState.from_flat`), laid out as it has been since the first snapshot format::

    codec, capacity, nstep,       the codec of the stored frames and the shard's settings
    discount, frame_stack         (a loading shard keeps its own settings)
    frame_shape                   [C, H, W]; [] before the first chunk
    action_dim                    A; -1 before the first chunk
    episode_keys, episode_ended   int64 [E] and bool [E]: the stored episodes, oldest first
    evicted_keys                  int64, ascending: the episodes that can take no more chunks
    rng_state                     int64 [10]: the sampling generator (:func:`pack_rng`)
    episode.{i}.actions           float32 [T, A] of the i-th episode, and likewise
    episode.{i}.rewards           float32 [T]
    episode.{i}.discounts         float32 [T], env discounts
    episode.{i}.versions          int64 [T], weight versions
    episode.{i}.frames            uint8 [T + 1, C, H, W]           (RawFrames: codec "raw")
    episode.{i}.frames.payload    uint8 [N], the codec's bytes     (CodedFrames: other codecs)
    episode.{i}.frames.sizes      int64 [T + 1], bytes per frame
    episode.{i}.frames.cm         uint8, a diskcodec blob          (DiskFrames: disk_state "cm")

Each episode has one form of frames (a state read from a file may hold several; the disk form
wins). Reading checks the layout (:class:`~distdrq.replay.errors.ReplayStateError` for what is
not a replay state); a shard loading it checks the contents (:mod:`distdrq.replay.validation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distdrq.replay.errors import ReplayStateError
from distdrq.replay.validation import action_dim_of, ended_flags, frame_shape_of, int_array

_U32 = (1 << 32) - 1
_SETTINGS = ("capacity", "nstep", "discount", "frame_stack")


# ---------------------------------------------------------------------------------------------
# one episode


@dataclass
class RawFrames:
    """Uncompressed frames: ``episode.{i}.frames``."""

    frames: np.ndarray
    """uint8 [F, C, H, W]"""


@dataclass
class CodedFrames:
    """The replay codec's bytes as stored: ``episode.{i}.frames.payload`` and ``.sizes``."""

    payload: np.ndarray
    """uint8 [N], every frame's LZ4 block, in order"""
    sizes: np.ndarray
    """int64 [F], bytes of each frame"""


@dataclass
class DiskFrames:
    """Frames re-coded for disk (:mod:`distdrq.replay.diskcodec`): ``episode.{i}.frames.cm``."""

    blob: np.ndarray
    """uint8, one :func:`~distdrq.replay.diskcodec.encode_frames` blob"""


StoredFrames = RawFrames | CodedFrames | DiskFrames

_FRAME_FIELDS: dict[type, dict[str, str]] = {  # attribute -> name after "episode.{i}."
    RawFrames: {"frames": "frames"},
    CodedFrames: {"payload": "frames.payload", "sizes": "frames.sizes"},
    DiskFrames: {"blob": "frames.cm"},
}
TRANSITION_FIELDS = ("actions", "rewards", "discounts", "versions")
"""the per-transition arrays of :class:`EpisodeState`, by their names in both forms"""


@dataclass
class EpisodeState:
    """One stored episode. Read from a file, its arrays are as found there: a loading shard
    checks them."""

    key: int
    ended: bool
    frames: StoredFrames
    actions: np.ndarray
    """float32 [T, A]"""
    rewards: np.ndarray
    """float32 [T]"""
    discounts: np.ndarray
    """float32 [T], env discounts"""
    versions: np.ndarray
    """int64 [T]"""


def _field(index: int, name: str) -> str:
    return f"episode.{index}.{name}"


def _frame_fields(index: int, frames: StoredFrames) -> dict[str, np.ndarray]:
    return {
        _field(index, name): getattr(frames, attr)
        for attr, name in _FRAME_FIELDS[type(frames)].items()
    }


def _frames_from(fields: Mapping[str, Any], codec: str | None) -> StoredFrames:
    """An episode's frames from its fields: disk-coded if it has them, else in the form its
    state's ``codec`` stores (KeyError if they are missing)."""
    if _FRAME_FIELDS[DiskFrames]["blob"] in fields:
        kind: type = DiskFrames
    else:
        kind = RawFrames if codec == "raw" else CodedFrames
    return kind(**{attr: fields[name] for attr, name in _FRAME_FIELDS[kind].items()})


# ---------------------------------------------------------------------------------------------
# the whole state


@dataclass
class ReplayState:
    """Everything a shard holds: settings, episodes, evicted keys and sampling generator.

    Read from a file, the settings are None where it lacks them (a loading shard uses its own);
    ``frame_shape`` is ``()`` and ``action_dim`` -1 while no chunk has been stored."""

    codec: str | None
    """the codec of the stored frames (:mod:`distdrq.replay.registry`)"""
    frame_shape: tuple[int, ...]
    action_dim: int
    episodes: list[EpisodeState]
    """oldest first"""
    evicted_keys: list[int]
    rng_state: np.ndarray
    """:func:`pack_rng` of the sampling generator"""
    capacity: int | None = None
    nstep: int | None = None
    discount: float | None = None
    frame_stack: int | None = None

    @property
    def holds_codec_bytes(self) -> bool:
        """Whether frames are stored as a codec stores them (raw or coded), not disk-coded: such
        a state loads only into a shard of its codec."""
        return any(not isinstance(episode.frames, DiskFrames) for episode in self.episodes)

    def to_flat(self) -> dict[str, Any]:
        """The flat mapping of the module docstring (arrays as they are, no copies)."""
        flat: dict[str, Any] = {"codec": self.codec}
        flat.update({name: getattr(self, name) for name in _SETTINGS})
        flat.update(
            frame_shape=list(self.frame_shape),
            action_dim=self.action_dim,
            episode_keys=np.array([e.key for e in self.episodes], np.int64),
            episode_ended=np.array([e.ended for e in self.episodes], np.bool_),
            evicted_keys=np.array(sorted(self.evicted_keys), np.int64),
            rng_state=self.rng_state,
        )
        # disk-coded frames after every episode's other fields: entry order is not part of the
        # layout, but keeping the order disk_state always wrote keeps files byte for byte
        for i, episode in enumerate(self.episodes):
            if not isinstance(episode.frames, DiskFrames):
                flat.update(_frame_fields(i, episode.frames))
            for name in TRANSITION_FIELDS:
                flat[_field(i, name)] = getattr(episode, name)
        for i, episode in enumerate(self.episodes):
            if isinstance(episode.frames, DiskFrames):
                flat.update(_frame_fields(i, episode.frames))
        return flat

    @classmethod
    def from_flat(cls, state: Any) -> ReplayState:
        """A state from its flat mapping, its layout checked: ReplayStateError, or the
        KeyError, TypeError or ValueError of a missing or malformed entry. Unknown fields of
        an episode are ignored."""
        if not isinstance(state, Mapping):
            raise ReplayStateError(f"replay state must be a mapping, got {type(state).__name__}")
        keys = int_array(state["episode_keys"], "episode_keys").tolist()
        ended = ended_flags(state["episode_ended"], len(keys))
        if len(set(keys)) != len(keys):
            raise ReplayStateError("replay state: an episode key appears twice")
        frame_shape, action_dim = tuple(state["frame_shape"]), -1
        if frame_shape:
            frame_shape = frame_shape_of(frame_shape)
            action_dim = action_dim_of(state["action_dim"])
        elif keys:
            raise ReplayStateError(f"replay state: {len(keys)} episodes but no frame shape")
        fields: list[dict[str, Any]] = [{} for _ in keys]
        for name, value in state.items():
            if isinstance(name, str) and name.startswith("episode."):
                _, index, rest = name.split(".", 2)
                if not index.isdigit() or int(index) >= len(keys):
                    raise ReplayStateError(
                        f"replay state: {name!r:.60} names no episode (it holds {len(keys)})"
                    )
                fields[int(index)][rest] = value
        codec = state.get("codec")
        codec = codec if isinstance(codec, str) else None
        episodes = [
            EpisodeState(
                key,
                is_ended,
                _frames_from(own, codec),
                **{name: own[name] for name in TRANSITION_FIELDS},
            )
            for key, is_ended, own in zip(keys, ended, fields, strict=True)
        ]
        return cls(
            codec=codec,
            frame_shape=frame_shape,
            action_dim=action_dim,
            episodes=episodes,
            evicted_keys=int_array(state["evicted_keys"], "evicted_keys").tolist(),
            rng_state=np.asarray(state["rng_state"]),
            **{name: state.get(name) for name in _SETTINGS},
        )


def state_counts(state: Any) -> tuple[int, int] | None:
    """``(transitions, episodes)`` of a flat replay state, found at the top of ``state`` or one
    level down (e.g. a snapshot's ``{"shard": ...}``); None if there is none or it is
    malformed. Reads lengths only."""
    if not isinstance(state, Mapping):
        return None
    candidates = [state, *(v for v in state.values() if isinstance(v, Mapping))]
    for candidate in candidates:
        if "episode_keys" not in candidate:
            continue
        try:
            episodes = len(candidate["episode_keys"])
            transitions = sum(len(candidate[_field(i, "rewards")]) for i in range(episodes))
        except (TypeError, KeyError):
            return None
        return int(transitions), int(episodes)
    return None


def disk_blobs(state: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """The disk-coded frames (:class:`DiskFrames`) a flat state holds, by episode key; read
    leniently (a blob is only reused once it proves to hold the right frames)."""
    keys = np.asarray(state.get("episode_keys", ()), np.int64).tolist()
    blobs = {}
    for i, key in enumerate(keys):
        blob = state.get(_field(i, _FRAME_FIELDS[DiskFrames]["blob"]))
        if blob is not None:
            blobs[key] = np.asarray(blob, np.uint8)
    return blobs


# ---------------------------------------------------------------------------------------------
# the sampling generator


def pack_rng(rng: np.random.Generator) -> np.ndarray:
    """PCG64 state as int64 array of 32-bit pieces (so it survives any tensor conversion)."""
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise ValueError(f"cannot save a {state['bit_generator']} generator")
    pieces = []
    for value in (state["state"]["state"], state["state"]["inc"]):
        pieces += [(value >> shift) & _U32 for shift in (96, 64, 32, 0)]
    pieces += [state["has_uint32"], state["uinteger"]]
    return np.array(pieces, np.int64)


def unpack_rng(rng: np.random.Generator, pieces: np.ndarray) -> None:
    """Inverse of :func:`pack_rng`; ValueError (``rng`` untouched) unless ``pieces`` are ten
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
