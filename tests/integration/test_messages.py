"""Typed messages between roles: the coordinator's replies, its snapshot and the evaluator's
report cross a real Ray boundary as the dataclasses they are."""

import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.distributed.coordinator import Coordinator  # noqa: E402
from distdrq.distributed.messages import (  # noqa: E402
    EnvReply,
    EvalReport,
    LearnerReply,
    RoleState,
    RunSnapshot,
    SendResult,
)
from distdrq.run.counters import Counters  # noqa: E402


def test_coordinator_replies_in_process():
    coord = Coordinator("r", total_frames=100)
    coord.register("env-0")
    reply = coord.report_env("env-0", 60, [1.5], policy_version=0)
    assert reply == EnvReply(frames=60, weight_version=0, stop=False)
    assert coord.report_env("env-1", 40, [], 0).stop  # the budget is spent
    assert coord.report_learner(7) == LearnerReply(frames=100, stop=False)
    coord.report_learner(5)  # a report from before a restart never takes the count back
    coord.report_eval(EvalReport(100, 3.0, 0.5, 10, 2))
    coord.report_eval(EvalReport(100, 9.0, 0.5, 10, 2))  # a repeat by a restarted evaluator
    snap = coord.snapshot()
    assert isinstance(snap.counters, Counters) and snap.counters.updates == 7
    assert snap.counters.last_eval_return == 3.0 and snap.last_eval.std_return == 0.5
    assert snap.role("env-0") == RoleState(starts=1, frames=60, episodes=1, policy_version=0)
    assert snap.role("nobody").restarts == 0 and snap.restarts == 0
    assert coord.take_returns() == [(60, 1.5)] and coord.take_returns() == []
    snap.counters.frames = -1  # a snapshot is a copy: the coordinator's counters stay
    assert coord.snapshot().counters.frames == 100
    assert SendResult("refused") is SendResult.REFUSED


def test_messages_round_trip_through_ray(ray_cluster):
    coord = ray.remote(Coordinator).remote("r", None, None)
    ray.get([coord.register.remote("env-0"), coord.register.remote("env-0")])
    reply = ray.get(coord.report_env.remote("env-0", 10, [], 0))
    assert isinstance(reply, EnvReply) and reply.frames == 10 and not reply.stop
    back = ray.get(coord.report_learner.remote(3))
    assert isinstance(back, LearnerReply) and back.frames == 10
    ray.get(coord.report_eval.remote(EvalReport(10, 1.0, 0.0, 1, 0)))
    snap = ray.get(coord.snapshot.remote())
    assert isinstance(snap, RunSnapshot) and snap.counters.updates == 3
    assert snap.role("env-0").restarts == 1 and snap.last_eval.frame == 10
    ray.get(coord.stop.remote())
    assert ray.get(coord.report_env.remote("env-0", 0, [], 0)).stop
    assert ray.get(coord.snapshot.remote()).stop
