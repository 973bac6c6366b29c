"""Prometheus metrics: every listed name is served, counters only go up."""

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from distdrq.distributed.messages import RoleState, RunSnapshot
from distdrq.metrics import RunMetrics
from distdrq.run.counters import Counters

LISTED = Path(__file__).resolve().parents[2] / "deploy" / "metrics.txt"


LEARNER = {
    "critic_loss": 0.5,
    "actor_loss": -1.0,
    "critic_q1": 2.0,
    "policy_lag_mean": 1.5,
    "policy_lag_max": 4.0,
    "gpu_memory_bytes": 1e9,
    "nonfinite_batches": 0.0,
    "sigma": 0.4,  # SDPG's learner reports these three
    "temperature": 0.01,
    "iteration_s": 0.6,
}


def _snapshot(frames, restarts=0, eval_return=float("nan")):
    counters = Counters(
        frames=frames,
        episodes=frames // 1000,
        updates=frames // 4,
        weight_version=3,
        last_train_return=12.5,
        last_eval_return=eval_return,
    )
    roles = {"env-0": RoleState(starts=1 + restarts), "learner": RoleState(starts=1)}
    return RunSnapshot(counters, roles)


def _served(metrics):
    text = generate_latest(metrics.registry).decode()
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}, text


def test_every_listed_metric_is_served_with_the_run_label():
    m = RunMetrics("distdrq-test")
    shard = {"shard": 0, "transitions": 10, "stored_bytes": 100, "ratio_vs_drqv2": 9.9}
    shard |= {"pid": 11, "rejected_chunks_values": 2, "snapshots_damaged": 1, "transitions_lost": 7}
    limiter = {
        "insert_blocked_seconds": 1.0,
        "sample_blocked_seconds": 0.5,
        "measured_samples_per_insert": 127.0,
    }
    snap = _snapshot(5000, restarts=1, eval_return=300.0)
    m.update(snap, LEARNER, {"frames_per_second": 300.0}, [shard], limiter, [0.01])
    m.count_damaged_checkpoint()
    served, text = _served(m)
    names = [n.strip() for n in LISTED.read_text().splitlines() if n.strip() and n[0] != "#"]
    assert len(names) >= 20
    for name in names:
        candidates = (name, f"{name}_count")
        assert any(c in served for c in candidates), f"{name} is listed but not served"
    assert 'run="distdrq-test"' in text and 'shard="0"' in text and 'side="insert"' in text
    assert served["distdrq_env_frames_total"].value == 5000
    assert served["distdrq_actor_restarts_total"].value in (0.0, 1.0)


def test_counters_follow_the_run_and_never_decrease():
    m = RunMetrics("r")
    m.update(_snapshot(1000), LEARNER, {}, [], None, [])
    m.update(_snapshot(3000), LEARNER, {}, [], None, [0.002, 0.004])
    m.update(_snapshot(2000), LEARNER, {}, [], None, [])  # a stale reading must not move it back
    served, _ = _served(m)
    assert served["distdrq_env_frames_total"].value == 3000
    assert served["distdrq_replay_sample_latency_seconds_count"].value == 2
    assert "distdrq_eval_return" not in served  # NaN (no evaluation yet) is not exported


def test_per_process_counts_add_up_over_shard_restarts():
    """A shard's rejections restart at 0 with its process; the run's counter keeps the sum."""
    m = RunMetrics("r")
    base = {"shard": 0, "transitions": 10, "stored_bytes": 100}
    for pid, rejected, damaged in ((1, 2, 0), (1, 5, 0), (2, 1, 1), (2, 1, 1), (3, 0, 1)):
        stats = base | {"pid": pid, "rejected_chunks_values": rejected}
        m.update(_snapshot(1000), LEARNER, {}, [stats | {"snapshots_damaged": damaged}], None, [])
    served, _ = _served(m)
    assert served["distdrq_replay_rejected_chunks_total"].value == 5 + 1
    assert served["distdrq_replay_snapshots_damaged_total"].value == 2


def test_sdpg_quantities_are_served_only_when_reported():
    m = RunMetrics("distdrq-sdpg")
    m.update(_snapshot(1000), {"critic_loss": 0.5}, {}, [], None, [])
    served, _ = _served(m)
    assert "distdrq_sdpg_policy_std" not in served  # a DrQ-v2 learner has no sigma
    m.update(_snapshot(2000), LEARNER, {}, [], None, [])
    served, _ = _served(m)
    assert served["distdrq_sdpg_policy_std"].value == 0.4
    assert served["distdrq_sdpg_iteration_seconds"].value == 0.6
