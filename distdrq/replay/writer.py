"""Turn an env's time steps into replay :class:`~distdrq.types.Chunk` s."""

from __future__ import annotations

import numpy as np

from distdrq.replay.codec import FrameEncoder, codec_spec
from distdrq.types import Chunk

_MAX_WRITER_ID = (1 << 31) - 1
_MAX_EPISODES = 1 << 32


class EpisodeWriter:
    """Turns env time steps into Chunks for one writer (env actor or trainer).

    Episode keys are ``writer_id << 32 | episode_index``, unique across writers with distinct
    ids. Incoming arrays are copied, so the env may reuse its buffers.

    With a ``codec`` other than ``"raw"`` (a name from :data:`distdrq.replay.codec.CODECS`) the
    writer encodes frames itself, actor side, with one
    :class:`~distdrq.replay.codec.FrameEncoder` per episode: its chunks carry ``encoded`` frames
    and an empty ``frames`` array ``[0, C, H, W]``; feed them to a shard with the same codec.
    Encoded chunks carry the checksum the shard verifies.

    If the shard rejects a chunk (:class:`~distdrq.replay.errors.ChunkRejected`), the episode's
    later chunks cannot be stored either (they would follow a gap): call
    :meth:`abandon_episode` and the writer emits nothing more for it.
    """

    def __init__(self, writer_id: int, chunk_length: int | None = None, codec: str = "raw") -> None:
        """``chunk_length=None`` emits one chunk per episode, at its end; otherwise a chunk every
        ``chunk_length`` transitions and one at the episode's end."""
        codec_spec(codec)  # ValueError naming the choices
        if not 0 <= writer_id <= _MAX_WRITER_ID:
            raise ValueError(f"writer_id={writer_id} must be in 0..{_MAX_WRITER_ID}")
        if chunk_length is not None and chunk_length <= 0:
            raise ValueError(f"chunk_length={chunk_length} must be > 0 or None")
        self.writer_id = int(writer_id)
        self.chunk_length = chunk_length
        self.codec = codec
        self._encoder: FrameEncoder | None = None  # this episode's, for codecs other than raw
        self._episode_index = 0
        self._key: int | None = None  # None: no episode in progress
        self._frame_shape: tuple[int, ...] | None = None
        self._emitted = 0  # transitions of this episode already emitted in chunks
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._discounts: list[float] = []
        self._versions: list[int] = []
        self._abandoned = False  # the episode in progress emits no more chunks

    @property
    def episode_key(self) -> int | None:
        """Key of the episode in progress, or None between episodes."""
        return self._key

    @property
    def episodes_started(self) -> int:
        """Episodes begun so far (the next episode's index); restore it when resuming a run so
        that keys stay unique."""
        return self._episode_index

    @episodes_started.setter
    def episodes_started(self, value: int) -> None:
        if self._key is not None:
            raise ValueError("cannot set episodes_started while an episode is in progress")
        if not 0 <= value <= _MAX_EPISODES:
            raise ValueError(f"episodes_started={value} must be in 0..{_MAX_EPISODES}")
        self._episode_index = int(value)

    def begin(self, frame: np.ndarray) -> None:
        """Start a new episode with its reset frame (uint8 ``[C, H, W]``).

        An unfinished previous episode is abandoned; its transitions must have been flushed
        (else :class:`ValueError`).
        """
        if self._actions:
            raise ValueError(
                f"episode {self._key} has {len(self._actions)} unflushed transitions; "
                "call flush() before beginning another episode"
            )
        if self._episode_index >= _MAX_EPISODES:
            raise ValueError(f"writer {self.writer_id} has used all {_MAX_EPISODES} episode keys")
        frame = self._copy_frame(frame, check_shape=False)
        self._frame_shape = frame.shape
        self._key = (self.writer_id << 32) | self._episode_index
        self._episode_index += 1
        self._emitted = 0
        self._frames = [frame]
        self._abandoned = False
        self._encoder = FrameEncoder(self.codec, frame.shape) if self.codec != "raw" else None

    def abandon_episode(self) -> None:
        """Emit nothing more for the episode in progress (its pending transitions are dropped):
        for when replay rejected one of its chunks. :meth:`append` keeps taking its steps and
        returns None until the episode's last step; the next :meth:`begin` starts afresh."""
        if self._key is None:
            return
        self._abandoned = True
        self._encoder = None
        self._frames, self._actions = [], []
        self._rewards, self._discounts, self._versions = [], [], []

    def append(
        self,
        action: np.ndarray,
        reward: float,
        discount: float,
        frame: np.ndarray,
        last: bool,
        version: int = 0,
    ) -> Chunk | None:
        """Record one transition (``action`` taken, its ``reward``, env ``discount`` and next
        ``frame``); return a Chunk when ``chunk_length`` transitions are pending or ``last``."""
        if self._key is None:
            raise ValueError("no episode in progress; call begin(reset_frame) first")
        if self._abandoned:
            if last:
                self._key = None
            return None
        self._frames.append(self._copy_frame(frame, check_shape=True))
        self._actions.append(np.array(action, np.float32).reshape(-1))
        self._rewards.append(float(reward))
        self._discounts.append(float(discount))
        self._versions.append(int(version))
        if last:
            return self._emit(last=True)
        if self.chunk_length is not None and len(self._actions) >= self.chunk_length:
            return self._emit(last=False)
        return None

    def flush(self) -> Chunk | None:
        """Emit pending transitions as a partial chunk (for shutdown or a checkpoint); None if
        there are none."""
        if self._key is None or self._abandoned or not self._actions:
            return None
        return self._emit(last=False)

    def _copy_frame(self, frame: np.ndarray, check_shape: bool) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3:
            raise ValueError(f"frames must be uint8 [C, H, W], got {frame.dtype} {frame.shape}")
        if check_shape and frame.shape != self._frame_shape:
            raise ValueError(
                f"frame shape {frame.shape} differs from the reset frame's {self._frame_shape}"
            )
        return frame.copy()

    def _emit(self, last: bool) -> Chunk:
        assert self._key is not None and self._frame_shape is not None
        frames, encoded = np.stack(self._frames), None
        if self._encoder is not None:
            encoded = self._encoder.encode(frames)
            frames = np.empty((0, *self._frame_shape), np.uint8)
        chunk = Chunk(
            episode_key=self._key,
            first_step=self._emitted,
            frames=frames,
            actions=np.stack(self._actions),
            rewards=np.array(self._rewards, np.float32),
            discounts=np.array(self._discounts, np.float32),
            versions=np.array(self._versions, np.int64),
            last=last,
            encoded=encoded,
        )
        self._emitted += len(self._actions)
        self._frames, self._actions = [], []
        self._rewards, self._discounts, self._versions = [], [], []
        if last:
            self._key = None
            self._encoder = None
        return chunk
