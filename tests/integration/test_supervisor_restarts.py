"""The supervisor's restart policy on a real local Ray cluster: a role that fails at every
start is restarted with a growing back-off and then given up with one clear error, a dead
learner too; a role that makes progress between failures is restarted forever."""

import time

import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.config import Config  # noqa: E402
from distdrq.distributed import supervisor as supervisor_mod  # noqa: E402
from distdrq.distributed.messages import RoleState, RunSnapshot  # noqa: E402
from distdrq.distributed.topology import Topology  # noqa: E402
from distdrq.run.counters import Counters  # noqa: E402


@ray.remote(num_cpus=0)
class StubCoordinator:
    def __init__(self):
        self.frames = 0
        self.updates = 0

    def add(self, frames: int, updates: int) -> None:
        self.frames += frames
        self.updates += updates

    def snapshot(self) -> RunSnapshot:
        roles = {"env-0": RoleState(starts=1, frames=self.frames)}
        return RunSnapshot(Counters(frames=self.frames, updates=self.updates), roles)

    def stop(self) -> None:
        pass


@ray.remote(num_cpus=0, max_restarts=-1)
class FailingActor:
    """Its loop raises at once every time; with ``progress`` it first reports frames."""

    def __init__(self, coordinator, progress: bool):
        self.coordinator = coordinator
        self.progress = progress
        self.runs = 0

    def run(self):
        self.runs += 1
        if self.progress:
            ray.get(self.coordinator.add.remote(100, 0))
        raise RuntimeError(f"deterministic crash #{self.runs}")

    def count(self) -> int:
        return self.runs

    def ping(self) -> int:
        return 1

    def stop(self) -> None:
        pass


@ray.remote(num_cpus=0, max_restarts=0)
class CrashingLearner:
    def run(self):
        raise ValueError("the learner's update blew up")

    def ping(self) -> int:
        return 1


def _supervisor(env_actors, learner, coordinator, **distributed):
    cfg = Config()
    for key, value in distributed.items():
        setattr(cfg.distributed, key, value)
    topo = Topology(
        coordinator=coordinator,
        shards=[],
        learner=learner,
        env_actors=env_actors,
        evaluator=None,
        learner_gpus=0.0,
        obs_shape=(9, 84, 84),
        action_dim=1,
    )
    return supervisor_mod.Supervisor(cfg, None, "test", topo, lambda text: None)


@ray.remote(num_cpus=0)
class IdleLearner:
    def run(self):
        time.sleep(3600)

    def ping(self) -> int:
        return 1


def _given_up(sup) -> pytest.ExceptionInfo:
    """Step ``sup`` until it gives a role up (at most a minute)."""
    begin = time.monotonic()
    with pytest.raises(supervisor_mod.RestartLimitError) as err:
        while time.monotonic() - begin < 60:
            sup.step(timeout=0.1)
    return err


def _one_failing_actor(progress: bool, **distributed):
    """A started supervisor of one :class:`FailingActor` (and an idle learner)."""
    coordinator = StubCoordinator.remote()
    actor = FailingActor.remote(coordinator, progress)
    sup = _supervisor([actor], IdleLearner.remote(), coordinator, **distributed)
    sup.start()
    return actor, sup


def test_an_env_actor_that_fails_at_every_start_is_given_up_after_back_offs(ray_cluster):
    actor, sup = _one_failing_actor(False, restart_backoff_s=0.5, max_failures=4)
    begin = time.monotonic()
    err = _given_up(sup)
    took = time.monotonic() - begin
    assert "env-0 failed 4 times in a row" in str(err.value)
    assert "deterministic crash" in str(err.value)
    assert ray.get(actor.count.remote()) == 4  # started 4 times, not restarted a 5th
    assert sup.restarts["env-0"] == 4
    assert took >= 0.5 + 1.0 + 2.0  # the three back-offs between the four starts


def test_an_env_actor_that_progresses_between_failures_is_restarted_on(ray_cluster):
    actor, sup = _one_failing_actor(True, restart_backoff_s=0.05, max_failures=2)
    begin = time.monotonic()
    while ray.get(actor.count.remote()) < 6:  # past the limit of 2 failures in a row
        sup.step(timeout=0.05)
        assert time.monotonic() - begin < 60
    assert sup.policy.in_a_row["env-0"] == 1


def test_a_learner_that_fails_at_every_start_is_given_up(ray_cluster, monkeypatch):
    coordinator = StubCoordinator.remote()
    created = []

    def start_learner(cfg, name, gpus, shape, state):
        created.append(state)
        return CrashingLearner.remote()

    monkeypatch.setattr(supervisor_mod, "start_learner", start_learner)
    monkeypatch.setattr(supervisor_mod.Supervisor, "_newest_learner_state", lambda self: None)
    sup = _supervisor(
        [], CrashingLearner.remote(), coordinator, restart_backoff_s=0.2, max_failures=3
    )
    sup.start()
    begin = time.monotonic()
    err = _given_up(sup)
    assert "learner failed 3 times in a row without an update" in str(err.value)
    assert "blew up" in str(err.value)
    assert len(created) == 2  # recreated twice (after 0.2 s and 0.4 s), then given up
    assert time.monotonic() - begin >= 0.6


@ray.remote(num_cpus=0, max_restarts=-1)
class BrokenConstructor:
    """Works once, then every new incarnation's constructor raises (a flag file)."""

    def __init__(self, flag: str):
        import os

        if os.path.exists(flag):
            raise ValueError("no such task 'cartpole_jump'")
        open(flag, "w").close()

    def run(self):
        import os

        os._exit(1)  # dies: Ray restarts it, and the new constructor raises

    def ping(self) -> int:
        return 1

    def stop(self) -> None:
        pass


def test_an_actor_whose_constructor_raises_is_given_up_with_its_error(ray_cluster, tmp_path):
    coordinator = StubCoordinator.remote()
    actor = BrokenConstructor.remote(str(tmp_path / "flag"))
    sup = _supervisor(
        [actor], IdleLearner.remote(), coordinator, restart_backoff_s=0.1, max_failures=3
    )
    sup.start()
    err = _given_up(sup)
    assert "env-0 failed 3 times in a row" in str(err.value)
    assert "its constructor raised ValueError: no such task 'cartpole_jump'" in str(err.value)
