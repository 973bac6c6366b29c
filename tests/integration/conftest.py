"""One local Ray head shared by the in-process integration modules that follow each other.

Starting a Ray instance costs about 10 CPU-seconds on 2 cores; joining a running one costs
about 1. Each module still joins as its own Ray job (``ray.init`` / ``ray.shutdown`` around
the module, in its own namespace), so its actors and workers die with it as before. The head
starts with the first module that uses ``ray_cluster`` and stops once no module is joined and
the next test (pytest's ``nextitem``) belongs to no such module, so it never idles beside a
launch or the other pytest-xdist worker's tests; these modules run one after another.
"""

from __future__ import annotations

import os

import pytest

HEAD_CPUS = 3
"""CPUs the shared head advertises (the most any of its modules asks for)."""


class _SharedHead:
    def __init__(self) -> None:
        self.cluster = None
        self.joined = False  # a module's job is connected
        self.modules: set = set()  # the modules with a test that uses ``ray_cluster``

    def address(self) -> str:
        if self.cluster is None:
            from ray.cluster_utils import Cluster

            from distdrq.distributed import enable_token_auth_if_available

            enable_token_auth_if_available()  # as `ray start --head`: a token-auth head
            self.cluster = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False},
            )
        return self.cluster.address

    def stop(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.shutdown()


_HEAD = _SharedHead()


@pytest.fixture(scope="module")
def ray_cluster(request):
    """This module's Ray job on the shared local head (3 CPUs, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(
        address=_HEAD.address(),
        namespace=f"test-{request.module.__name__}",
        log_to_driver=False,
        runtime_env={"env_vars": {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}},
    )
    _HEAD.joined = True
    yield
    ray.shutdown()
    _HEAD.joined = False


def pytest_collection_modifyitems(config, items):
    """The modules on the shared head one after another, last: one head start for them all."""
    _HEAD.modules = {item.module for item in items if "ray_cluster" in item.fixturenames}
    items.sort(key=lambda item: item.module in _HEAD.modules)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the module's ``ray_cluster`` (if this was its last test) is finalised by now
    if _HEAD.joined:
        return
    if nextitem is None or nextitem.module not in _HEAD.modules:
        _HEAD.stop()


def pytest_sessionfinish(session, exitstatus):
    _HEAD.stop()
