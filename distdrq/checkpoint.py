"""Atomic, versioned checkpoints of plain data: no pickle of arbitrary objects.

A checkpoint is ``<run_dir>/checkpoints/ckpt_<frame>.pt``: a dict of tensors and plain Python
values, written with :func:`torch.save` to a temporary file, fsynced and renamed into place,
and read back with ``torch.load(weights_only=True)``. Large side data (the replay contents) goes
into ``<name>.<part>.pt`` files written *before* the main file, so a main file on disk always
has complete parts. The newest ``keep`` checkpoints are kept; a truncated or foreign file is
reported in one line and the previous good checkpoint is used instead.

Reading never unpickles objects (``weights_only=True``) and never allocates more than the file
can justify: a file must be torch's zip format with stored (uncompressed) entries, so that
every tensor's bytes are present in the file (torch checks each storage against its entry);
anything else is a :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdrq.atomic import atomic_open, newest_intact
from distdrq.types import SkippedFile

FORMAT = "distdrq-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read: missing, truncated, foreign or from another version.

    Raised by :func:`load_latest` when no checkpoint is usable, ``skipped`` lists the files
    it set aside."""

    skipped: list[SkippedFile]

    def __init__(self, message: str, skipped: list[SkippedFile] | None = None) -> None:
        super().__init__(message)
        self.skipped = list(skipped or [])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.skipped))


_NUMPY_TAG = "__numpy__"


def to_tensors(obj: Any) -> Any:
    """Recursively store numpy arrays as tagged tensors and numpy scalars as Python scalars."""
    if isinstance(obj, np.ndarray):
        # a copy where the array is read-only (as arrays that came through Ray are)
        array = np.ascontiguousarray(obj) if obj.flags.writeable else np.array(obj, order="C")
        return {_NUMPY_TAG: torch.from_numpy(array)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_tensors(v) for v in obj)
    return obj


def to_cpu(obj: Any) -> Any:
    """Recursively copy tensors to the CPU (for state that leaves a GPU process)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_numpy(obj: Any) -> Any:
    """Inverse of :func:`to_tensors`: tagged tensors become numpy arrays, tensors stay tensors."""
    if isinstance(obj, dict) and set(obj) == {_NUMPY_TAG}:
        return obj[_NUMPY_TAG].numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` with :func:`torch.save` so that ``path`` is complete or untouched."""
    with atomic_open(path) as fh:
        torch.save(obj, fh)


