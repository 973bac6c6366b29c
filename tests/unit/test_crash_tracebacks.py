"""A native crash in an actor process leaves the Python stack of every thread in its log."""

import subprocess
import sys
import textwrap


def test_an_abort_prints_every_threads_python_stack():
    code = textwrap.dedent(
        """
        import os, threading
        from distdrq.distributed import crash_tracebacks

        crash_tracebacks()
        crash_tracebacks()  # idempotent: actors may call it more than once

        def render_episode():
            os.abort()  # what glibc does on a corrupted heap

        worker = threading.Thread(target=render_episode, name="evaluation_0")
        worker.start()
        worker.join()
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Fatal Python error: Aborted" in result.stderr, result.stderr
    assert "render_episode" in result.stderr and "Current thread" in result.stderr
    assert "in <module>" in result.stderr  # the main thread's stack too
