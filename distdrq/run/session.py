"""One session of a single-process run (``distdrq train``, any algorithm): Ctrl-C and SIGTERM
end it with a checkpoint, its wall time adds up over resumed sessions, and it leaves a
``summary.json`` of the counters."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distdrq.progress import ProgressDisplay
from distdrq.run.counters import Counters

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run with a checkpoint."""


class Clock:
    """The session's wall time, added to what earlier sessions of the run spent."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._start = time.monotonic()
        self._base = counters.wall_time

    def tick(self) -> None:
        """Bring ``counters.wall_time`` up to now."""
        self._counters.wall_time = self._base + time.monotonic() - self._start


@contextlib.contextmanager
def training_session(
    counters: Counters,
    run_dir: Path,
    save: Callable[[bool], Path],
    progress: ProgressDisplay,
    units: tuple[str, str] = ("updates", "episodes"),
) -> Iterator[Clock]:
    """The block is the training loop. On its end, or on Ctrl-C/SIGINT/SIGTERM (a
    KeyboardInterrupt raised anywhere in it), the counters' wall time is brought up to date,
    ``save(quick)`` writes the checkpoint (``quick`` after Ctrl-C: the user is waiting) and one
    line says where the run stopped, counting ``units`` (names of ``counters.updates`` and
    ``counters.episodes``)."""
    interrupted = False
    # SIGINT too, not only Python's default handler: a shell script's `distdrq train ... &`
    # starts it with SIGINT ignored, and `kill -INT` must still checkpoint and stop
    previous = {s: signal.signal(s, raise_keyboard_interrupt) for s in STOP_SIGNALS}
    clock = Clock(counters)
    try:
        try:
            yield clock
        except KeyboardInterrupt:
            interrupted = True
            progress.message("interrupted: writing a checkpoint (Ctrl-C again to abort)")
        clock.tick()
        path = save(interrupted)  # a second Ctrl-C here aborts (KeyboardInterrupt)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    c = counters
    progress.message(
        f"{'stopped' if interrupted else 'done'} at frame {c.frames:,} "
        f"({c.updates:,} {units[0]}, {c.episodes} {units[1]}); checkpoint {path}"
    )
    (run_dir / "summary.json").write_text(json.dumps(c.to_dict(), indent=2))


def target_reached(counters: Counters, stop_at_return: float | None) -> bool:
    """Whether the run's last evaluation reached ``train.stop_at_return`` (never when None)."""
    return (
        stop_at_return is not None
        and counters.last_eval_frame >= 0
        and counters.last_eval_return >= stop_at_return  # False for NaN
    )


def target_message(counters: Counters, stop_at_return: float) -> str:
    """The line that says why a run ended before its frame budget."""
    return (
        f"eval return {counters.last_eval_return:.1f} at frame {counters.last_eval_frame:,} "
        f"reached train.stop_at_return={stop_at_return:g}: ending the run"
    )


def raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    """A signal handler: SIGINT and SIGTERM stop a run as Ctrl-C does."""
    raise KeyboardInterrupt


def finite(value: float | None) -> float | None:
    """``value``, or None where it is missing or not finite (the panel shows ``--``)."""
    return value if value is not None and math.isfinite(value) else None
