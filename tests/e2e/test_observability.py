"""A real Prometheus server scrapes a live `distdrq launch`; `distdrq status` shows the run; a
second Ctrl-C ends it at once and leaves no process behind. The launch trains the SAC-based DrQ
with the nano encoder (DrQ-v2's launches are in test_cli_launch.py): its learner updates,
publishes weights and checkpoints inside Ray like DrQ-v2's."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from distdrq.proctree import descendants

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli_launch import _gone, _latest  # noqa: E402

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success"
    return body["data"]["result"]


def _value(port: int, expr: str) -> float | None:
    try:
        result = _query(port, expr)
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None


def _wait(predicate, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus")
def test_prometheus_scrapes_a_live_launch_and_status_shows_it(tmp_path):
    metrics_port, prom_port = _free_port(), _free_port()
    config = yaml.safe_load((ROOT / "deploy" / "prometheus-local.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "distdrq")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "obs"
    launch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distdrq.cli",
            "launch",
            "--run-dir",
            str(run_dir),
            "--plain",
            "--task",
            "point_reach",
            "--frames",
            "10000000",
            "--actors",
            "2",
            "--shards",
            "2",
            "--metrics-port",
            str(metrics_port),
            "env.image_size=32",
            "agent.algo=drq",
            "agent.encoder=nano",
            "agent.hidden_dim=32",
            "agent.feature_dim=16",
            "agent.batch_size=32",
            "agent.device=cpu",
            "train.seed_frames=200",
            "train.eval_every_frames=2000",
            "train.eval_episodes=1",
            "train.checkpoint_every_frames=1000",
            "distributed.samples_per_insert=16",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lines = []
        for line in launch.stdout:
            lines.append(line)
            if "learner on" in line:
                break
        assert any(f":{metrics_port}/metrics" in x for x in lines), "".join(lines)
        assert any(x.startswith("Ray dashboard: http://127.0.0.1:") for x in lines)
        address = next(x for x in lines if x.startswith("Ray cluster at ")).split()[3]

        first = _wait(lambda: _value(prom_port, "distdrq_env_frames_total"))
        _wait(lambda: (v := _value(prom_port, "distdrq_env_frames_total")) and v > first)
        _wait(lambda: _value(prom_port, "distdrq_learner_updates_total"))
        for expr in (
            "distdrq_replay_transitions",
            "distdrq_replay_compression_ratio",
            "distdrq_rate_limiter_samples_per_insert",
            "distdrq_replay_sample_latency_seconds_count",
            "distdrq_weight_version",
            "distdrq_train_return",
        ):
            assert _wait(lambda e=expr: _query(prom_port, e)), expr
        shards = _query(prom_port, "distdrq_replay_transitions")
        assert {r["metric"]["shard"] for r in shards} == {"0", "1"}
        assert all(r["metric"]["run"] == "distdrq-obs" for r in shards)

        status = subprocess.run(
            [sys.executable, "-m", "distdrq.cli", "status", "--address", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr[-2000:]
        row = next(x for x in status.stdout.splitlines() if x.startswith("distdrq-obs"))
        assert "2/2" in row and "running" in row

        # DrQ's learner checkpoints from inside Ray: trained and published weights
        _wait(lambda: list((run_dir / "checkpoints").glob("ckpt_*[0-9].pt")))
        state = _latest(run_dir)
        assert state["counters"]["updates"] > 0 and state["learner"]["version"] > 0

        # a second Ctrl-C while the first one's stop is under way ends the launch at once, and
        # Ray's GCS, raylet, dashboard, agents and workers with it: not 40-100 s later
        tree = descendants(launch.pid)
        assert len(tree) >= 5, "Ray's processes not seen"
        launch.send_signal(signal.SIGINT)
        for line in launch.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "interrupted" in line:
                break
        launch.send_signal(signal.SIGINT)
        out, _ = launch.communicate(timeout=30)
        assert launch.returncode == 130, "".join(lines) + out
        _gone(tree, 10)
    finally:
        prom.terminate()
        prom.wait(30)
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            launch.communicate(timeout=300)
