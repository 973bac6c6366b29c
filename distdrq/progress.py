"""Run output: CSV logs and a live progress display (plain log lines when not on a terminal)."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class CsvLog:
    """Append rows of scalars to a CSV file; the header is fixed by the first row written.

    Re-opening an existing file (on resume) appends and keeps its header. With ``events``
    (a :class:`distdrq.tblog.EventLog`), each row also goes to TensorBoard as ``prefix/<column>``.
    """

    def __init__(self, path: str | Path, events: Any = None, prefix: str = "") -> None:
        self.path = Path(path)
        self.events = events
        self.prefix = prefix or self.path.stem
        self._fields: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as fh:
                self._fields = next(csv.reader(fh), None)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; keys not in the header are dropped, missing ones left empty."""
        new = self._fields is None
        if new:
            self._fields = list(row)
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.events is not None:
            self.events.row(self.prefix, row)


def format_duration(seconds: float) -> str:
    """``3h02m``, ``4m05s`` or ``12s``; ``--`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--"
    seconds = int(seconds)
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _fmt(value: Any) -> str:
    if value is None:
        return "--"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class RateMeter:
    """Rate of a growing counter over a sliding window of about ``window`` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self._window = window
        self._points: list[tuple[float, float]] = []

    def update(self, count: float, now: float | None = None) -> float:
        """Record the counter and return its rate per second (0 until two points exist)."""
        now = time.monotonic() if now is None else now
        self._points.append((now, count))
        while len(self._points) > 2 and now - self._points[1][0] >= self._window:
            self._points.pop(0)
        (t0, c0), (t1, c1) = self._points[0], self._points[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class ProgressDisplay:
    """Live status of a run: frames, frames/s, updates/s, returns and ETA.

    On a terminal it redraws one panel in place (rich); otherwise it prints a plain log line at
    most every ``interval`` seconds, so logs of non-interactive runs stay readable.
    """

    def __init__(
        self,
        title: str,
        total_frames: int,
        interval: float = 10.0,
        stream: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self.title = title
        self.total_frames = total_frames
        self._stream = stream or sys.stdout
        self._interval = interval
        self._live_enabled = self._stream.isatty() if live is None else live
        self._live: Any = None
        self._last_print = -math.inf
        self._last_redraw = -math.inf
        self._fps = RateMeter()
        self._ups = RateMeter()
        self.fields: dict[str, Any] = {}
        self.extra: list[tuple[str, str]] = []
        """(field, label) rows an algorithm adds to the display (SDPG: sigma, temperature)"""

    def __enter__(self) -> ProgressDisplay:
        if self._live_enabled:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self._stream)
            self._live = Live(
                self._render(), console=console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
            self._live = None
        else:
            self._print_line()

    def message(self, text: str) -> None:
        """Print a line above the live panel (or as a plain log line)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self._stream, flush=True)

    def update(self, frames: int, updates: int, **fields: Any) -> None:
        """Record the counters and any named fields (e.g. ``train_return=12.3``)."""
        now = time.monotonic()
        fps = self._fps.update(frames, now)
        ups = self._ups.update(updates, now)
        remaining = self.total_frames - frames
        self.fields.update(
            frames=frames,
            updates=updates,
            frames_per_second=fps,
            updates_per_second=ups,
            eta=format_duration(remaining / fps) if fps > 0 else "--",
            **fields,
        )
        if self._live is not None:
            self._live.update(self._render())
        elif now - self._last_print >= self._interval:
            self._print_line()
            self._last_print = now

    def activity(self, text: str | None) -> None:
        """Say what the run is doing between counter updates (``evaluating: episode 3 of
        10``): a "now" row on the panel and in the plain line, until cleared with None. Cheap
        enough to call every env step: the panel redraws at most twice a second, a plain line
        is printed at most every ``interval`` seconds, so a long phase never sits silent."""
        if text is None:
            self.fields.pop("activity", None)
            return
        self.fields["activity"] = text
        now = time.monotonic()
        if self._live is not None:
            if now - self._last_redraw >= 0.5:
                self._live.update(self._render())
                self._last_redraw = now
        elif now - self._last_print >= self._interval:
            self._print_line()
            self._last_print = now

    def _line(self) -> str:
        f = self.fields
        parts = [f"frames {_fmt(f.get('frames', 0))}/{_fmt(self.total_frames)}"]
        for key, label in (
            ("frames_per_second", "fps"),
            ("updates_per_second", "updates/s"),
            ("episode", "episode"),
            ("train_return", "train return"),
            ("eval_return", "eval return"),
            ("restarts", "restarts"),
            ("policy_lag", "policy lag"),
            *self.extra,
            ("activity", "now"),
            ("eta", "eta"),
        ):
            if key in f:
                parts.append(f"{label} {_fmt(f[key])}")
        return f"[{self.title}] " + " | ".join(parts)

    def _print_line(self) -> None:
        if self.fields:
            print(self._line(), file=self._stream, flush=True)

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        f = self.fields
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        frames = f.get("frames", 0)
        bar = ProgressBar(total=max(self.total_frames, 1), completed=frames, width=40)
        table.add_row(self.title, bar)
        table.add_row("frames", f"{_fmt(frames)} / {_fmt(self.total_frames)}")
        for key, label in (
            ("frames_per_second", "frames/s"),
            ("updates", "updates"),
            ("updates_per_second", "updates/s"),
            ("episode", "episodes"),
            ("train_return", "last train return"),
            ("eval_return", "last eval return"),
            ("restarts", "restarts"),  # launch only: its rows exist when it gives them
            ("policy_lag", "policy lag (versions)"),
            *self.extra,
            ("activity", "now"),
            ("eta", "ETA"),
        ):
            if key in f or key not in ("restarts", "policy_lag", "activity"):
                table.add_row(label, _fmt(f.get(key)))
        return table
