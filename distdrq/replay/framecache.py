"""The learner's cache of coded frames: each frame crosses from a shard once
(``replay.learner_cache_mb``, with ``replay.decode_on=learner``).

A coded batch without the cache carries the bytes of every frame its windows need (about 8
coded frames per window: 12 MB for 256 walker windows). Drawn uniformly, a frame is drawn
again and again over its life in replay (DrQ-v2's replay ratio samples each transition ~128
times), so the learner keeps the frames it has received and a shard sends each frame's bytes
once; later batches name it by its key.

Who decides: the shard. :class:`SentFrames` (shard side, one per client) records which of
its frames a client holds; :class:`FrameCache` (client side) holds their bytes and does what
the shard's replies say. The protocol tolerates lost, late and reordered replies:

- Each coded reply to a client has a sequence number. Frames whose bytes a reply carries are
  *in flight* until the client acknowledges that number in a later request; only then do later
  replies name them without their bytes. A reply the client never ingests (the learner died,
  a sibling shard's failure dropped the batch) is never acknowledged: its frames are sent
  again when next drawn.
- The shard says what the client drops: an episode that left the shard, and the oldest held
  episodes while the client's bytes exceed its budget. It decides a drop while building reply
  ``d`` (from then on it sends that episode's frames afresh) and tells the client once every
  reply before ``d`` is acknowledged (or older than 256 replies: lost), so that no reply still
  to be ingested names a dropped frame, whatever order replies are served and collected in.
  The client then drops that episode's frames that came in replies before ``d`` (and ignores
  such frames should a lost reply turn up); copies from reply ``d`` on stay.
- A frame's key is ``serial << 24 | index``: the episode's serial is unique in the shard's
  process; each reply names the shard's incarnation, and a restarted shard (a new one) clears
  the client's frames of it. A restarted learner has a new client token: the shard starts a
  new record for it.
- A key the client lacks all the same (a bug, or damage) makes the batch undecodable
  (:class:`~distdrq.replay.decoding.CodedBatchError`): the batch is dropped and the client
  starts that shard over under a new token.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CacheReply", "CacheRequest", "FrameCache", "SentFrames", "frame_keys", "new_token"]

FRAME_BITS = 24
"""a key's low bits: the frame's index in its episode (16M frames at most)"""
_NONE, _HELD = -1, -2
_INFLIGHT_KEPT = 256
"""replies whose acknowledgement a shard still waits for (older ones are deemed lost)"""


def new_token() -> int:
    """A random 63-bit token (a client's or a shard incarnation's name)."""
    return secrets.randbits(63)


def frame_keys(serials: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """int64 keys of frames ``frames`` of episodes ``serials``."""
    return (serials.astype(np.int64) << FRAME_BITS) | frames.astype(np.int64)


@dataclass
class CacheRequest:
    """What a client sends with each sample request."""

    token: int
    """the client's name (a new one: the shard starts a new record)"""
    budget: int
    """bytes of this shard's frames the client keeps at most"""
    acks: list[int] = field(default_factory=list)
    """numbers of the replies ingested since the last request to this shard"""


@dataclass
class CacheReply:
    """What a shard adds to each coded reply."""

    incarnation: int
    """the shard process's name: a new one means the client's frames of it are void"""
    seq: int
    """this reply's number (acknowledged in a later request once ingested)"""
    drops: np.ndarray
    """int64: serials of episodes whose frames the client drops"""
    drop_seqs: np.ndarray
    """int64: for each of ``drops``, the reply it was decided in: copies from replies before it
    go"""


