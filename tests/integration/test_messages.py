"""Typed messages between roles: the coordinator's replies and the learner's report cross a
real Ray boundary as the dataclasses they are."""

import pytest

ray = pytest.importorskip("ray")

from distdrq.distributed.coordinator import Coordinator  # noqa: E402
from distdrq.distributed.messages import (  # noqa: E402
    EnvReply,
    LearnerReply,
    LearnerReport,
    SendResult,
)


def test_coordinator_replies_in_process():
    coord = Coordinator("r", total_frames=100)
    reply = coord.report_env("env-0", 60, [1.5], policy_version=0)
    assert reply == EnvReply(frames=60, weight_version=0, stop=False)
    assert coord.report_env("env-1", 40, [], 0).stop  # the budget is spent
    report = LearnerReport(updates=7, metrics={"critic_loss": 0.5}, latencies=[0.01])
    assert coord.report_learner(report) == LearnerReply(frames=100, stop=False)
    snap = coord.snapshot()
    assert snap["counters"]["updates"] == 7 and snap["learner"]["critic_loss"] == 0.5
    assert coord.take_events()["latencies"] == [0.01]
    assert SendResult("refused") is SendResult.REFUSED


def test_messages_round_trip_through_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="msg-test")
    try:
        coord = ray.remote(Coordinator).remote("r", None, None)
        reply = ray.get(coord.report_env.remote("env-0", 10, [], 0))
        assert isinstance(reply, EnvReply) and reply.frames == 10 and not reply.stop
        back = ray.get(coord.report_learner.remote(LearnerReport(3, {"q": 1.0}, [0.2])))
        assert isinstance(back, LearnerReply) and back.frames == 10
        ray.get(coord.stop.remote())
        assert ray.get(coord.report_env.remote("env-0", 0, [], 0)).stop
    finally:
        ray.shutdown()
