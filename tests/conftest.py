import os

os.environ.setdefault("MUJOCO_GL", "egl")
# Ray starts its workers at nice 15 (its default, to keep raylet and GCS responsive); beside the
# other pytest-xdist worker, at nice 0, a launch's actors would get a sliver of the CPU and its
# waits would time out. Alone on a machine, as a launch runs, the two are the same.
os.environ.setdefault("RAY_worker_niceness", "0")

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests marked ``ray`` share one pytest-xdist group: one worker runs them one after the
    other (a launch is a dozen processes; two at once on 2 cores would time out each other's
    waits), while the other worker runs the unit, learning and single-process CLI tests."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
