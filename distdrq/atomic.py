"""Crash-safe files: writes go to a temporary file in the same directory, fsynced, then
renamed; reads take the newest intact file of a series and set damaged ones aside."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

if TYPE_CHECKING:
    from distdrq.types import SkippedFile

T = TypeVar("T")


def newest_intact(
    candidates: list[Path],
    load: Callable[[Path], T],
    errors: tuple[type[BaseException], ...],
    set_aside: Callable[[Path, str], SkippedFile],
    warn: Callable[[str], None],
    what: str,
    none_left: str = "",
) -> tuple[tuple[Path, T] | None, list[SkippedFile]]:
    """The first of ``candidates`` (newest first) that ``load`` reads without one of
    ``errors``, and the files set aside on the way.

    Each damaged file goes through ``set_aside`` (which renames it and says what it held) and
    is reported through ``warn`` in one line (ending with ``none_left`` after the last); the
    next older one is tried, so that a damaged
    file never hides an intact older one and later saves never rotate an intact one out.
    Shared by checkpoints (:func:`distdrq.checkpoint.load_latest`) and replay snapshots
    (:meth:`distdrq.replay.snapshot.SnapshotStore.load_latest`).
    """
    skipped: list[SkippedFile] = []
    for n, path in enumerate(candidates):
        try:
            return (path, load(path)), skipped
        except errors as exc:
            item = set_aside(path, str(exc))
            skipped.append(item)
            last = none_left or f"no older {what}"
            then = f"trying the previous {what}" if n + 1 < len(candidates) else last
            warn(f"warning: {item.describe()}; {then}")
    return None, skipped


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing so that it appears complete or not at all.

    The data goes to ``.<name>.tmp-<pid>``; on a clean exit it is fsynced and renamed over
    ``path`` (and the directory fsynced); on an exception the temporary file is removed and an
    existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
