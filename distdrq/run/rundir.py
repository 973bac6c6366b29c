"""The run directory: its resolved config, its records on resume, its newest predecessor.

A run directory holds ``config.yaml`` (the resolved config; ``--resume`` reads it back),
``train.csv``/``eval.csv``, ``videos/``, ``checkpoints/`` and, for ``launch``, ``replay/``
(shard snapshots). Checkpoint files are :mod:`distdrq.checkpoint`'s, snapshots
:mod:`distdrq.replay.snapshot`'s; both read the newest intact file through
:func:`distdrq.atomic.newest_intact`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from distdrq.config import (
    Config,
    ConfigError,
    from_dict,
    migrate_saved,
    parse_override,
    set_key,
    to_dict,
    validate,
)

CONFIG_FILE = "config.yaml"


def save_run_config(run_dir: Path, cfg: Config) -> None:
    """Write the resolved config of a run as YAML."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


@contextlib.contextmanager
def removed_if_unstarted(run_dir: Path, fresh: bool) -> Iterator[None]:
    """On an error in the block, remove ``run_dir`` if the block created it for a ``fresh``
    run and it holds no file but its config: a run that could not start, which neither a new
    run (the directory holds a run) nor ``--resume`` (no checkpoint) would accept."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if fresh and not existed and run_dir.is_dir():
            files = [p for p in run_dir.rglob("*") if not p.is_dir()]
            # an event file without a CSV holds no row (tblog writes each row to a CSV first)
            if all(p == run_dir / CONFIG_FILE or _is_events(p) for p in files):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _is_events(path: Path) -> bool:
    return path.name.startswith("events.out.tfevents.")


def load_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a run's saved config and apply ``key=value`` overrides (e.g. ``train.frames=...``)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a distdrq run directory (no {CONFIG_FILE})")
    cfg = from_dict(migrate_saved(yaml.safe_load(path.read_text())))
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value)
    return validate(cfg)


def reuse_source(
    disk_codec: str,
    newest: list[Path],
    read: Callable[[Path], Any],
    errors: tuple[type[BaseException], ...],
) -> Any | None:
    """The replay state of the newest earlier snapshot or checkpoint, whose disk-coded episodes
    a new one reuses (``cm`` coding costs ~1 ms a frame; ``stored`` needs no reuse); None when
    there is none or it does not read (then everything is coded afresh)."""
    if disk_codec != "cm" or not newest:
        return None
    try:
        return read(newest[0])
    except errors:
        return None


def _keep_rows(path: Path, keep: Callable[[dict[str, str]], bool]) -> int:
    """Rewrite a CSV log atomically with only the rows ``keep`` accepts; rows dropped."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    kept = [row for row in rows if keep(row)]
    if len(kept) == len(rows):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)
    return len(rows) - len(kept)


def _frame_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("frame") or "nan")
    except ValueError:
        return float("nan")


def rollback_records(run_dir: str | Path, frame: int, last_eval_frame: int) -> list[str]:
    """Make a run's records continue from a checkpoint as if the run had never stopped.

    Rows of ``train.csv`` after the checkpoint's ``frame`` and of ``eval.csv`` after its last
    evaluation were written by the session that died after it and will be written again by the
    resumed one: they are dropped (no duplicates, frames never go backwards). Videos of those
    evaluations are moved to ``videos/superseded/`` (kept, but no longer mixed in). Returns the
    lines to show the user (none when there was nothing to undo).
    """
    run_dir = Path(run_dir)
    notes = []
    dropped = _keep_rows(run_dir / "train.csv", lambda r: not _frame_of(r) > frame)
    if dropped:
        notes.append(
            f"train.csv: dropped {dropped} rows after frame {frame:,} (not in the checkpoint)"
        )
    dropped = _keep_rows(run_dir / "eval.csv", lambda r: not _frame_of(r) > last_eval_frame)
    if dropped:
        notes.append(f"eval.csv: dropped {dropped} rows after frame {last_eval_frame:,}")
    videos = run_dir / "videos"
    moved = 0
    for gif in sorted(videos.glob("eval_*.gif")) if videos.is_dir() else []:
        match = re.fullmatch(r"eval_(\d+)\.gif", gif.name)
        if match and int(match.group(1)) > last_eval_frame:
            (videos / "superseded").mkdir(exist_ok=True)
            os.replace(gif, videos / "superseded" / gif.name)
            moved += 1
    if moved:
        notes.append(f"videos: moved {moved} after frame {last_eval_frame:,} to videos/superseded/")
    return notes
