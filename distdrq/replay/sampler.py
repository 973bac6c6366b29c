"""Sampling: uniform draws over valid n-step starts (:class:`SampleIndex`), and batches built
from them (:class:`BatchAssembler`).

Index conventions are those of :mod:`distdrq.types`. An episode with ``T`` transitions stored so
far has ``T + 1`` frames and ``max(0, T - nstep + 1)`` valid sample starts ``0 <= t <= T - nstep``;
sampling is uniform over all valid ``(episode, t)`` pairs of all episodes, finished or not. A
sample at ``t`` stacks frames ``t - k + 1 .. t`` (obs) and ``t + n - k + 1 .. t + n``
(next_obs), repeating the reset frame for negative indices, and folds rewards and env
discounts ``t .. t + n - 1`` into one n-step reward and discount.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from distdrq.replay.codec import EpisodeFrames, decode_windows_into, plan_into
from distdrq.replay.decoding import CodedBatch, CodedWindows, DecoderPool
from distdrq.replay.episodes import EncodedFrameStore, Episode, grown
from distdrq.replay.framecache import SentFrames
from distdrq.types import Batch


class SampleIndex:
    """Where a uniform draw over the valid starts of all stored episodes lands.

    Each episode takes a *slot* when it is first stored; slots are in insertion order, which is
    eviction order, and ``valid[slot]`` counts the episode's valid starts (0 once evicted).
    A batch is a sorted array of uniform draws below the total, each located by binary search
    in the cumulative counts of the slots from ``head`` on (those before it are all evicted);
    the cumulative counts are rebuilt, lazily, after any change. Evicted slots before the head
    are dropped once they make up most of the slots, so that the arrays stay proportional to
    the episodes held.
    """

    def __init__(self, nstep: int) -> None:
        self.nstep = nstep
        self.slots: list[Episode | None] = []
        """the episode of each slot, None once evicted"""
        self.valid = np.zeros(64, np.int64)
        """valid sample starts per slot (capacity doubles as slots are added)"""
        self.head = 0
        """slots before it are all evicted"""
        self.cumulative: np.ndarray | None = None
        """cumsum of ``valid[head:]``; None when stale"""

    def add(self, episode: Episode) -> None:
        """Give ``episode`` the next slot (setting ``episode.slot``) and count its starts."""
        episode.slot = len(self.slots)
        self.slots.append(episode)
        self.valid = grown(self.valid, len(self.slots) - 1, len(self.slots))
        self.update(episode)

    def update(self, episode: Episode) -> None:
        """Count the valid starts of ``episode``, which has grown."""
        self.valid[episode.slot] = max(0, episode.length - self.nstep + 1)
        self.cumulative = None

    def remove(self, episode: Episode) -> None:
        """Draw no more from ``episode`` (evicted); call :meth:`drop_evicted` after a run of
        removals."""
        self.slots[episode.slot] = None
        self.valid[episode.slot] = 0
        self.cumulative = None

    def oldest_first(self) -> Iterator[Episode]:
        """The episodes held, oldest first (removing the one yielded is allowed)."""
        for slot in range(self.head, len(self.slots)):
            episode = self.slots[slot]
            if episode is not None:
                yield episode

    def drop_evicted(self) -> None:
        """Move the head past evicted slots; compact when they are most of the slots."""
        while self.head < len(self.slots) and self.slots[self.head] is None:
            self.head += 1
        if self.head > 1024 and 2 * self.head > len(self.slots):
            live = len(self.slots) - self.head
            valid = np.zeros(max(64, live), np.int64)
            valid[:live] = self.valid[self.head : len(self.slots)]
            self.valid = valid
            self.slots = self.slots[self.head :]
            for slot, episode in enumerate(self.slots):
                if episode is not None:
                    episode.slot = slot
            self.head = 0
            self.cumulative = None

    @property
    def total(self) -> int:
        """Valid starts over all episodes."""
        if self.cumulative is None:
            self.cumulative = np.cumsum(self.valid[self.head : len(self.slots)])
        return int(self.cumulative[-1]) if len(self.cumulative) else 0

    def draw(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Slots (ascending) and steps of ``batch_size`` uniform draws over the valid starts
        (at least one must exist)."""
        total = self.total
        assert self.cumulative is not None and total > 0
        draws = rng.integers(0, total, size=batch_size)
        draws.sort()
        live = np.searchsorted(self.cumulative, draws, side="right")
        steps = draws - (self.cumulative[live] - self.valid[self.head + live])
        return live + self.head, steps

    @property
    def nbytes(self) -> int:
        """Bytes of the index arrays."""
        return int(
            self.valid.nbytes + (self.cumulative.nbytes if self.cumulative is not None else 0)
        )


