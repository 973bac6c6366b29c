"""`distdrq status` answers fast: neither it nor the CLI imports the training stack."""

import subprocess
import sys

from distdrq import status
from distdrq.distributed import launch

PROBE = """
import sys
from distdrq.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "distdrq.distributed.launch", "distdrq.checkpoint")
               if m in sys.modules)
print("RC", rc, "HEAVY", ",".join(heavy) or "-")
"""


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )


def test_status_and_tasks_import_neither_torch_nor_the_launcher():
    # an address where nothing listens: status fails fast, with one line naming the fix
    out = _probe("status", "--address", "127.0.0.1:1")
    assert "RC 1 HEAVY -" in out.stdout, out.stdout + out.stderr
    errors = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: no Ray cluster found at 127.0.0.1:1")
    assert "--address" in errors[0]
    tasks = _probe("tasks")
    assert "RC 0 HEAVY -" in tasks.stdout and "walker_walk" in tasks.stdout, tasks.stderr


def test_status_looks_in_the_namespace_launch_uses():
    assert status.NAMESPACE == launch.NAMESPACE
