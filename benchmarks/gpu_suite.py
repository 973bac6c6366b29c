"""The helper of ``benchmarks/gpu_suite.sh``: turns its steps' outputs into one JSON and a
RESULTS.md section, and records steps that cannot run yet.

    python benchmarks/gpu_suite.py report --work DIR --mode gpu|dry-run --out FILE.json
        [--command TEXT] [--seconds S] [--append benchmarks/RESULTS.md]
    python benchmarks/gpu_suite.py not-built sdpg --out FILE.json

The JSON (``SCHEMA`` names it) holds ``mode``, ``machine``, ``command``, ``seconds`` and
``steps``: for each step of :data:`STEPS`, ``status`` (``ok``; ``partial``: numbers, but the step
did not end cleanly; ``error``; ``skipped``), ``seconds``, ``limit_s``, ``command``, ``log``,
``metrics`` (name -> number or null, flat), ``details`` (the step's own data), ``error`` and
``skipped`` (a reason, or null).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA = "distdrq.gpu_suite/1"
_MIB = 2**20

# ---- one summary per step: (metrics, details) from its raw output and log


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _mixed_or(label: str) -> str:
    """A learner_update config label as a metric-name prefix."""
    short = {"baseline (drqv2)": "baseline_fp32", "ours fp32": "ours_fp32"}
    if label in short:
        return short[label]
    return "ours_mixed_compiled" if label.endswith("compiled") else "ours_mixed"


def summarize_learner(raw: Path, log: Path) -> tuple[dict, dict]:
    rows = _read_json(raw / "learner_update.json")
    metrics: dict[str, float | None] = {}
    for r in rows:
        key = f"{_mixed_or(r['config'])}_b{r['batch_size']}"
        metrics[f"{key}_updates_per_s"] = r["updates_per_s"]
        metrics[f"{key}_speedup"] = r["speedup"]
        metrics[f"{key}_peak_gpu_mib"] = r["peak_gpu_mib"]
    return metrics, {"rows": rows}


def _memory(name: str) -> Callable[[Path, Path], tuple[dict, dict]]:
    def summarize(raw: Path, log: Path) -> tuple[dict, dict]:
        r = _read_json(raw / f"{name}.json")
        peak = r["measured_peak_bytes"]
        metrics = {
            "peak_gpu_mib": peak / _MIB if peak is not None else None,
            "learner_estimate_mib": r["learner_estimate_bytes"] / _MIB,
            "param_mib": r["param_bytes"] / _MIB,
            "optimizer_mib": r["optimizer_bytes"] / _MIB,
            "activation_mib": r["activation_bytes"] / _MIB,
            "batch_size": r["batch_size"],
        }
        keep = ("task", "algo", "encoder", "precision", "device_name", "activation_method")
        details = {k: r[k] for k in keep}
        if peak is None:
            details["note"] = "no CUDA device: measured peak n/a, the estimate is CPU-side"
        return metrics, details

    return summarize


def _cell(text: str) -> float | str:
    """A table cell as a number where it reads as one ("21,251", "3.0x", "0.58")."""
    bare = text.strip().strip("*").replace(",", "")
    found = re.fullmatch(r"(-?\d+(?:\.\d+)?)x?", bare)
    return float(found.group(1)) if found else text.strip()


def markdown_tables(text: str) -> list[list[dict[str, float | str]]]:
    """Every markdown table in ``text`` as a list of rows keyed by the header."""
    tables: list[list[dict[str, float | str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            header = None
            continue
        cells = [c.strip() for c in line[1:-1].split("|")]
        if header is None:
            header = cells
            tables.append([])
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            tables[-1].append(dict(zip(header, map(_cell, cells), strict=False)))
    return [t for t in tables if t]


def _leading_words(row: dict[str, float | str]) -> list[str]:
    """The text cells before a row's first number: its label ("walker_walk lz4d-star32")."""
    words = []
    for value in row.values():
        if not isinstance(value, str):
            break
        words.append(value)
    return words


def summarize_replay(raw: Path, log: Path) -> tuple[dict, dict]:
    tables = markdown_tables(log.read_text())
    if not tables:
        raise ValueError("benchmarks/replay.py printed no table")
    metrics: dict[str, float | None] = {}
    for table in tables:
        for row in table:
            label = " ".join(_leading_words(row))
            for column, value in row.items():
                if isinstance(value, float):
                    metrics[f"{label} | {column}"] = value
    return metrics, {"tables": tables}


_LAUNCH_METRICS = (
    "actors", "shards", "batch_size", "frames", "updates", "elapsed_seconds", "budget_seconds",
    "stop_seconds", "frames_per_second_steady", "frames_per_second_overall",
    "updates_per_second_steady", "updates_per_second_overall", "samples_per_insert",
    "measured_samples_per_insert", "last_eval_return",
)  # fmt: skip