def _check_container(path: Path) -> None:
    """A zip file whose entries are stored, not compressed (as :func:`torch.save` writes
    them): then no entry, and so no tensor, holds more bytes than the file. torch's older
    non-zip format, which sizes its buffers from numbers in the stream, is refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated?): {exc}") from None
    size = path.stat().st_size
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or (
        sum(e.file_size for e in entries) > size
    ):
        raise CheckpointError(f"{path} is not a distdrq checkpoint (compressed entries)")


def _load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors that never suggest loading the
    file unsafely."""
    _check_container(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint file {path} does not exist") from exc
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a Python object ({found.group(1)})" if found else "data other than tensors"
        raise CheckpointError(
            f"{path} is not a distdrq checkpoint: it holds {what}, and distdrq loads only "
            "tensors and plain data"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated?): {_first_line(exc)}"
        ) from None
    except Exception as exc:  # torch raises other types for foreign files
        raise CheckpointError(f"{path} is not a distdrq checkpoint: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The first line of an error's text, unless it advises loading without weights_only."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "weights_only" in text or "trust" in first:
        return f"{type(exc).__name__} while reading it"
    return first


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Main checkpoint files of a run, newest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def save_checkpoint(
    run_dir: str | Path,
    frame: int,
    state: dict[str, Any],
    parts: dict[str, dict[str, Any]] | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``frame``; ``parts`` are large side dicts stored in their own files.

    Numpy arrays anywhere in ``state`` or ``parts`` are stored as tensors. Returns the main path.
    Older checkpoints beyond the newest ``keep`` are deleted only after the new one is complete.
    """
    root = checkpoint_dir(run_dir)
    main = root / f"ckpt_{frame:012d}.pt"
    part_names = sorted(parts or {})
    for name in part_names:
        atomic_torch_save(to_tensors(parts[name]), main.with_suffix(f".{name}.pt"))  # type: ignore[index]
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "frame": int(frame),
        "parts": part_names,
        "state": to_tensors(state),
    }
    atomic_torch_save(payload, main)
    for old in list_checkpoints(run_dir)[max(keep, 2) :]:  # one to fall back to, always
        for path in root.glob(old.stem + ".*"):
            path.unlink(missing_ok=True)
    return main


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read one checkpoint and its parts; arrays come back as numpy, tensors as tensors.

    Raises :class:`CheckpointError` with a one-line reason for truncated or foreign files.
    """
    path = Path(path)
    payload = _load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a distdrq checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')}, this distdrq reads "
            f"{FORMAT_VERSION}; use the distdrq version that wrote it"
        )
    parts = {name: load_part(path, name) for name in payload["parts"]}
    return to_numpy(payload["state"]), parts


def load_part(path: str | Path, name: str) -> dict[str, Any]:
    """Only the part ``name`` of the checkpoint whose main file is ``path`` (arrays as numpy);
    :class:`CheckpointError` if it is missing or unreadable."""
    return to_numpy(_load(Path(path).with_suffix(f".{name}.pt")))


def load_latest(
    run_dir: str | Path,
    warn: Callable[[str], None] = print,
    restore: Callable[[dict[str, Any], dict[str, dict[str, Any]]], None] | None = None,
    skipped: list[SkippedFile] | None = None,
) -> tuple[Path, dict[str, Any], dict[str, dict[str, Any]]]:
    """Load the newest readable checkpoint of a run.

    A broken main file is renamed to ``*.broken`` (never deleted), its parts likewise, reported
    through ``warn`` and the previous checkpoint is tried, so that later saves never rotate
    out a good checkpoint in favour of a broken one. ``restore(state, parts)``, if given, is
    applied to each candidate; a ValueError from it (for example damaged replay frames) makes
    that checkpoint broken too. ``skipped``, if given, receives a
    :class:`~distdrq.types.SkippedFile` for each file set aside (with the replay transitions
    it held when its replay part could be read), so that the caller can report the loss; when
    no checkpoint is usable the :class:`CheckpointError` carries the same list.
    """
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(
            f"no checkpoint in {checkpoint_dir(run_dir)}; start a new run without --resume"
        )
    replay_of: dict[Path, Any] = {}  # what a damaged checkpoint's readable replay part held

    def load(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        state, parts = load_checkpoint(path)
        replay_of[path] = parts.get("replay")
        if restore is not None:
            try:
                restore(state, parts)
            except ValueError as exc:
                raise CheckpointError(
                    f"checkpoint {path} does not load: {_first_line(exc)}"
                ) from exc
        return state, parts

    found, bad = newest_intact(
        candidates,
        load,
        (CheckpointError,),
        lambda path, reason: _set_aside(path, reason, replay_of.get(path)),
        warn,
        "checkpoint",
    )
    if skipped is not None:
        skipped.extend(bad)
    if found is None:
        raise CheckpointError(
            f"no readable checkpoint in {checkpoint_dir(run_dir)} ({len(bad)} broken: "
            f"{bad[0].reason})",
            bad,
        )
    path, (state, parts) = found
    return path, state, parts


def _set_aside(path: Path, reason: str, replay: Any) -> SkippedFile:
    """Rename a broken main file and its parts to ``*.broken``; what it held, if known."""
    from distdrq.replay.shard import state_counts  # the replay modules are heavier

    counts = state_counts(replay)
    aside: Path | None = path.with_name(path.name + ".broken")
    try:
        path.rename(aside)  # type: ignore[arg-type]  # kept for inspection, out of the rotation
    except OSError:
        aside = None
    for part in path.parent.glob(path.stem + ".*.pt"):
        with contextlib.suppress(OSError):
            part.rename(part.with_name(part.name + ".broken"))
    return SkippedFile(path, aside, reason, *(counts or (None, None)))
