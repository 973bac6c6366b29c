"""Fault tolerance on a real Ray cluster: a run's life in one launch (SIGKILLed env actor, shard
and learner, then Ctrl-C and --resume), a lost worker node, and an auth-mode mismatch."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.distributed import enable_token_auth_if_available  # noqa: E402
from distdrq.proctree import descendants  # noqa: E402
from distdrq.tblog import read_events  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from test_cli_launch import (  # noqa: E402
    SMALL,
    _disk_coded,
    _gone,
    _latest,
    _learning_and_evaluated,
    _newest_checkpoint,
    run,
)

COMMON = [
    "--plain",
    "--task",
    "cartpole_swingup",
    "--frames",
    "10000000",
    "env.image_size=32",
    "env.fast_render=true",
    "agent.batch_size=32",
    "agent.hidden_dim=32",
    "agent.feature_dim=16",
    "agent.device=cpu",
    "train.seed_frames=200",
    "distributed.samples_per_insert=0",
    "distributed.evaluator=false",
    "distributed.chunk_length=25",
]


class _Launch:
    """A `distdrq launch` subprocess whose output a thread keeps reading (a full pipe would
    block it) and that every wait checks: if the run has ended, the test fails at once with
    its output (instead of this process being killed by Ray when the cluster goes away)."""

    def __init__(self, run_dir, *extra, common=COMMON):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distdrq.cli", "launch", "--run-dir", str(run_dir)]
            + [*common, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def check_running(self):
        if self.proc.poll() is not None:
            self._reader.join(timeout=10)
            raise AssertionError(
                f"launch exited ({self.proc.returncode}) during the test:\n{self.output[-4000:]}"
            )

    def wait_for_line(self, text, timeout=240):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            self.check_running()
            assert time.monotonic() < deadline, self.output
            time.sleep(0.2)
        return list(self.lines)

    def stop(self, interrupted=False):
        """Ctrl-C (unless the test ``interrupted`` it already); the launch must end cleanly.
        Returns its whole output."""
        if self.proc.poll() is None:
            if not interrupted:
                self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=300)
            self._reader.join(timeout=30)
            assert self.proc.returncode == 0, self.output[-3000:]
        self._reader.join(timeout=30)
        return self.output


def _until(predicate, timeout=120, every=0.5, launch=None):
    deadline = time.monotonic() + timeout
    while True:
        if launch is not None:
            launch.check_running()
        try:
            value = predicate()
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            value = None  # an actor is restarting
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)


def _snapshot(coord):
    return ray.get(coord.snapshot.remote(), timeout=30)


def _shard_stats(shard):
    try:
        return ray.get(shard.stats.remote(), timeout=10)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


@pytest.mark.slow
def test_a_run_survives_killed_actors_then_ctrl_c_and_resume_continue_it(tmp_path):
    """A run's life in one launch (each launch costs tens of seconds of Ray start-up on 2
    cores). SIGKILLed env actor and shard recover, the shard from its snapshot; a SIGKILLed
    learner is recreated from the checkpoint and its weight versions go on. Ctrl-C then writes a
    quick checkpoint and leaves no process behind, and `--resume` continues replay, learner,
    limiter and records to the frame budget."""
    run_dir = tmp_path / "run"
    every = 600  # frames between checkpoints; each one snapshots every shard
    launch = _Launch(
        run_dir,
        "--task",
        "cartpole_swingup",
        "--frames",
        "1000000",
        *SMALL,
        f"train.checkpoint_every_frames={every}",
        common=[],
    )
    tree: set[int] = set()
    interrupted = False
    try:
        lines = launch.wait_for_line("learner on")
        address = next(x for x in lines if x.startswith("Ray cluster at ")).split()[3]
        enable_token_auth_if_available()  # joining by explicit address
        ray.init(address=address, namespace="distdrq", log_to_driver=False)
        tree |= descendants(launch.proc.pid)
        name = f"distdrq-{run_dir.name}"
        coord = ray.get_actor(f"{name}-coordinator")
        env0 = ray.get_actor(f"{name}-env-0")
        shard0 = ray.get_actor(f"{name}-replay-0")
        _until(lambda: (_shard_stats(shard0) or {}).get("transitions", 0) >= 100, launch=launch)
        _until(
            lambda: list((run_dir / "replay" / "shard_000").glob("snapshot_*.ddrq")), launch=launch
        )
        before = _snapshot(coord).counters.frames

        # kill the processes the way the world does: SIGKILL by PID
        os.kill(ray.get(env0.pid.remote(), timeout=30), signal.SIGKILL)
        os.kill(ray.get(shard0.pid.remote(), timeout=30), signal.SIGKILL)

        restored = _until(
            lambda: (s := _shard_stats(shard0)) and s["restored_from"] and s, launch=launch
        )
        assert restored["transitions"] > 0  # the shard's data came back from its snapshot
        roles = _until(
            lambda: (
                (r := _snapshot(coord)).role("env-0").starts >= 2
                and r.role("replay-0").starts >= 2
                and r
            ),
            launch=launch,
        )
        assert roles.role("env-0").restarts >= 1
        after_kill = _snapshot(coord).counters.frames
        assert after_kill >= before
        # the run goes on: frames keep increasing, the restarted actor produces again
        _until(
            lambda: _snapshot(coord).counters.frames > after_kill + 200,
            timeout=180,
            launch=launch,
        )
        start_env0 = _snapshot(coord).role("env-0").frames
        _until(
            lambda: _snapshot(coord).role("env-0").frames > start_env0,
            timeout=180,
            launch=launch,
        )

        # SIGKILL the learner once a checkpoint exists: the driver recreates it from that
        # checkpoint, its weight versions continue after the dead one's and actors switch at once
        _until(
            lambda: list((run_dir / "checkpoints").glob("ckpt_*.pt")), timeout=180, launch=launch
        )
        _until(lambda: _snapshot(coord).counters.weight_version >= 3, launch=launch)
        learner = ray.get_actor(f"{name}-learner")
        os.kill(ray.get(learner.pid.remote(), timeout=30), signal.SIGKILL)
        versions = []

        def restarted():
            snap = _snapshot(coord)
            versions.append(snap.counters.weight_version)
            return snap.role("learner").starts >= 2

        _until(restarted, timeout=180, launch=launch)
        died_at = versions[-1]
        updates = _snapshot(coord).counters.updates

        def acting_with_new_weights():
            snap = _snapshot(coord)
            versions.append(snap.counters.weight_version)
            return snap.counters.weight_version > died_at and all(
                snap.role(f"env-{i}").policy_version > died_at for i in range(2)
            )

        _until(acting_with_new_weights, timeout=60, launch=launch)
        assert versions == sorted(versions), versions  # never backwards
        _until(lambda: _snapshot(coord).counters.updates > updates, timeout=180, launch=launch)

        def lag_reported():  # the learner's own report (not the coordinator's)
            learner = ray.get_actor(f"{name}-learner")
            return ray.get(learner.take_report.remote(), timeout=30).metrics.get("policy_lag_mean")

        lag = _until(lag_reported, timeout=60, launch=launch)
        assert lag >= 0, lag  # a version that went backwards would make it negative
        # Ctrl-C once the panel shows an update, a finished episode and the first evaluation,
        # while both shards hold transitions that no snapshot holds and the next periodic
        # checkpoint (which snapshots every shard) is at least 200 frames away
        _until(lambda: any(map(_learning_and_evaluated, list(launch.lines))), 240, launch=launch)
        shards = [shard0, ray.get_actor(f"{name}-replay-1")]

        def unsaved_and_no_checkpoint_due():
            last = int(_newest_checkpoint(run_dir).stem.split("_")[1])
            stats = [_shard_stats(shard) or {} for shard in shards]
            unsaved = all(s.get("inserted_since_snapshot", 0) > 0 for s in stats)
            return unsaved and _snapshot(coord).counters.frames + 200 < last + every

        _until(unsaved_and_no_checkpoint_due, 120, every=0.1, launch=launch)
        tree |= descendants(launch.proc.pid)
        launch.proc.send_signal(signal.SIGINT)
        interrupted = True
    finally:
        ray.shutdown()
        first = launch.stop(interrupted)  # after Ctrl-C the launch must end cleanly (exit 0)
    # the driver showed each restart once, in one line, for every role (counted anywhere in a
    # line: Ray's own "worker died" notice, written by another thread at the same moment, can
    # leave our line behind its text without a newline between them)
    for role in ("env-0", "replay-0", "learner"):
        assert first.count(f"{role} restarted (") == 1, (role, first[-6000:])
    assert "); recreated from ckpt_" in first  # the reason, then where the learner came from
    assert "Traceback" not in first

    # Ctrl-C: a quick checkpoint, no process left behind
    assert "interrupted" in first and "checkpoint" in first.split("interrupted", 1)[1]
    assert "2 env actors, 2 replay shards, learner on cpu" in first
    assert "Ray dashboard:" not in first  # distributed.dashboard=false
    assert "oversubscribed" in first  # 6 processes on this 2-core machine
    assert tree, "no Ray child processes seen"
    _gone(tree, 30)
    s1 = _latest(run_dir)
    c1 = s1["counters"]
    assert c1["frames"] > 0 and c1["updates"] > 0 and c1["episodes"] >= 1
    assert len(s1["replay_snapshots"]) == 2
    assert s1["rate_limiter"]["inserts"] > 0
    assert list((run_dir / "videos").glob("eval_*.gif"))  # the evaluator's first evaluation
    shard_files = sorted((run_dir / "replay").glob("shard_*/snapshot_*.ddrq"))
    assert len(shard_files) >= 2
    # Ctrl-C's snapshots are quick: what no earlier snapshot coded for disk keeps the replay
    # codec's bytes (the periodic snapshots before it did code theirs)
    assert False in _disk_coded(s1["replay_snapshots"])

    budget = c1["frames"] + 400  # about 100 agent steps per env actor, at action repeat 2
    second = run("--resume", str(run_dir), "--frames", str(budget), "--plain")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"at frame {c1['frames']:,}" in second.stdout
    s2 = _latest(run_dir)
    c2 = s2["counters"]
    assert c2["frames"] >= budget and c2["updates"] > c1["updates"]
    assert c2["episodes"] >= c1["episodes"]
    assert s2["learner"]["version"] >= s1["learner"]["version"]
    # the replay came back: the limiter counts inserts of both sessions
    assert s2["rate_limiter"]["inserts"] > s1["rate_limiter"]["inserts"]
    assert s2["session"] == 1
    assert _disk_coded(s2["replay_snapshots"]) == {True}  # the end of the budget codes them all
    # the records continue as if the run had never stopped: no evaluation twice, frames ascending
    evals = [int(r.split(",")[0]) for r in (run_dir / "eval.csv").read_text().splitlines()[1:]]
    assert evals == sorted(set(evals)) and evals[-1] >= budget, evals
    trains = [int(r.split(",")[0]) for r in (run_dir / "train.csv").read_text().splitlines()[1:]]
    assert trains == sorted(trains), trains
    # and so do TensorBoard's events, written by the driver, rebuilt on resume
    points = read_events(run_dir)
    assert [step for step, _ in points["eval/eval_return"]] == evals
    assert [step for step, _ in points["train/episode_return"]] == trains
    assert points["eval/video"][0][0] == 0


@pytest.mark.slow
def test_multi_node_spread_and_node_loss(tmp_path):
    from ray.cluster_utils import Cluster

    # like `ray start --head`, a token-auth cluster (cluster_utils starts its nodes in the mode
    # this process is in); before, this test passed only when another test had set the mode
    enable_token_auth_if_available()
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 4})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    # a run the cluster can never fit is refused at once instead of waiting forever
    too_big = subprocess.run(
        [
            sys.executable,
            "-m",
            "distdrq.cli",
            "launch",
            "--run-dir",
            str(tmp_path / "big"),
            "--address",
            cluster.address,
            "--actors",
            "20",
            "--task",
            "cartpole_swingup",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert too_big.returncode == 1, too_big.stderr[-2000:]
    assert "the cluster has 6 CPUs but this run needs 24" in too_big.stderr
    run_dir = tmp_path / "mn"
    launch = _Launch(run_dir, "--actors", "2", "--shards", "1", "--address", cluster.address)
    try:
        launch.wait_for_line("learner on")
        ray.init(address=cluster.address, namespace="distdrq", log_to_driver=False)
        name = f"distdrq-{run_dir.name}"
        coord = ray.get_actor(f"{name}-coordinator")
        envs = [ray.get_actor(f"{name}-env-{i}") for i in range(2)]
        nodes = set(ray.get([e.node_id.remote() for e in envs], timeout=60))
        assert len(nodes) == 2, "env actors were not spread over both nodes"
        _until(lambda: _snapshot(coord).counters.frames > 200, timeout=180, launch=launch)

        cluster.remove_node(worker)
        after = _snapshot(coord).counters.frames
        # the lost node's actor is restarted on the head node and the run continues
        moved = _until(
            lambda: len(set(ray.get([e.node_id.remote() for e in envs], timeout=30))) == 1,
            timeout=180,
            launch=launch,
        )
        assert moved
        _until(lambda: _snapshot(coord).counters.frames > after + 500, timeout=180, launch=launch)
    finally:
        ray.shutdown()
        launch.stop()
        cluster.shutdown()


@pytest.mark.slow
def test_auth_mode_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a cluster without token auth
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 4})
    try:
        env = dict(os.environ)
        env.pop("RAY_AUTH_MODE")  # distdrq, with a token file, joins in token mode
        token = tmp_path / "token"
        token.write_text("0123456789abcdef" * 4)
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "distdrq.cli",
                "launch",
                "--run-dir",
                str(tmp_path / "x"),
                "--address",
                cluster.address,
                "--metrics-port",
                "0",
                *COMMON[:6],
                "distributed.evaluator=false",
                "--actors",
                "1",
                "--shards",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert result.returncode == 1, result.stderr[-2000:]
        errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "RAY_AUTH_MODE=disabled" in errors[0], result.stderr[-3000:]
    finally:
        cluster.shutdown()
