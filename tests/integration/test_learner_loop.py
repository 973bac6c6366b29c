"""The learner's weight publication on a real local Ray cluster: it never holds up updates."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_agent import random_batch, tiny_agent  # noqa: E402

from distdrq.distributed.learner import WeightPublisher  # noqa: E402


def slow_coordinator(delay: float):
    """A coordinator actor that takes ``delay`` seconds to store each version (far away, or
    busy); defined in a function so that Ray ships the class by value to its worker."""

    class SlowCoordinator:
        def __init__(self) -> None:
            self.published: list[tuple[int, int, list]] = []

        def publish(self, version: int, weights: list, updates: int) -> None:
            time.sleep(delay)
            self.published.append((version, updates, weights))

        def received(self) -> list[tuple[int, int, list]]:
            return self.published

    return ray.remote(SlowCoordinator).options(max_concurrency=2).remote()


def test_publishing_returns_at_once_and_sends_the_weights_as_they_were(ray_cluster):
    coordinator = slow_coordinator(1.0)
    agent = tiny_agent()
    publisher = WeightPublisher(coordinator, agent)
    start = time.monotonic()
    publisher.publish(1, 10)
    publisher.publish(2, 20)
    wanted = agent.policy_state_dict()
    publisher.publish(3, 30)
    assert time.monotonic() - start < 0.5  # the coordinator takes 1 s per version
    agent.update(random_batch(), 0)  # the update loop goes on, changing the weights
    publisher.flush()
    received = ray.get(coordinator.received.remote())
    versions = [version for version, _, _ in received]
    assert versions == sorted(versions) and versions[-1] == 3
    assert publisher.superseded == 3 - len(versions)  # a waiting version gives way to a newer
    version, updates, (ref,) = received[-1]
    sent = ray.get(ref)  # NumPy arrays: env actors act without torch
    assert updates == 30 and sent.keys() == wanted.keys()
    assert all(isinstance(value, np.ndarray) for value in sent.values())
    assert all(np.array_equal(sent[key], wanted[key].numpy()) for key in wanted)
    changed = agent.policy_state_dict()
    assert any(not np.array_equal(sent[key], changed[key].numpy()) for key in wanted)

    ray.kill(coordinator)  # an error in the thread reaches the update loop
    publisher.publish(4, 40)
    with pytest.raises(ray.exceptions.RayActorError):
        publisher.flush()
    publisher.close()