class BatchAssembler:
    """Fills a batch from (slot, step) draws: frame stacks, actions, n-step rewards and
    discounts, weight versions. Raw frames are gathered episode by episode; coded frames are
    decoded for the whole batch in one :func:`~distdrq.replay.codec.decode_windows_into` call,
    straight into the batch, with a work array reused across batches, or planned and packed for
    decoding elsewhere (:meth:`assemble_coded`)."""

    def __init__(self, codec: str, nstep: int, discount: float, frame_stack: int) -> None:
        self.codec = codec
        self.nstep = nstep
        self.discount = discount
        self.frame_stack = frame_stack
        self._scratch: np.ndarray | None = None  # decode work space, reused across batches

    def assemble(
        self,
        episodes: list[Episode | None],
        slots: np.ndarray,
        steps: np.ndarray,
        frame_shape: tuple[int, ...],
        batch: Batch,
        decoder: DecoderPool | None = None,
    ) -> Batch:
        """Fill ``batch`` (checked by the caller) with the transitions at ``steps`` of the
        episodes ``episodes[slots]``; equal slots must be adjacent. Coded frames are decoded on
        this thread, or planned here and decoded by ``decoder``'s threads."""
        size, k = len(steps), self.frame_stack
        windows = self._windows(steps)
        obs = batch.obs.reshape(size, k, *frame_shape)
        next_obs = batch.next_obs.reshape(size, k, *frame_shape)
        raw = self.codec == "raw"
        self._transitions(episodes, slots, steps, batch, (windows, obs, next_obs) if raw else None)
        if raw:
            return batch
        tables, local, _ = _tables(episodes, slots)
        if decoder is None:
            self._scratch = decode_windows_into(
                tables, local, windows, (obs, next_obs), self._scratch
            )
        else:
            plan = plan_into(tables, local, windows, (k, k))
            assert plan is not None
            decoder.run([(plan, (obs, next_obs))])
        return batch

    def assemble_coded(
        self,
        episodes: list[Episode | None],
        slots: np.ndarray,
        steps: np.ndarray,
        frame_shape: tuple[int, ...],
        small: Batch,
        sent: SentFrames | None = None,
    ) -> CodedBatch:
        """What :meth:`assemble` would fill, with the frames left coded: ``small``'s action,
        reward, discount and version are filled (its obs and next_obs are not used) and the
        frame windows are planned and packed (coded storage only); the frames a client holds
        (``sent``, see :mod:`~distdrq.replay.framecache`) go by key."""
        if self.codec == "raw":
            raise ValueError("raw frames have nothing to decode: sample them decoded")
        k = self.frame_stack
        self._transitions(episodes, slots, steps, small, None)
        tables, local, drawn = _tables(episodes, slots)
        plan = plan_into(tables, local, self._windows(steps), (k, k))
        assert plan is not None
        keyed = None
        if sent is not None:
            serials = np.array([e.serial for e in drawn], np.int64)
            keyed = (sent, serials, np.array([len(t) for t in tables], np.int64))
        return CodedBatch(
            windows=CodedWindows.pack(plan, keyed),
            action=small.action,
            reward=small.reward,
            discount=small.discount,
            version=small.version,
            obs_shape=(k * frame_shape[0], *frame_shape[1:]),
        )

    def _windows(self, steps: np.ndarray) -> np.ndarray:
        """Frame indices of each sample: the stack ending at t and the one ending at t + n,
        clamped to the reset frame; columns 0 .. k - 1 for obs, k .. 2k - 1 for next_obs."""
        k, n = self.frame_stack, self.nstep
        offsets = np.concatenate([np.arange(1 - k, 1), np.arange(n + 1 - k, n + 1)])
        return np.maximum(steps[:, None] + offsets, 0)

    def _transitions(
        self,
        episodes: list[Episode | None],
        slots: np.ndarray,
        steps: np.ndarray,
        batch: Batch,
        raw_frames: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> None:
        """Actions, n-step rewards and discounts and versions into ``batch``, one episode at a
        time; raw frames too when ``raw_frames`` (windows, obs, next_obs) is given."""
        size, k, n = len(steps), self.frame_stack, self.nstep
        floats = np.empty((size, n, batch.action.shape[1] + 2), np.float32)
        transitions = steps[:, None] + np.arange(n)
        bounds = (np.flatnonzero(slots[1:] != slots[:-1]) + 1).tolist()
        for start, stop in zip([0, *bounds], [*bounds, size], strict=True):
            episode = episodes[int(slots[start])]
            assert episode is not None
            if raw_frames is not None:
                windows, obs, next_obs = raw_frames
                episode.frames.gather(windows[start:stop, :k], out=obs[start:stop])
                episode.frames.gather(windows[start:stop, k:], out=next_obs[start:stop])
            window = transitions[start:stop]
            np.take(episode.floats, window, axis=0, out=floats[start:stop], mode="clip")
            np.take(episode.versions, steps[start:stop], out=batch.version[start:stop], mode="clip")
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


def _tables(
    episodes: list[Episode | None], slots: np.ndarray
) -> tuple[list[EpisodeFrames], np.ndarray, list[Episode]]:
    """The coded frame tables of the episodes drawn, each sample's index among them, and the
    episodes themselves (in the tables' order)."""
    uniq, local = np.unique(slots, return_inverse=True)
    tables, drawn = [], []
    for slot in uniq.tolist():
        episode = episodes[slot]
        assert episode is not None and isinstance(episode.frames, EncodedFrameStore)
        tables.append(episode.frames.episode)
        drawn.append(episode)
    return tables, local, drawn
