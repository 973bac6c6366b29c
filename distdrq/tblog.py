"""TensorBoard event files beside the CSV logs: ``tensorboard --logdir runs`` compares runs.

Every row written to ``train.csv`` or ``eval.csv`` is also written as scalars ``train/<column>``
and ``eval/<column>`` at step = the row's ``frame`` (env frames, the x-axis of the published
curves), and each evaluation video (``videos/eval_<frame>.gif``) as an animated image
``eval/video`` at its frame (TensorBoard's image panel plays GIFs). Values that are not finite
numbers (a loss before the first update, an empty cell) are left out of the events; the CSV
keeps them. The files are written with the ``tensorboard`` package's own event writer (no torch,
no TensorFlow), directly in the run directory, so each run is one TensorBoard run named by its
directory.

The CSVs are the record; the events are a view of them. On ``--resume`` the run's event files
are rebuilt from the (rolled back) CSVs and videos: a resumed run continues the same curves with
no point after its checkpoint duplicated, and events a killed process had not yet flushed come
back.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from distdrq.video import video_name

EVENTS_GLOB = "events.out.tfevents.*"
VIDEO_TAG = "eval/video"
_FLUSH_S = 10.0


def _number(value: Any) -> float | None:
    """The value as a finite float, or None (empty cells, text, NaN, inf)."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _gif_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a GIF's logical screen descriptor."""
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 10:
        raise ValueError("not a GIF")
    return int.from_bytes(data[8:10], "little"), int.from_bytes(data[6:8], "little")


def video_path(run_dir: Path, frame: int) -> Path:
    """Where an evaluation at ``frame`` leaves its video (:mod:`distdrq.run.evaluation`)."""
    return run_dir / "videos" / video_name(frame)


class EventLog:
    """An event file in ``run_dir`` that receives the rows of the run's CSV logs."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.run_dir), flush_secs=_FLUSH_S)
        self._closed = False

    def row(self, prefix: str, row: dict[str, Any], walltime: float | None = None) -> None:
        """Write a CSV row's numeric columns as ``prefix/<column>`` at step ``row['frame']``;
        for an ``eval`` row, also the evaluation's video when there is one."""
        step = _number(row.get("frame"))
        if step is None or self._closed:
            return
        walltime = time.time() if walltime is None else walltime
        values = [
            summary_pb2.Summary.Value(tag=f"{prefix}/{key}", simple_value=number)
            for key, value in row.items()
            if key != "frame" and (number := _number(value)) is not None
        ]
        if values:
            self._add(summary_pb2.Summary(value=values), int(step), walltime)
        if prefix == "eval":
            self.video(int(step), video_path(self.run_dir, int(step)), walltime)

    def video(self, frame: int, path: Path, walltime: float | None = None) -> None:
        """An evaluation GIF as an animated image at ``frame`` (nothing if it is not there)."""
        try:
            data = path.read_bytes()
            height, width = _gif_size(data)
        except (OSError, ValueError):
            return
        image = summary_pb2.Summary.Image(
            height=height, width=width, colorspace=3, encoded_image_string=data
        )
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=VIDEO_TAG, image=image)])
        self._add(summary, frame, time.time() if walltime is None else walltime)

    def _add(self, summary: summary_pb2.Summary, step: int, walltime: float) -> None:
        self._writer.add_event(event_pb2.Event(wall_time=walltime, step=step, summary=summary))

    def flush(self) -> None:
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._writer.close()
            self._closed = True


def open_events(run_dir: str | Path, enabled: bool, resume: bool) -> EventLog | None:
    """The run's event log (None when ``train.tensorboard`` is off); on resume its files are
    first rebuilt from the records the checkpoint kept."""
    if not enabled:
        return None
    if resume:
        rebuild_events(run_dir)
    return EventLog(run_dir)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def rebuild_events(run_dir: str | Path) -> int:
    """Replace a run's event files with one written from its ``train.csv``, ``eval.csv`` and
    videos (after a resume's rollback); returns the rows written. Wall times come from the
    rows' ``wall_time`` (seconds of training) where they have one."""
    run_dir = Path(run_dir)
    old = sorted(run_dir.glob(EVENTS_GLOB))
    train, evals = _rows(run_dir / "train.csv"), _rows(run_dir / "eval.csv")
    wall = [n for r in train + evals if (n := _number(r.get("wall_time"))) is not None]
    base = time.time() - (max(wall) if wall else 0.0)
    tmp = run_dir / ".events.rebuild"
    tmp.mkdir(exist_ok=True)
    for stale in tmp.glob(EVENTS_GLOB):
        stale.unlink()
    log = EventLog(tmp)
    log.run_dir = run_dir  # videos are read from the run itself
    written = 0
    for prefix, rows in (("train", train), ("eval", evals)):
        last = base
        for row in rows:
            offset = _number(row.get("wall_time"))
            last = base + offset if offset is not None else last
            log.row(prefix, row, walltime=last)
            written += 1
    log.close()
    (new,) = tmp.glob(EVENTS_GLOB)
    # the rebuilt file sorts before any file a resumed writer opens (TensorBoard reads a run's
    # files in name order): it keeps the oldest name; the other old files go
    name = old[0].name if old else new.name
    new.replace(run_dir / name)
    for path in old[1:]:
        path.unlink(missing_ok=True)
    tmp.rmdir()
    return written


def read_events(run_dir: str | Path) -> dict[str, list[tuple[int, Any]]]:
    """Every tag's (step, value) points in a run's event files, in file order (scalars as
    floats, images as their encoded bytes); for tests and tools."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points: dict[str, list[tuple[int, Any]]] = {}
    for path in sorted(Path(run_dir).glob(EVENTS_GLOB)):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    item: Any = value.simple_value
                elif kind == "image":
                    item = value.image.encoded_image_string
                elif kind == "tensor":  # the loader migrates simple values to tensors
                    item = _tensor_value(value.tensor)
                else:
                    continue
                points.setdefault(value.tag, []).append((event.step, item))
    return points


def _tensor_value(tensor: Any) -> Any:
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.string_val:
        return tensor.string_val[-1]
    return None
