import os

os.environ.setdefault("MUJOCO_GL", "egl")
# Ray starts its workers at nice 15 (its default, to keep raylet and GCS responsive); beside the
# other pytest-xdist worker, at nice 0, a launch's actors would get a sliver of the CPU and its
# waits would time out. Alone on a machine, as a launch runs, the two are the same.
os.environ.setdefault("RAY_worker_niceness", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two pytest-xdist workers share the cores: one thread each, here and in the processes the
    # tests start (a multi-threaded BLAS or torch op spins on a core the other worker holds: a
    # NumPy act took 47 ms instead of 3, and the NumPy exploration tests 85 s instead of 7)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Tests marked ``ray`` share one pytest-xdist group: one worker runs them one after the
    other (a launch is a dozen processes; two at once on 2 cores would time out each other's
    waits), while the other worker runs the unit, learning and single-process CLI tests."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Under pytest-xdist, torch and the OpenBLAS that NumPy loaded (maybe before this file
    set the variables above) use one thread."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        from distdrq.numpy_policy import limit_blas_threads

        torch.set_num_threads(1)
        limit_blas_threads(1)
    yield
