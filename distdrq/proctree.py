"""Process trees from /proc (Linux): what a local run started, and whether it is still alive.

Used to leave nothing behind on a second Ctrl-C (a local Ray instance's GCS, raylet,
dashboard, agents and workers are all descendants of the driver) and by the tests and the
chaos benchmark to kill processes by PID and check that none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal


def _parents() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    children = _parents()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_descendants(pid: int | None = None) -> int:
    """SIGKILL every descendant of ``pid`` (default: this process); returns how many."""
    found = descendants(os.getpid() if pid is None else pid)
    for child in found:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    return len(found)
