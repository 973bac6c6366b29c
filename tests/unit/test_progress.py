"""The progress panel: launch's rows (restarts, policy lag) are shown when given, absent
from `distdrq train`'s panel."""

import io

from rich.console import Console

from distdrq.progress import ProgressDisplay


def _panel(progress):
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(progress._render())
    return console.export_text()


def test_launch_rows_in_plain_line_and_live_panel():
    out = io.StringIO()
    progress = ProgressDisplay("walker_walk", 1000, stream=out, live=False, interval=0.0)
    progress.update(100, 5, episode=1, restarts=2, policy_lag=1.5)
    line = out.getvalue()
    assert "restarts 2" in line and "policy lag 1.5" in line
    panel = _panel(progress)
    assert "restarts" in panel and "policy lag (versions)" in panel and "1.5" in panel


def test_train_panel_has_no_launch_rows():
    out = io.StringIO()
    progress = ProgressDisplay("walker_walk", 1000, stream=out, live=False, interval=0.0)
    progress.update(100, 5, episode=1)
    assert "restarts" not in out.getvalue() and "restarts" not in _panel(progress)
    assert "ETA" in _panel(progress)


def test_ray_notices_become_one_line_and_a_log(tmp_path):
    from distdrq.distributed.monitor import RayNotices

    inner, shown = io.StringIO(), []
    notices = RayNotices(inner, tmp_path / "ray_notices.log", shown.append)
    notice = (
        "\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an "
        "unexpected system error. To troubleshoot the problem, check the logs.\n"
        "RayTask ID: ffff\nWorker PID: 123\nWorker exit type: SYSTEM_ERROR"
    )
    print(notice, file=notices)
    print("an ordinary line", file=notices)
    assert shown == [
        "Ray: A worker died or was killed while executing a task by an unexpected system "
        "error (the whole notice is in ray_notices.log)"
    ]
    assert inner.getvalue() == "an ordinary line\n"  # nothing of the notice, not its newline
    logged = (tmp_path / "ray_notices.log").read_text()
    assert "Worker PID: 123" in logged and "\x1b[" not in logged


def test_activity_is_a_now_row_only_while_set():
    out = io.StringIO()
    progress = ProgressDisplay("walker_walk", 1000, stream=out, live=False, interval=3600.0)
    progress.update(100, 5)
    progress.activity("evaluating: episode 2 of 10")
    assert "now" in _panel(progress) and "episode 2 of 10" in _panel(progress)
    assert len(out.getvalue().splitlines()) == 1  # a plain line at most every interval
    progress.activity(None)
    assert "evaluating" not in _panel(progress)
