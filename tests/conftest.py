import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests marked ``ray`` share one pytest-xdist group: one worker runs them one after the
    other (a launch is a dozen processes; two at once on 2 cores would time out each other's
    waits), while the other worker runs the unit, learning and single-process CLI tests."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
