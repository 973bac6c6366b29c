"""The driver's once-a-second refresh: progress panel, CSV logs, Prometheus, messages.

It reads the coordinator's snapshot (counters, roles: one blocking call to a small in-memory
actor) and polls everything else without waiting: shard stats and messages, the rate
limiter's stats and the learner's report (losses, policy lag, batch waits) each keep one call
in flight and are read when they have answered, so a shard that Ray is restarting (it
restores its snapshot first: minutes for a large one) never holds the display.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import ray

from distdrq.distributed.messages import LearnerReport, RunSnapshot
from distdrq.metrics import RunMetrics
from distdrq.progress import CsvLog, ProgressDisplay
from distdrq.run.session import finite
from distdrq.tblog import EventLog

_PENDING = object()


class Polls:
    """At most one call in flight per key; :meth:`take` returns an answer once it is ready."""

    def __init__(self) -> None:
        self._refs: dict[Hashable, Any] = {}

    def take(self, key: Hashable, call: Callable[[], Any]) -> Any:
        """The answer to the call in flight for ``key`` if it is ready (then the next call is
        sent), else ``_PENDING``; a call that failed (its actor died) counts as unanswered."""
        ref = self._refs.get(key)
        if ref is None:
            self._refs[key] = call()
            return _PENDING
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return _PENDING
        self._refs[key] = call()
        try:
            return ray.get(ref)
        except ray.exceptions.RayError:
            return _PENDING

    def drain(self, key: Hashable, timeout: float) -> Any:
        """Wait up to ``timeout`` s for the call in flight for ``key``; sends no new one."""
        ref = self._refs.pop(key, None)
        if ref is None:
            return _PENDING
        with contextlib.suppress(ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return ray.get(ref, timeout=timeout)
        return _PENDING


class Monitor:
    """Progress panel, ``train.csv``/``eval.csv``, Prometheus and messages of one launch.

    ``topology`` returns the current topology (the learner is replaced when it is recreated);
    ``explain(role)`` says why a role's last incarnation ended and, for the learner, what it
    was recreated from (the supervisor knows both).
    """

    def __init__(
        self,
        run_dir: Path,
        progress: ProgressDisplay,
        metrics: RunMetrics | None,
        topology: Callable[[], Any],
        explain: Callable[[str], tuple[str, str]],
        last_eval_frame: int = -1,
        columns: tuple[str, ...] = ("critic_loss", "actor_loss", "policy_lag_mean"),
        events: EventLog | None = None,
    ) -> None:
        """``last_eval_frame``: the newest evaluation already in ``eval.csv`` (on resume);
        ``columns``: the learner metrics written beside each episode return in train.csv (the
        flow's, :mod:`.roles`); ``progress.extra`` names the metrics shown on the panel;
        ``events``: TensorBoard's copy of the CSV rows (:mod:`distdrq.tblog`)."""
        self.columns = columns
        self.progress = progress
        self.metrics = metrics
        self._topology = topology
        self._explain = explain
        self.events = events
        self.train_log = CsvLog(run_dir / "train.csv", events)
        self.eval_log = CsvLog(run_dir / "eval.csv", events)
        self._last_eval_logged = last_eval_frame
        self._polls = Polls()
        self._starts_seen: dict[str, int] = {}
        self._shard_stats: dict[int, dict[str, Any]] = {}
        self._limiter: dict[str, float] | None = None
        self._learner: LearnerReport = LearnerReport(0)
        self._latencies: list[float] = []

    # -- reading the run

    def _poll(self) -> None:
        topo = self._topology()
        for i, shard in enumerate(topo.shards):
            self._shard_text(i, self._polls.take(("messages", i), shard.take_messages.remote))
            stats = self._polls.take(("stats", i), shard.stats.remote)
            if stats is not _PENDING:
                self._shard_stats[i] = stats
        report = self._polls.take("learner", lambda: self._topology().learner.take_report.remote())
        if report is not _PENDING:
            self._learner = report
            self._latencies.extend(report.latencies)
        if topo.limiter is not None:
            stats = self._polls.take("limiter", topo.limiter.stats.remote)
            self._limiter = self._limiter if stats is _PENDING else stats

    def _shard_text(self, i: int, texts: Any) -> None:
        for text in () if texts is _PENDING else texts:
            self.progress.message(f"replay-{i}: {text}")

    def flush(self, timeout: float = 5.0) -> None:
        """Read the shard messages still in flight (at the end of a run) without asking again."""
        for i in range(len(self._topology().shards)):
            self._shard_text(i, self._polls.drain(("messages", i), timeout))

    def close(self) -> None:
        """Flush and close the TensorBoard events."""
        if self.events is not None:
            self.events.close()

    # -- showing it

    def refresh(self, snap: RunSnapshot) -> None:
        """One tick: restarts, panel, CSV rows, Prometheus, a finished evaluation."""
        self._show_restarts(snap)  # first: a restarted shard's size before is still cached
        self._poll()
        c, learner = snap.counters, self._learner.metrics
        self.progress.update(
            c.frames,
            c.updates,
            episode=c.episodes,
            train_return=finite(c.last_train_return),
            eval_return=finite(c.last_eval_return),
            restarts=snap.restarts,
            policy_lag=learner.get("policy_lag_mean"),
            **{key: learner.get(key) for key, _ in self.progress.extra},
        )
        for frame, value in ray.get(self._topology().coordinator.take_returns.remote()):
            row = {"frame": frame, "episode_return": value, "updates": c.updates}
            self.train_log.write(row | {k: learner.get(k) for k in self.columns})
        if self.metrics is not None:
            shards = [self._shard_stats[i] for i in sorted(self._shard_stats)]
            rates = self.progress.fields
            self.metrics.update(snap, learner, rates, shards, self._limiter, self._latencies)
            self._latencies = []
        self._log_eval(snap)

    def _log_eval(self, snap: RunSnapshot) -> None:
        c = snap.counters
        if c.last_eval_frame <= self._last_eval_logged:
            return
        self._last_eval_logged = c.last_eval_frame
        std = snap.last_eval.std_return if snap.last_eval is not None else None
        row = {"frame": c.last_eval_frame, "eval_return": c.last_eval_return}
        row |= {"eval_return_std": std, "updates": c.updates, "wall_time": round(c.wall_time, 3)}
        self.eval_log.write(row)
        self.progress.message(
            f"eval at frame {c.last_eval_frame:,}: return {c.last_eval_return:.1f}"
        )

    def _show_restarts(self, snap: RunSnapshot) -> None:
        """One line per restart of any role, from the coordinator's registration counts (every
        actor registers in its constructor, so a restart by Ray or by the supervisor shows)."""
        for role, info in sorted(snap.roles.items()):
            seen = self._starts_seen.setdefault(role, info.starts)
            if info.starts <= seen:
                continue
            self._starts_seen[role] = info.starts
            reason, detail = self._explain(role)
            extra = f"; {detail}" if detail else ""
            if role.startswith("replay-"):
                before = self._shard_stats.get(int(role.split("-")[1]), {}).get("transitions")
                extra = (
                    f"; it held {int(before):,} transitions before" if before is not None else ""
                )
            self.progress.message(f"{role} restarted ({reason}){extra}; restarts: {info.restarts}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RayNotices:
    """``sys.stdout`` while a launch runs: Ray's own driver-side notices (a worker died, ...,
    many lines each, printed by Ray's error-listener thread as ``(raylet) ...``) become one line
    above the panel; their whole text goes to ``ray_notices.log`` in the run directory.
    Everything else passes through unchanged."""

    def __init__(self, inner: Any, log_path: Path, message: Callable[[str], None]) -> None:
        self._inner = inner
        self.log_path = log_path
        self._message = message
        self._swallow_newline = False

    def write(self, text: str) -> int:
        if "(raylet)" not in text:
            if self._swallow_newline and text == "\n":  # print()'s end of a notice
                self._swallow_newline = False
                return len(text)
            self._swallow_newline = False
            return self._inner.write(text)
        plain = _ANSI.sub("", text).strip()
        with open(self.log_path, "a") as fh:
            fh.write(plain + "\n\n")
        first = plain.replace("(raylet)", "", 1).strip().splitlines()[0]
        first = first.split(". ")[0][:160]
        self._message(f"Ray: {first} (the whole notice is in {self.log_path.name})")
        self._swallow_newline = True
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def condensed_ray_notices(run_dir: Path, message: Callable[[str], None]) -> Iterator[None]:
    """Install :class:`RayNotices` as ``sys.stdout`` (inside the live panel, which redirects
    ``sys.stdout`` itself) for the block."""
    previous = sys.stdout
    sys.stdout = RayNotices(previous, run_dir / "ray_notices.log", message)
    try:
        yield
    finally:
        sys.stdout = previous
