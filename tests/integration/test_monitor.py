"""The launch's once-a-second refresh (distributed/monitor.py) on a real local Ray cluster:
it never waits for a slow actor, shows each shard message once, and writes CSV rows and
Prometheus series from the coordinator's snapshot and the learner's own report."""

import io
import threading
import time
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from prometheus_client import generate_latest  # noqa: E402

from distdrq.distributed.messages import LearnerReport, RunSnapshot  # noqa: E402
from distdrq.distributed.monitor import Monitor  # noqa: E402
from distdrq.metrics import RunMetrics  # noqa: E402
from distdrq.progress import ProgressDisplay  # noqa: E402
from distdrq.run.counters import Counters  # noqa: E402


@ray.remote(num_cpus=0, max_concurrency=4)
class SlowShard:
    """Answers stats only after ``delay`` seconds (a shard restoring a large snapshot)."""

    def __init__(self, delay):
        self.delay = delay
        self.texts = ["restored 10 transitions from snapshot_000001.ddrq"]
        self.release = threading.Event()

    def stats(self):
        self.release.wait(self.delay)
        return {"shard": 0, "transitions": 10, "stored_bytes": 100, "pid": 1}

    def take_messages(self):
        out, self.texts = self.texts, []
        return out

    def unblock(self):
        self.release.set()


@ray.remote(num_cpus=0)
class FakeCoordinator:
    def __init__(self):
        self.returns = []

    def end_episodes(self):  # episodes end some ticks after the start, as in a real run
        self.returns = [(100, 5.0), (200, 6.0)]

    def take_returns(self):
        out, self.returns = self.returns, []
        return out


@ray.remote(num_cpus=0)
class FakeLearner:
    def take_report(self):
        return LearnerReport(7, {"critic_loss": 0.25, "policy_lag_mean": 1.0}, [0.01, 0.02])


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_refresh_never_waits_and_reports_once(ray_cluster, tmp_path):
    shard = SlowShard.remote(600.0)
    topo = SimpleNamespace(
        shards=[shard],
        coordinator=FakeCoordinator.remote(),
        learner=FakeLearner.remote(),
        limiter=None,
    )
    out = io.StringIO()
    progress = ProgressDisplay("t", 1000, stream=out, live=False)
    metrics = RunMetrics("r")
    monitor = Monitor(tmp_path, progress, metrics, lambda: topo, lambda role: ("x", ""))
    snap = RunSnapshot(Counters(frames=200, updates=7, last_eval_frame=-1))
    t0 = time.monotonic()
    for _ in range(20):
        monitor.refresh(snap)
        time.sleep(0.1)
    assert time.monotonic() - t0 < 15  # 20 ticks, a stats call that takes 600 s
    _until(lambda: (monitor.refresh(snap), monitor._learner.updates == 7)[1])
    ray.get(topo.coordinator.end_episodes.remote())
    monitor.refresh(snap)
    assert out.getvalue().count("replay-0: restored 10 transitions") == 1
    rows = (tmp_path / "train.csv").read_text().splitlines()
    assert rows[0].startswith("frame,episode_return") and len(rows) == 3
    assert "0.25" in rows[1]  # the learner's own report reached the CSV
    text = generate_latest(metrics.registry).decode()
    assert 'distdrq_replay_sample_latency_seconds_count{run="r"}' in text
    assert "distdrq_replay_transitions{" not in text  # no shard stats yet: none invented
    ray.get(shard.unblock.remote())
    _until(lambda: (monitor.refresh(snap), "distdrq_replay_transitions{" in _text(metrics))[1])
    shard_sizes = [line for line in _text(metrics).splitlines() if "replay_transitions{" in line]
    assert shard_sizes and shard_sizes[0].endswith(" 10.0")


def _text(metrics):
    return generate_latest(metrics.registry).decode()


def test_restart_lines_name_the_reason_once_per_incarnation(tmp_path):
    from distdrq.distributed.messages import RoleState

    out = io.StringIO()
    progress = ProgressDisplay("t", 1000, stream=out, live=False)
    reasons = {"learner": ("The actor died", "recreated from ckpt_000000001000.pt")}
    explain = lambda role: reasons.get(role, ("its process died", ""))  # noqa: E731
    monitor = Monitor(tmp_path, progress, None, lambda: None, explain)
    monitor._shard_stats[0] = {"transitions": 600}
    roles = {"learner": RoleState(starts=1), "replay-0": RoleState(starts=1)}
    monitor._show_restarts(RunSnapshot(Counters(), roles))  # first sight: no line
    roles = {"learner": RoleState(starts=2), "replay-0": RoleState(starts=2)}
    monitor._show_restarts(RunSnapshot(Counters(), roles))
    monitor._show_restarts(RunSnapshot(Counters(), roles))  # the same incarnation: no line
    assert out.getvalue().splitlines() == [
        "learner restarted (The actor died); recreated from ckpt_000000001000.pt; restarts: 1",
        "replay-0 restarted (its process died); it held 600 transitions before; restarts: 1",
    ]