def summarize_launch(raw: Path, log: Path) -> tuple[dict, dict]:
    path = raw / "launch.json"
    if not path.exists():  # stopping outlasted the limit: the rates measured until the signal
        partial = _read_json(raw / "launch.json.partial")
        metrics = {k: partial.get(k) for k in _LAUNCH_METRICS if k in partial}
        return metrics, {"partial": True, "run_dir": partial.get("run_dir")}
    res = _read_json(path)
    run = res["runs"][0]
    metrics = {k: run.get(k) for k in _LAUNCH_METRICS}
    details = {k: run.get(k) for k in ("run_dir", "reason", "restarts", "evals")}
    details |= {k: res.get(k) for k in ("task", "gpu", "cores", "load_before", "load_after")}
    return metrics, details


def summarize_sdpg(raw: Path, log: Path) -> tuple[dict, dict]:
    r = _read_json(raw / "sdpg.json")
    if "skipped" in r:
        return {}, r
    metrics = {"iteration_seconds": r["iteration_seconds"]}
    metrics |= {f"{phase}_seconds": s for phase, s in r["phases"].items()}
    return metrics, r


STEPS: dict[str, tuple[str, Callable[[Path, Path], tuple[dict, dict]]]] = {
    "learner_update": ("learner updates/s", summarize_learner),
    "memory_drqv2": ("peak GPU memory, DrQ-v2", _memory("memory_drqv2")),
    "memory_nano": ("peak GPU memory, nano profile", _memory("memory_nano")),
    "replay": ("replay sampling", summarize_replay),
    "sdpg": ("SDPG iteration time split", summarize_sdpg),
    "launch": ("distdrq launch", summarize_launch),
}

# ---- step records


def read_status(path: Path) -> dict[str, Any] | None:
    """run_step's record of a step (exit status, seconds, limit, command), or None."""
    if not path.exists():
        return None
    fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {
        "rc": int(fields["rc"]),
        "seconds": round(float(fields["seconds"]), 1),
        "limit_s": int(fields["limit"]),
        "command": fields["command"],
    }


def _log_tail(log: Path) -> str:
    """The last meaningful line of a step's log (an exception's message, usually)."""
    if not log.exists():
        return "no log"
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "empty log"


def _has_number(metrics: dict[str, Any]) -> bool:
    return any(isinstance(v, int | float) and math.isfinite(v) for v in metrics.values())


def step_record(work: Path, name: str) -> dict[str, Any]:
    """One step's entry of the suite's JSON."""
    log = work / "logs" / f"{name}.log"
    status = read_status(work / "status" / f"{name}.txt")
    rec: dict[str, Any] = {"title": STEPS[name][0], "status": "error", "log": str(log)}
    rec |= {"metrics": {}, "details": {}, "error": None, "skipped": None}
    if status is None:
        return rec | {"error": "did not run (no status recorded)"}
    rec |= {k: status[k] for k in ("seconds", "limit_s", "command")}
    try:
        rec["metrics"], rec["details"] = STEPS[name][1](work / "raw", log)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        rec["error"] = f"no result ({type(exc).__name__}: {exc})"
    rc = status["rc"]
    if rc in (124, 137):
        rec["error"] = f"timed out after {status['limit_s']} s"
    elif rc != 0:
        rec["error"] = f"exit {rc}: {_log_tail(log)}"
    if rec["details"].get("skipped"):
        rec |= {"status": "skipped", "skipped": rec["details"]["skipped"]}
    elif _has_number(rec["metrics"]):
        rec["status"] = "partial" if rec["error"] or rec["details"].get("partial") else "ok"
    elif rec["error"] is None:
        rec["error"] = "the step produced no numbers"
    return rec


# ---- machine


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "gpu": _nvidia_smi(),
        "torch_gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def build_report(work: Path, mode: str, command: str, seconds: float | None) -> dict[str, Any]:
    """The suite's JSON: every step of :data:`STEPS`, in order."""
    return {
        "schema": SCHEMA,
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command,
        "seconds": seconds,
        "work": str(work),
        "machine": machine_info(),
        "steps": {name: step_record(work, name) for name in STEPS},
    }


# ---- the RESULTS.md section


def _num(x: Any, digits: int = 1) -> str:
    if not isinstance(x, int | float) or not math.isfinite(x):
        return "n/a"
    return f"{x:,.{digits}f}"


def _md_learner(rec: dict) -> list[str]:
    lines = ["| config | batch | updates/s | vs baseline | peak GPU MiB |", "|---|---|---|---|---|"]
    for r in rec["details"].get("rows", []):
        lines.append(
            f"| {r['config']} | {r['batch_size']} | {_num(r['updates_per_s'], 2)} | "
            f"{_num(r['speedup'], 2)}x | {_num(r['peak_gpu_mib'], 0)} |"
        )
    return lines


def _md_memory(rec: dict) -> list[str]:
    m, d = rec["metrics"], rec["details"]
    return [
        f"{d.get('task')}, {d.get('algo')} ({d.get('encoder')} encoder), batch "
        f"{_num(m.get('batch_size'), 0)}, {d.get('precision')} on {d.get('device_name')}: "
        f"measured peak {_num(m.get('peak_gpu_mib'), 0)} MiB; parameters "
        f"{_num(m.get('param_mib'))} MiB, optimizer {_num(m.get('optimizer_mib'))} MiB, "
        f"activations {_num(m.get('activation_mib'))} MiB, learner total "
        f"{_num(m.get('learner_estimate_mib'))} MiB" + (f" ({d['note']})" if "note" in d else "")
    ]


