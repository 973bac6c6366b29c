"""The launch's checkpoint policy (distributed/checkpointing.py) when an actor is down, on a real local Ray cluster.

A periodic checkpoint that meets a shard Ray is restarting (or a dead learner) is postponed,
not fatal: before, the driver stopped the whole run when a killed shard was snapshotted.
"""

import io
import os
import time
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.checkpoint import list_checkpoints  # noqa: E402
from distdrq.distributed import checkpointing as checkpointing_mod  # noqa: E402
from distdrq.distributed.messages import RunSnapshot  # noqa: E402
from distdrq.distributed.topology import Topology  # noqa: E402
from distdrq.progress import ProgressDisplay  # noqa: E402
from distdrq.run.counters import Counters  # noqa: E402


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class FlakyShard:
    """Dies (the process exits) on its first snapshot call, then works after Ray restarts it."""

    def __init__(self, flag: str):
        self.flag = flag

    def snapshot(self, code_new: bool = True) -> str:
        if not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)
        return "snapshot_000001.ddrq"


@ray.remote(num_cpus=0)
class CountingShard:
    def __init__(self):
        self.calls = 0

    def snapshot(self, code_new: bool = True) -> str:
        self.calls += 1
        return f"snapshot_{self.calls:06d}.ddrq"

    def count(self) -> int:
        return self.calls


@ray.remote(max_restarts=0, num_cpus=0)
class StubLearner:
    def state(self) -> dict:
        return {"updates": 7}


def _kill(learner) -> None:
    """Kill the learner and wait until Ray says so (``ray.kill`` is asynchronous: a call made
    at once may still be answered)."""
    ray.kill(learner, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(learner.state.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError("the killed learner still answers")


def _driver(tmp_path, shards, learner):
    out = io.StringIO()
    progress = ProgressDisplay("test", 100, stream=out, live=False)
    topo = Topology(
        coordinator=None,
        shards=shards,
        learner=learner,
        env_actors=[],
        evaluator=None,
        learner_gpus=0.0,
        obs_shape=(9, 84, 84),
        action_dim=1,
    )
    supervisor = SimpleNamespace(topo=topo, run_dir=tmp_path, restarts={})
    driver = checkpointing_mod.Checkpointing(supervisor, 1000, 1000, 1, progress.message)
    return driver, out


SNAP = RunSnapshot(Counters(frames=1000))


def test_periodic_checkpoint_is_postponed_while_a_shard_restarts(ray_cluster, tmp_path):
    shard = FlakyShard.remote(str(tmp_path / "died-once"))
    driver, out = _driver(tmp_path, [shard], StubLearner.remote())

    assert driver.checkpoint(SNAP, patience=0.0) is None
    assert "checkpoint postponed, an actor is down" in out.getvalue()
    assert list_checkpoints(tmp_path) == []
    assert driver.retry_at > 0

    # once Ray has restarted the shard, the next try writes the checkpoint
    path = driver.checkpoint(SNAP, patience=60.0)
    assert path is not None and path.exists()
    assert list_checkpoints(tmp_path) == [path]


def test_final_checkpoint_waits_for_a_restarting_shard(ray_cluster, tmp_path):
    shard = FlakyShard.remote(str(tmp_path / "died-once"))
    driver, _ = _driver(tmp_path, [shard], StubLearner.remote())
    path = driver.checkpoint(SNAP, patience=60.0)
    assert path is not None and list_checkpoints(tmp_path) == [path]


def test_dead_learner_postpones_or_raises_at_once(ray_cluster, tmp_path):
    (tmp_path / "died-once").touch()  # this shard works
    learner = StubLearner.remote()
    ray.get(learner.state.remote())
    _kill(learner)
    driver, out = _driver(tmp_path, [FlakyShard.remote(str(tmp_path / "died-once"))], learner)
    assert driver.checkpoint(SNAP, patience=0.0) is None
    assert "postponed" in out.getvalue()
    with pytest.raises(ray.exceptions.RayActorError):
        driver.checkpoint(SNAP, patience=600.0)  # a learner is never restarted: no waiting
    assert list_checkpoints(tmp_path) == []


def test_healthy_shards_are_not_asked_again_while_another_restarts(ray_cluster, tmp_path):
    healthy = CountingShard.remote()
    flaky = FlakyShard.remote(str(tmp_path / "died-once"))
    driver, _ = _driver(tmp_path, [healthy, flaky], StubLearner.remote())
    path = driver.checkpoint(SNAP, patience=60.0)
    assert path is not None
    assert ray.get(healthy.count.remote()) == 1  # only the failed shard was asked again


def test_an_actor_down_too_long_ends_the_postponements(ray_cluster, tmp_path, monkeypatch):
    (tmp_path / "died-once").touch()
    learner = StubLearner.remote()
    _kill(learner)
    driver, _ = _driver(tmp_path, [FlakyShard.remote(str(tmp_path / "died-once"))], learner)
    assert driver.checkpoint(SNAP, patience=0.0) is None  # first postponement
    monkeypatch.setattr(checkpointing_mod, "FINAL_CHECKPOINT_PATIENCE_S", 0.0)
    with pytest.raises(ray.exceptions.RayActorError):
        driver.checkpoint(SNAP, patience=0.0)  # down longer than the limit: lost
