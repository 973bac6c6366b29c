import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for one test module (shut down after it)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
