"""benchmarks/gpu_suite.py: how a step's outputs become the suite's record, without running one."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_suite  # noqa: E402


def _status(work: Path, name: str, rc: int, limit: int = 40) -> None:
    (work / "status").mkdir(parents=True, exist_ok=True)
    text = f"rc={rc}\nseconds=1234e-3\nlimit={limit}\ncommand=python x.py --a b\n"
    (work / "status" / f"{name}.txt").write_text(text)


def _log(work: Path, name: str, text: str) -> None:
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "logs" / f"{name}.log").write_text(text)


def _memory_raw(work: Path, name: str, peak: int | None) -> None:
    (work / "raw").mkdir(parents=True, exist_ok=True)
    report = dict(
        task="walker_walk", algo="drqv2", encoder="drqv2", precision="bf16", batch_size=256,
        device_name="NVIDIA H200", activation_method="measured", measured_peak_bytes=peak,
        learner_estimate_bytes=3 * 2**20, param_bytes=2**20, optimizer_bytes=2**21,
        activation_bytes=0,
    )  # fmt: skip
    (work / "raw" / f"{name}.json").write_text(json.dumps(report))


def test_timeout_and_failure_are_recorded_and_the_other_steps_kept(tmp_path):
    _status(tmp_path, "memory_drqv2", 0)
    _memory_raw(tmp_path, "memory_drqv2", peak=5 * 2**20)
    _status(tmp_path, "memory_nano", 124, limit=40)  # killed by timeout
    _status(tmp_path, "replay", 1)
    _log(tmp_path, "replay", "Traceback (most recent call last):\nValueError: bad codec 'x'\n")

    ok = gpu_suite.step_record(tmp_path, "memory_drqv2")
    assert ok["status"] == "ok" and ok["error"] is None
    assert ok["metrics"]["peak_gpu_mib"] == 5.0 and ok["seconds"] == 1.2 and ok["limit_s"] == 40
    timed_out = gpu_suite.step_record(tmp_path, "memory_nano")
    assert timed_out["status"] == "error" and timed_out["error"] == "timed out after 40 s"
    failed = gpu_suite.step_record(tmp_path, "replay")
    assert failed["status"] == "error"
    assert failed["error"] == "exit 1: ValueError: bad codec 'x'"
    never = gpu_suite.step_record(tmp_path, "launch")
    assert never["status"] == "error" and "did not run" in never["error"]

    text = gpu_suite.markdown(
        {
            "mode": "gpu", "date": "d", "command": "c", "seconds": 1.0, "work": "w",
            "machine": gpu_suite.machine_info(),
            "steps": {n: gpu_suite.step_record(tmp_path, n) for n in gpu_suite.STEPS},
        }
    )  # fmt: skip
    assert "measured peak 5 MiB" in text
    assert "Error: timed out after 40 s" in text and "Error: exit 1: ValueError" in text


def test_a_step_that_exits_cleanly_without_numbers_is_an_error(tmp_path):
    _status(tmp_path, "replay", 0)
    _log(tmp_path, "replay", "nothing measured\n")
    rec = gpu_suite.step_record(tmp_path, "replay")
    assert rec["status"] == "error" and "no table" in rec["error"]


def test_launch_falls_back_to_the_rates_written_at_the_signal(tmp_path):
    _status(tmp_path, "launch", 124, limit=290)  # stopping outlasted the limit
    (tmp_path / "raw").mkdir()
    partial = {"partial": True, "run_dir": "r", "frames": 5000, "frames_per_second_steady": 90.0}
    (tmp_path / "raw" / "launch.json.partial").write_text(json.dumps(partial))
    rec = gpu_suite.step_record(tmp_path, "launch")
    assert rec["status"] == "partial" and rec["error"] == "timed out after 290 s"
    assert rec["metrics"]["frames_per_second_steady"] == 90.0


def test_replay_tables_are_read_whatever_their_columns():
    text = (
        "machine: vm\n\n| task | codec | batches/s | speed vs raw | bytes/batch |\n"
        "|---|---|---|---|---|\n| walker_walk | lz4d-star32 | 1,066 | 0.58 | 3.2x |\n\nOn disk\n"
        "| task | disk codec | write ms/frame |\n|---|---|---|\n| walker_walk | cm | 1.17 |\n"
    )
    tables = gpu_suite.markdown_tables(text)
    assert tables == [
        [{"task": "walker_walk", "codec": "lz4d-star32", "batches/s": 1066.0,
          "speed vs raw": 0.58, "bytes/batch": 3.2}],
        [{"task": "walker_walk", "disk codec": "cm", "write ms/frame": 1.17}],
    ]  # fmt: skip


def test_sdpg_skip_reason_follows_the_registry(tmp_path, monkeypatch):
    from distdrq.agent import registry

    out = tmp_path / "sdpg.json"
    assert "set SDPG_ITERATION" in gpu_suite.not_built("sdpg", out)["skipped"]  # registered
    monkeypatch.delitem(registry.ALGORITHMS, "sdpg")
    assert "not built" in gpu_suite.not_built("sdpg", out)["skipped"]
