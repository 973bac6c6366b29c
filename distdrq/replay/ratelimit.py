"""Samples-per-insert rate limiting, with the semantics of Reverb's ``SampleToInsertRatio``.

Both sides are counted in transitions: an insert of a chunk adds its transitions, a sampled
batch adds its batch size. With ``diff = inserts * samples_per_insert - samples``:

- inserting is allowed while fewer than ``min_size_to_sample`` transitions were inserted, or
  while ``diff <= max_diff`` (samplers are not too far behind);
- sampling is allowed once ``min_size_to_sample`` transitions were inserted and while
  ``diff >= min_diff`` (inserters are not too far behind);

where ``min_diff = offset - error_buffer``, ``max_diff = offset + error_buffer`` and
``offset = samples_per_insert * min_size_to_sample``. Both conditions are checked *before*
the operation, so with ``min_diff < max_diff`` the two sides can never both be blocked, whatever
the chunk and batch sizes. :meth:`RateLimiter.close` wakes every waiter (shutdown never
deadlocks).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


class RateLimiterClosed(RuntimeError):
    """The rate limiter was closed while a caller waited (the run is shutting down)."""


@dataclass
class RateLimiterStats:
    """Counters of a rate limiter."""

    inserts: int
    """transitions inserted"""
    samples: int
    """transitions sampled (batch size x batches)"""
    samples_per_insert: float
    """the configured ratio"""
    measured_samples_per_insert: float
    """samples / (inserts - min_size_to_sample) once sampling started, else 0"""
    insert_blocked_seconds: float
    """time inserters spent waiting"""
    sample_blocked_seconds: float
    """time samplers spent waiting"""


class RateLimiter:
    """Thread-safe samples-per-insert limiter (see module docstring for the exact rule)."""

    def __init__(
        self,
        samples_per_insert: float,
        min_size_to_sample: int,
        error_buffer: float | None = None,
    ) -> None:
        """``error_buffer`` defaults to Acme's choice, ``max(min_size * 0.1 * spi, 2 * spi)``."""
        if samples_per_insert <= 0:
            raise ValueError(f"samples_per_insert={samples_per_insert} must be > 0")
        if min_size_to_sample < 1:
            raise ValueError(f"min_size_to_sample={min_size_to_sample} must be >= 1")
        if error_buffer is None:
            error_buffer = max(
                min_size_to_sample * 0.1 * samples_per_insert, 2 * samples_per_insert
            )
        if error_buffer <= 0:
            raise ValueError(f"error_buffer={error_buffer} must be > 0")
        self.samples_per_insert = float(samples_per_insert)
        self.min_size_to_sample = int(min_size_to_sample)
        offset = self.samples_per_insert * self.min_size_to_sample
        self.min_diff = offset - float(error_buffer)
        self.max_diff = offset + float(error_buffer)
        self._inserts = 0
        self._samples = 0
        self._closed = False
        self._insert_blocked = 0.0
        self._sample_blocked = 0.0
        self._cond = threading.Condition()

    # -- state ------------------------------------------------------------------------------

    def _diff(self) -> float:
        return self._inserts * self.samples_per_insert - self._samples

    def _insert_ok(self) -> bool:
        return self._inserts < self.min_size_to_sample or self._diff() <= self.max_diff

    def _sample_ok(self) -> bool:
        return self._inserts >= self.min_size_to_sample and self._diff() >= self.min_diff

    def can_insert(self) -> bool:
        """True if an insert would be allowed now."""
        with self._cond:
            return not self._closed and self._insert_ok()

    def can_sample(self) -> bool:
        """True if a sample would be allowed now."""
        with self._cond:
            return not self._closed and self._sample_ok()

    # -- blocking operations -----------------------------------------------------------------

    def _await(self, ok: object, timeout: float | None) -> tuple[bool, float]:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while not self._closed and not ok():  # type: ignore[operator]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False, time.monotonic() - start
            self._cond.wait(remaining)
        if self._closed:
            raise RateLimiterClosed("rate limiter closed: the replay is shutting down")
        return True, time.monotonic() - start

    def insert(self, transitions: int, timeout: float | None = None) -> bool:
        """Wait until inserting is allowed, then count ``transitions``; False on timeout.

        Raises :class:`RateLimiterClosed` if closed while waiting.
        """
        with self._cond:
            ok, waited = self._await(self._insert_ok, timeout)
            self._insert_blocked += waited
            if ok:
                self._inserts += int(transitions)
                self._cond.notify_all()
            return ok

    def sample(self, transitions: int, timeout: float | None = None) -> bool:
        """Wait until sampling is allowed, then count ``transitions``; False on timeout.

        Raises :class:`RateLimiterClosed` if closed while waiting.
        """
        with self._cond:
            ok, waited = self._await(self._sample_ok, timeout)
            self._sample_blocked += waited
            if ok:
                self._samples += int(transitions)
                self._cond.notify_all()
            return ok

    def close(self) -> None:
        """Wake all waiters with :class:`RateLimiterClosed`; later calls raise it at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    # -- state for snapshots and metrics -----------------------------------------------------

    def stats(self) -> RateLimiterStats:
        """Counters and the measured ratio."""
        with self._cond:
            after_min = self._inserts - self.min_size_to_sample
            measured = self._samples / after_min if after_min > 0 else 0.0
            return RateLimiterStats(
                inserts=self._inserts,
                samples=self._samples,
                samples_per_insert=self.samples_per_insert,
                measured_samples_per_insert=measured,
                insert_blocked_seconds=self._insert_blocked,
                sample_blocked_seconds=self._sample_blocked,
            )

    def state_dict(self) -> dict[str, int]:
        """Counters to restore after a restart (the configuration is not part of it)."""
        with self._cond:
            return {"inserts": self._inserts, "samples": self._samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters written by :meth:`state_dict`."""
        with self._cond:
            self._inserts = int(state["inserts"])
            self._samples = int(state["samples"])
            self._cond.notify_all()