def _md_table(rows: list[dict]) -> list[str]:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = (_num(v, 2) if isinstance(v, float) else str(v) for v in row.values())
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_replay(rec: dict) -> list[str]:
    lines: list[str] = []
    for table in rec["details"].get("tables", []):
        lines += [*_md_table(table), ""]
    return lines[:-1]


def _md_launch(rec: dict) -> list[str]:
    m = rec["metrics"]
    return [
        "| actors | shards | batch | frames/s steady | frames/s overall | updates/s steady "
        "| updates/s overall | samples/insert (configured, measured) | frames | stop s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {_num(m.get('actors'), 0)} | {_num(m.get('shards'), 0)} "
        f"| {_num(m.get('batch_size'), 0)} | {_num(m.get('frames_per_second_steady'))} "
        f"| {_num(m.get('frames_per_second_overall'))} "
        f"| {_num(m.get('updates_per_second_steady'))} "
        f"| {_num(m.get('updates_per_second_overall'))} "
        f"| {_num(m.get('samples_per_insert'))}, {_num(m.get('measured_samples_per_insert'))} "
        f"| {_num(m.get('frames'), 0)} | {_num(m.get('stop_seconds'))} |",
    ]


def _md_sdpg(rec: dict) -> list[str]:
    return [", ".join(f"{k} {_num(v, 3)}" for k, v in rec["metrics"].items())]


_MD: dict[str, Callable[[dict], list[str]]] = {
    "learner_update": _md_learner,
    "memory_drqv2": _md_memory,
    "memory_nano": _md_memory,
    "replay": _md_replay,
    "sdpg": _md_sdpg,
    "launch": _md_launch,
}


def _md_machine(report: dict) -> str:
    m = report["machine"]
    gpu = m["gpu"] or m["torch_gpu"] or "no GPU"
    return (
        f"- Machine: {gpu}; {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM; "
        f"torch {m['torch']}, CUDA {m['cuda']}; load average at the end {m['load_average']}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The RESULTS.md section of a suite run."""
    dry = report["mode"] == "dry-run"
    lines = [
        f"## gpu_suite{' (DRY RUN)' if dry else ''}: {report['date']}",
        "",
        _md_machine(report),
        f"- Command: `{report['command']}` ({_num(report['seconds'], 0)} s); "
        f"logs and raw outputs: {report['work']}",
    ]
    if dry:
        lines.append(
            "- Dry run: every step at tiny sizes on the CPU, the launch overlapping the others; "
            "these figures measure nothing"
        )
    for name, rec in report["steps"].items():
        lines += [
            "",
            f"### {rec['title']} (`{name}`: {rec['status']}, {_num(rec.get('seconds'))} s)",
            "",
        ]
        if rec["status"] == "skipped":
            lines.append(f"Skipped: {rec['skipped']}")
            continue
        if rec["error"]:
            lines.append(f"Error: {rec['error']} (log: {rec['log']})")
        if rec["status"] in ("ok", "partial"):
            lines += ["", *_MD[name](rec)] if rec["error"] else _MD[name](rec)
    return "\n".join(lines) + "\n"


# ---- command line


def not_built(step: str, out: Path) -> dict[str, str]:
    """Record why ``step`` cannot run yet (SDPG: is the algorithm registered at all?)."""
    from distdrq.agent.registry import ALGORITHMS

    if step in ALGORITHMS:
        reason = (
            f"{step} is registered (agent.algo={step}) but its iteration benchmark is not wired: "
            "set SDPG_ITERATION in benchmarks/gpu_suite.sh"
        )
    else:
        reason = (
            f"not built: distdrq has no {step.upper()} (agent.algo choices: "
            f"{', '.join(ALGORITHMS)})"
        )
    record = {"skipped": reason}
    out.write_text(json.dumps(record))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="the suite's JSON and RESULTS.md section")
    rep.add_argument("--work", type=Path, required=True, help="gpu_suite.sh's work directory")
    rep.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
    rep.add_argument("--out", type=Path, required=True, help="the JSON; the section: .md beside")
    rep.add_argument("--command", default="benchmarks/gpu_suite.sh", help="as run")
    rep.add_argument("--seconds", type=float, default=None, help="the suite's wall-clock time")
    rep.add_argument("--append", type=Path, help="also append the section to this file")
    nb = sub.add_parser("not-built", help="record a step that cannot run yet")
    nb.add_argument("step", choices=("sdpg",))
    nb.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "not-built":
        print(not_built(args.step, args.out)["skipped"])
        return 0
    report = build_report(args.work, args.mode, args.command, args.seconds)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    section = markdown(report)
    args.out.with_suffix(".md").write_text(section)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + section)
    print(section)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if args.append:
        print(f"appended the section to {args.append}")
    failed = [n for n, r in report["steps"].items() if r["status"] not in ("ok", "skipped")]
    if failed:
        print(f"steps not ok: {', '.join(failed)} (see their errors above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
