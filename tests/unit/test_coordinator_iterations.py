"""The coordinator's side of SDPG's iterations (in process: it is a plain class)."""

from distdrq.distributed.coordinator import Coordinator
from distdrq.distributed.messages import IterationReport


def test_iteration_reports_count_frames_steps_returns_and_stop_at_the_budget():
    coord = Coordinator("run", total_frames=100)
    reply = coord.report_iteration(IterationReport(1, 64, 32, []))
    assert (reply.frames, reply.stop) == (64, False)
    reply = coord.report_iteration(IterationReport(2, 64, 32, [10.0, 30.0]))
    assert (reply.frames, reply.stop) == (128, True)  # the frame budget is spent
    c = coord.snapshot().counters
    assert (c.updates, c.frames, c.steps, c.episodes, c.last_train_return) == (2, 128, 64, 2, 30.0)
    assert coord.take_returns() == [(128, 10.0), (128, 30.0)]  # train.csv rows
    coord.report_iteration(IterationReport(1, 0, 0, []))  # a stale count never goes back
    assert coord.snapshot().counters.updates == 2


def test_stop_flag_reaches_the_learner():
    coord = Coordinator("run")
    assert not coord.report_iteration(IterationReport(1, 8, 4, [])).stop
    coord.stop()
    assert coord.report_iteration(IterationReport(2, 8, 4, [])).stop