class SentFrames:
    """Shard side: which of this shard's frames one client holds, and which are in flight."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.seq = 0
        """the number of the reply being built"""
        self.held_bytes = 0
        self.removals_seen = -1
        """the shard's count of episode removals when it last told this record"""
        self._state: dict[int, np.ndarray] = {}
        """serial -> int32 per frame: -1 not held, -2 held, s >= 0 in flight (last sent in s)"""
        self._held: OrderedDict[int, int] = OrderedDict()
        """serial -> bytes held, oldest first"""
        self._born: dict[int, int] = {}
        """serial -> the reply its record began in (a dropped episode's record begins anew)"""
        self._inflight: dict[int, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}
        """reply number -> (serial, record's birth, frame indices, sizes) it sent"""
        self._open: dict[int, None] = {}
        """numbers of the replies not acknowledged yet, oldest first"""
        self._drops: list[tuple[int, int]] = []
        """(serial, reply it was decided in), not told yet"""

    def ack(self, seqs: list[int]) -> None:
        """The client ingested these replies: the frames they brought are held (unless their
        episode was dropped since), even where a later reply, not yet acknowledged, sent them
        again (in a small replay a frame is drawn by nearly every batch: waiting for the latest
        send's acknowledgement would send it forever)."""
        for seq in seqs:
            self._open.pop(int(seq), None)
            for serial, born, frames, sizes in self._inflight.pop(int(seq), ()):
                state = self._state.get(serial)
                if state is None or self._born[serial] != born:
                    continue  # dropped since (and perhaps begun again): not these copies
                arrived = state[frames] >= 0
                if not arrived.any():
                    continue
                state[frames[arrived]] = _HELD
                added = int(sizes[arrived].sum())
                self._held[serial] = self._held.get(serial, 0) + added
                self.held_bytes += added
        while self.held_bytes > self.budget and self._held:
            self._drop(next(iter(self._held)))

    def retain(self, live: set[int]) -> None:
        """Drop the episodes that left the shard."""
        for serial in [s for s in self._state if s not in live]:
            self._drop(serial)

    def _drop(self, serial: int) -> None:
        if self._state.pop(serial, None) is not None:
            self._drops.append((serial, self.seq))
            del self._born[serial]
        self.held_bytes -= self._held.pop(serial, 0)

    def split(self, serials: np.ndarray, frames: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Which of these distinct frames (grouped by episode) the client holds (bool); the
        others go in the reply being built, and are recorded as in flight in it."""
        held = np.zeros(serials.size, bool)
        if not serials.size:
            return held
        sent = []
        bounds = (np.flatnonzero(serials[1:] != serials[:-1]) + 1).tolist()
        for lo, hi in zip([0, *bounds], [*bounds, serials.size], strict=True):
            serial, idx = int(serials[lo]), frames[lo:hi]
            state = self._state.get(serial)
            need = int(idx.max()) + 1
            if state is None:
                self._born[serial] = self.seq
            if state is None or state.size < need:
                grown = np.full(
                    max(need, 2 * (0 if state is None else state.size)), _NONE, np.int32
                )
                if state is not None:
                    grown[: state.size] = state
                state = self._state[serial] = grown
            mine = state[idx] == _HELD
            held[lo:hi] = mine
            if not mine.all():
                new = idx[~mine]
                state[new] = self.seq
                sent.append((serial, self._born[serial], new, sizes[lo:hi][~mine]))
        self._inflight[self.seq] = sent
        return held

    def finish(self) -> CacheReply:
        """Close the reply being built: its number, and the drops whose earlier replies are
        all acknowledged (or lost)."""
        seq = self.seq
        self._open[seq] = None
        for old in [s for s in self._open if s <= seq - _INFLIGHT_KEPT]:
            del self._open[old]  # lost: never to be acknowledged
            self._inflight.pop(old, None)
        oldest = next(iter(self._open))
        told = [(serial, d) for serial, d in self._drops if d <= oldest]
        self._drops = [(serial, d) for serial, d in self._drops if d > oldest]
        self.seq += 1
        pairs = np.array(told, np.int64).reshape(-1, 2)
        return CacheReply(0, seq, pairs[:, 0].copy(), pairs[:, 1].copy())


class FrameCache:
    """Client side: the coded frames received from one shard, by key.

    Each frame is a copy of its own (dropping one frees it); a key maps to a slot of flat
    address, size and reply-number arrays, so a batch's ~2,000 keys are looked up in one pass."""

    def __init__(self) -> None:
        self._slot: dict[int, int] = {}
        """key -> slot"""
        self._addr = np.zeros(0, np.int64)
        self._size = np.zeros(0, np.int64)
        self._seq = np.zeros(0, np.int64)
        """slot -> number of the reply that brought the frame"""
        self._data: list[np.ndarray | None] = []
        """slot -> the frame's bytes (keeps them alive)"""
        self._free: list[int] = []
        self._by_serial: dict[int, list[int]] = {}
        self._dropped: dict[int, int] = {}
        """serial -> the reply whose drop came (frames from earlier replies are void)"""
        self.nbytes = 0
        self._newest = 0

    def __len__(self) -> int:
        return len(self._slot)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _release(self, key: int) -> None:
        slot = self._slot.pop(key)
        self.nbytes -= int(self._size[slot])
        self._data[slot] = None
        self._free.append(slot)

    def _store(self, key: int, data: np.ndarray, seq: int) -> None:
        if not self._free:
            old = len(self._data)
            grow = max(1024, old)
            self._addr = np.concatenate([self._addr, np.zeros(grow, np.int64)])
            self._size = np.concatenate([self._size, np.zeros(grow, np.int64)])
            self._seq = np.concatenate([self._seq, np.zeros(grow, np.int64)])
            self._data.extend([None] * grow)
            self._free.extend(range(old + grow - 1, old - 1, -1))
        slot = self._free.pop()
        self._slot[key] = slot
        self._addr[slot], self._size[slot], self._seq[slot] = data.ctypes.data, data.size, seq
        self._data[slot] = data
        self.nbytes += data.size

    def ingest(
        self,
        seq: int,
        drops: np.ndarray,
        drop_seqs: np.ndarray,
        keys: np.ndarray,
        payload: np.ndarray,
        offset: np.ndarray,
        size: np.ndarray,
    ) -> None:
        """Apply reply ``seq``: drop what it says, keep copies of the frames it brings (keys
        ``keys``, ``size`` bytes at ``offset`` of ``payload``)."""
        for serial, decided in zip(drops.tolist(), drop_seqs.tolist(), strict=True):
            self._dropped[serial] = max(decided, self._dropped.get(serial, -1))
            kept = []
            for key in self._by_serial.pop(serial, ()):
                slot = self._slot.get(key)
                if slot is None:
                    continue
                if self._seq[slot] < decided:
                    self._release(key)
                else:
                    kept.append(key)
            if kept:
                self._by_serial[serial] = kept
        serials = (keys >> FRAME_BITS).tolist()
        for key, serial, start, n in zip(
            keys.tolist(), serials, offset.tolist(), size.tolist(), strict=True
        ):
            if self._dropped.get(serial, -1) > seq:
                continue  # a late reply: the shard dropped this episode after sending it
            slot = self._slot.get(key)
            if slot is None:
                self._by_serial.setdefault(serial, []).append(key)
            elif self._seq[slot] >= seq:
                continue  # the copy of a later reply (same bytes) stays, with its number
            else:
                self._release(key)
            self._store(key, payload[start : start + n].copy(), seq)
        if seq > self._newest:
            self._newest = seq
            if len(self._dropped) > 4096:  # a drop older than any reply in flight is done
                horizon = seq - 2 * _INFLIGHT_KEPT
                self._dropped = {s: d for s, d in self._dropped.items() if d > horizon}

    def addresses(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """int64 addresses and sizes of the frames ``keys`` (alive until the next
        :meth:`ingest`); None if one is missing."""
        try:
            slots = np.fromiter(map(self._slot.__getitem__, keys.tolist()), np.int64, keys.size)
        except KeyError:
            return None
        return self._addr[slots], self._size[slots]
