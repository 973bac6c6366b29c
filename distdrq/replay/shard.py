"""Replay storage: each episode's frames stored once; stacks and n-step targets rebuilt at sample
time.

:class:`ReplayShard` composes the parts of replay: episodes and their frame stores
(:mod:`distdrq.replay.episodes`), the checks of what comes in
(:mod:`distdrq.replay.validation`), the sampling index and batch assembly
(:mod:`distdrq.replay.sampler`) and the state layout of snapshots and checkpoints
(:mod:`distdrq.replay.state`). :func:`disk_state` makes a state compact for disk.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from distdrq.replay.decoding import CodedBatch, DecoderPool
from distdrq.replay.diskcodec import describes, encode_frames
from distdrq.replay.episodes import (
    EncodedFrameStore,
    Episode,
    FrameStore,
    RawFrameStore,
    decoded_frames,
    new_frame_store,
    restored_frame_store,
)
from distdrq.replay.errors import REJECT_REASONS, ChunkRejected, ReplayStateError
from distdrq.replay.framecache import SentFrames
from distdrq.replay.registry import codec_spec, is_registered
from distdrq.replay.sampler import BatchAssembler, SampleIndex
from distdrq.replay.state import (
    DiskFrames,
    EpisodeState,
    ReplayState,
    disk_blobs,
    pack_rng,
    state_counts,
    unpack_rng,
)
from distdrq.replay.validation import check_out, validate_chunk
from distdrq.types import Batch, Chunk

__all__ = [
    "DISK_CODECS",
    "EncodedFrameStore",
    "FrameStore",
    "RawFrameStore",
    "ReplayShard",
    "disk_state",
    "drqv2_bytes_per_transition",
    "state_counts",
]


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


DISK_CODECS = ("cm", "stored")


def disk_state(
    state: dict[str, Any],
    disk_codec: str = "cm",
    previous: dict[str, Any] | None = None,
    code_new: bool = True,
) -> dict[str, Any]:
    """A :meth:`ReplayShard.state_dict` made compact for disk (snapshots, checkpoints).

    ``disk_codec="cm"``: each episode's frames become one ``episode.{i}.frames.cm`` blob of
    :mod:`distdrq.replay.diskcodec` (decoded from the replay codec first, bit-exact);
    :meth:`ReplayShard.load_state_dict` decodes it and re-encodes with the loading shard's codec.
    ``previous``: an earlier ``cm`` disk state of the same replay (e.g. the last snapshot, as
    read back); an episode whose frames it already holds (same key, shape and CRC32) reuses that
    blob instead of being coded again, so a snapshot codes only what is new since the last one.
    ``code_new=False`` (a run stopping on Ctrl-C, where the user waits for the checkpoint):
    episodes that ``previous`` does not hold keep the replay codec's bytes instead of being
    ``cm``-coded (about 1 ms a frame); the state then loads only into a shard of the same codec,
    and the next snapshot with ``code_new`` codes them.
    ``"stored"``: the state as it is (the replay codec's bytes; fastest to write and restore).
    Runs without any lock: the state's arrays are immutable views. Returns a new dict.
    """
    if disk_codec not in DISK_CODECS:
        raise ValueError(
            f"unknown disk codec {disk_codec!r}; choose one of {', '.join(DISK_CODECS)}"
        )
    if disk_codec == "stored":
        return dict(state)
    parsed = ReplayState.from_flat(state)
    reuse = disk_blobs(previous) if previous is not None else {}
    for episode in parsed.episodes:
        frames = decoded_frames(episode.frames, str(parsed.codec), parsed.frame_shape)
        old = reuse.get(episode.key)
        if old is not None and describes(old, frames):
            episode.frames = DiskFrames(old)
        elif code_new:
            episode.frames = DiskFrames(encode_frames(frames))
    return parsed.to_flat()


_CHANGES = itertools.count(1)
"""numbers of changes to shards' sets of episodes (unique in the process)"""


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

    ``codec`` is a name from :data:`distdrq.replay.registry.CODECS` (or another registered
    codec). ``"raw"`` stores frames uncompressed (:class:`RawFrameStore`); any other codec
    stores them compressed (:class:`EncodedFrameStore`) and decodes a batch's frame windows in
    one :func:`~distdrq.replay.codec.decode_windows_into` call. Sampling is bit-exact across
    codecs: the same chunks and generator give the same batches. A compressed shard stores
    chunks whose ``encoded`` frames (see :class:`~distdrq.types.Chunk`) use its codec as they
    are, and encodes the ``frames`` of chunks without ``encoded`` itself.
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
        self._assembler = BatchAssembler(codec, self.nstep, self.discount, self.frame_stack)
        self._rng = np.random.default_rng(seed)
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)  # chunks refused, by reason
        self._rejected_transitions = 0
        self.clear()

    def clear(self) -> None:
        """Drop every episode and the shapes learnt from them (the sampling generator stays)."""
        self._frame_shape: tuple[int, ...] | None = None
        self._action_dim: int | None = None
        self._episodes: dict[int, Episode] = {}  # insertion order = eviction order
        self._removals = next(_CHANGES)  # episodes left: a new number (for frame caches)
        self._evicted: set[int] = set()
        self._index = SampleIndex(self.nstep)
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
            key, episode, encoded = validate_chunk(
                chunk,
                self.codec,
                self._frame_shape,
                self._action_dim,
                self._episodes,
                self._evicted,
            )
        except ChunkRejected as exc:
            self._rejected[exc.reason] = self._rejected.get(exc.reason, 0) + 1
            self._rejected_transitions += exc.transitions
            raise
        if episode is None:
            if self._frame_shape is None:
                shape = encoded.frame_shape if encoded is not None else chunk.frames.shape[1:]
                self._frame_shape = tuple(int(x) for x in shape)
                self._action_dim = int(chunk.actions.shape[1])
            assert self._action_dim is not None
            size = chunk.num_transitions
            frames = new_frame_store(self.codec, self._frame_shape, size + 1)
            episode = Episode(key, frames, self._action_dim, size)
            self._episodes[key] = episode
            self._index.add(episode)
        frames_before = len(episode.frames)
        episode.append(chunk, encoded)
        self._transitions += chunk.num_transitions
        self._num_frames += len(episode.frames) - frames_before
        self._index.update(episode)
        self._evict(keep=episode)

    def _evict(self, keep: Episode | None) -> None:
        for episode in self._index.oldest_first():
            if self._transitions <= self.capacity:
                break
            if episode is not keep:
                self._remove(episode)
        self._index.drop_evicted()

    def _remove(self, episode: Episode) -> None:
        self._removals = next(_CHANGES)
        del self._episodes[episode.key]
        self._evicted.add(episode.key)
        self._index.remove(episode)
        self._transitions -= episode.length
        self._num_frames -= len(episode.frames)

    # -----------------------------------------------------------------------------------------
    # sample

    def __len__(self) -> int:
        """Transitions stored."""
        return self._transitions

    @property
    def num_sampleable(self) -> int:
        """Number of valid n-step start indices over all episodes."""
        return self._index.total

    @property
    def num_episodes(self) -> int:
        """Episodes stored (finished or not)."""
        return len(self._episodes)

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator | None = None,
        out: Batch | None = None,
        decoder: DecoderPool | None = None,
    ) -> Batch:
        """``batch_size`` n-step transitions drawn uniformly (with replacement) over all valid
        starts, grouped by episode as the class docstring says; uses the shard's own generator
        (seeded at construction) unless ``rng`` is given.

        ``out``, if given, is a batch of C-contiguous arrays of the right shapes and dtypes (for
        example in pinned memory) that is filled and returned: reusing buffers saves allocating
        and page-faulting two fresh observation arrays per batch.

        ``decoder``: a :class:`~distdrq.replay.decoding.DecoderPool` whose threads decode the
        coded frames (this thread draws and plans), for the same batch in less time where
        there are cores to spare (``distdrq train`` with ``replay.decode_on=learner``).

        Raises :class:`ValueError` if no episode has ``nstep`` transitions yet.
        """
        slots, steps = self._draw(batch_size, rng)
        return self._gather(slots, steps, out, decoder)

    def sample_coded(
        self,
        batch_size: int,
        rng: np.random.Generator | None = None,
        sent: SentFrames | None = None,
    ) -> CodedBatch:
        """:meth:`sample` with the frames left coded, for decoding elsewhere
        (``replay.decode_on=learner``): the same draws from the same generator, the same
        actions, rewards, discounts and versions, and the coded bytes of the frames the batch
        needs (a copy: it stays valid whatever the shard does next). Decoded by a
        :class:`~distdrq.replay.decoding.DecoderPool`, it is bit for bit what :meth:`sample`
        returns. Raises :class:`ValueError` as :meth:`sample` does, and for a raw shard.

        ``sent``: what a client's frame cache holds (:mod:`~distdrq.replay.framecache`); those
        frames go by key, the others by bytes (and are recorded as sent). Call
        :meth:`forget_gone` on it first."""
        if self.codec == "raw":
            raise ValueError("a raw shard has nothing to decode: use sample()")
        slots, steps = self._draw(batch_size, rng)
        assert self._frame_shape is not None and self._action_dim is not None
        small = Batch(
            obs=np.empty(0, np.uint8),
            action=np.empty((batch_size, self._action_dim), np.float32),
            reward=np.empty(batch_size, np.float32),
            discount=np.empty(batch_size, np.float32),
            next_obs=np.empty(0, np.uint8),
            version=np.empty(batch_size, np.int64),
        )
        return self._assembler.assemble_coded(
            self._index.slots, slots, steps, self._frame_shape, small, sent
        )

    def forget_gone(self, sent: SentFrames) -> None:
        """Tell a client's record of sent frames which episodes left this shard since it was
        last told (their frames are dropped from the client's cache)."""
        if sent.removals_seen != self._removals:
            sent.retain({episode.serial for episode in self._episodes.values()})
            sent.removals_seen = self._removals

    def _draw(
        self, batch_size: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be > 0")
        if self._index.total == 0:
            raise ValueError(
                f"nothing to sample: {self._transitions} transitions in {len(self._episodes)} "
                f"episodes and none has nstep={self.nstep} transitions yet"
            )
        return self._index.draw(batch_size, rng if rng is not None else self._rng)

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

    def _batch_at(self, episode_key: int, steps: np.ndarray) -> Batch:
        """The transitions at ``steps`` (each a valid start) of one episode; for tests."""
        episode = self._episodes[episode_key]
        steps = np.asarray(steps, np.int64)
        if len(steps) and not 0 <= steps.min() <= steps.max() <= episode.length - self.nstep:
            raise ValueError(
                f"steps outside 0..{episode.length - self.nstep} for episode {episode_key}"
            )
        return self._gather(np.full(len(steps), episode.slot), steps)

    def _gather(
        self,
        slots: np.ndarray,
        steps: np.ndarray,
        out: Batch | None = None,
        decoder: DecoderPool | None = None,
    ) -> Batch:
        """Build a batch from (slot, step) pairs; equal slots must be adjacent."""
        batch = self.empty_batch(len(steps)) if out is None else out
        if out is not None:
            check_out(out, self.empty_batch(0), len(steps))
        assert self._frame_shape is not None
        return self._assembler.assemble(
            self._index.slots, slots, steps, self._frame_shape, batch, decoder
        )

    # -----------------------------------------------------------------------------------------
    # stats and checkpoints

    def stats(self) -> dict[str, float]:
        """Sizes and memory.

        ``stored_bytes`` counts the ``.nbytes`` of every array held (frames, actions, rewards,
        discounts, versions, growth slack of unfinished episodes included, plus the sampling
        index); Python object overhead (a few hundred bytes per episode) is not counted. For a
        compressed shard, frames count as their compressed payload plus a 16 B per-frame index,
        plus the reference frames an unfinished episode's encoder keeps when the shard encodes
        raw chunks itself; the reused decode work space of :meth:`sample` is not counted.
        ``ratio_vs_drqv2`` is :func:`drqv2_bytes_per_transition` over ``bytes_per_transition``.

        Rejected chunks (counted since this shard object was made; restores do not reset
        them): ``rejected_chunks`` and ``rejected_transitions`` in all, and
        ``rejected_chunks_<reason>`` for every reason of
        :data:`~distdrq.replay.errors.REJECT_REASONS`.
        """
        stored = sum(episode.nbytes for episode in self._episodes.values()) + self._index.nbytes
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
        """Everything needed to restore the shard, in the flat layout of
        :mod:`distdrq.replay.state`: numpy arrays, ints, floats, strings, lists.

        Per-episode arrays are views of the live buffer (no copy; for a compressed shard, the
        payload of an unfinished episode is a joined copy): they stay valid while the shard keeps
        running, but do not modify them. Frames are ``frames`` (raw) or ``frames.payload`` and
        ``frames.sizes`` (compressed: the codec's bytes as stored, never decoded frames).
        """
        return ReplayState(
            codec=self.codec,
            capacity=self.capacity,
            nstep=self.nstep,
            discount=self.discount,
            frame_stack=self.frame_stack,
            frame_shape=self._frame_shape or (),
            action_dim=self._action_dim if self._action_dim is not None else -1,
            episodes=[episode.state() for episode in self._episodes.values()],
            evicted_keys=list(self._evicted),
            rng_state=pack_rng(self._rng),
        ).to_flat()

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
        parsed = ReplayState.from_flat(state)
        if parsed.holds_codec_bytes and parsed.codec != self.codec:
            gone = (
                ""
                if parsed.codec is None or is_registered(parsed.codec)
                else ", which this distdrq no longer has (load it with the version that wrote "
                "it and snapshot it again with replay.disk_codec=cm, which any codec loads)"
            )
            raise ReplayStateError(
                f"replay state has codec {parsed.codec!r:.40}{gone}; this shard stores "
                f"{self.codec!r}"
            )
        fresh = ReplayShard(
            self.capacity, self.nstep, self.discount, self.frame_stack, codec=self.codec
        )
        if parsed.frame_shape:
            fresh._frame_shape, fresh._action_dim = parsed.frame_shape, parsed.action_dim

        def frame_store(episode: EpisodeState) -> FrameStore:
            return restored_frame_store(self.codec, parsed.frame_shape, episode.frames)

        # cm frames are decoded and re-encoded, stored ones trial-decoded: both release the GIL
        disk_coded = any(isinstance(e.frames, DiskFrames) for e in parsed.episodes)
        workers = min(8, os.cpu_count() or 1) if threads is None else max(1, threads)
        if (disk_coded or self.codec != "raw") and workers > 1 and len(parsed.episodes) > 1:
            with ThreadPoolExecutor(min(workers, len(parsed.episodes))) as pool:
                stores = list(pool.map(frame_store, parsed.episodes))
        else:
            stores = [frame_store(episode) for episode in parsed.episodes]
        for episode_state, frames in zip(parsed.episodes, stores, strict=True):
            episode = Episode.restored(episode_state, frames, parsed.action_dim)
            fresh._episodes[episode.key] = episode
            fresh._index.add(episode)
            fresh._transitions += episode.length
            fresh._num_frames += len(frames)
        fresh._evicted = set(parsed.evicted_keys)
        if fresh._evicted & fresh._episodes.keys():
            raise ReplayStateError("replay state: an episode is both stored and evicted")
        unpack_rng(fresh._rng, parsed.rng_state)
        fresh._evict(keep=None)
        return fresh


_CONTENTS = (
    "_frame_shape",
    "_action_dim",
    "_episodes",
    "_evicted",
    "_index",
    "_transitions",
    "_num_frames",
)
"""what :meth:`ReplayShard.clear` resets and :meth:`ReplayShard.load_state_dict` replaces"""
