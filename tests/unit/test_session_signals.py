"""Stop signals of a single-process run (``distdrq.run.session``): SIGINT and SIGTERM checkpoint
and stop even when the process was started with SIGINT ignored (a shell script's ``cmd &``)."""

from __future__ import annotations

import io
import os
import signal

import pytest

from distdrq.progress import ProgressDisplay
from distdrq.run.counters import Counters
from distdrq.run.session import training_session
from distdrq.sdpg_trainer import _interrupts_deferred


@pytest.fixture
def sigint_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_checkpoints_although_sigint_was_ignored(tmp_path, sigint_ignored, signum):
    saved: list[bool] = []
    out = io.StringIO()
    progress = ProgressDisplay("t", 100, stream=out, live=False)
    save = lambda quick: saved.append(quick) or tmp_path  # noqa: E731
    with progress, training_session(Counters(), tmp_path, save, progress):
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
        pytest.fail("the signal did not interrupt the training loop")
    assert saved == [True]
    assert "interrupted: writing a checkpoint" in out.getvalue()
    assert (tmp_path / "summary.json").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the caller's handler is back


def test_deferred_interrupts_wait_for_the_block_and_leave_ignored_signals_ignored(sigint_ignored):
    previous_term = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("not deferred"))
    try:
        with pytest.raises(KeyboardInterrupt), _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            finished = True  # the block is not cut short
        assert finished
        with _interrupts_deferred():  # ignored before: still ignored, no KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
