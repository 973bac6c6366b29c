"""Resident memory (RSS) of each process of a real ``distdrq launch`` (issue 14 item 6).

Starts ``distdrq launch`` on a local Ray instance (default: walker_walk, 2 env actors,
2 shards, the evaluator; DrQ-v2 defaults), samples the RSS of every process below it once a
second for ``--seconds``, names each Ray worker by the class in its process title
(``ray::EnvActor``, ``ray::ReplayServer``, ...), stops the run with SIGINT (it checkpoints) and
prints, per role, the RSS when the process was first seen with its actor's title (its
constructor done: an empty shard, an env actor before its first episode) and the largest seen.
Ray's own processes (GCS, raylet, dashboard, agents) are listed apart. It also times the stop:
seconds from the SIGINT to the launch's exit, the checkpoint written, processes left behind
(issue 14 item 3: with ``--actors 8``).

    MUJOCO_GL=egl python benchmarks/rss.py --seconds 150 --out benchmarks/results/rss.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from distdrq.proctree import alive, descendants

_ROLE = re.compile(r"ray::(?:IDLE|([A-Za-z_]\w*))")


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role_of(cmdline: str) -> str | None:
    """The actor class of a Ray worker (None: not (yet) an actor), or Ray's own process."""
    match = _ROLE.match(cmdline)
    if match:
        if ".__init__" in cmdline:  # its constructor still runs
            return None
        return match.group(1)  # None while IDLE
    if "default_worker.py" in cmdline:  # a worker not yet titled as an actor
        return None
    for name in ("gcs_server", "raylet", "dashboard", "log_monitor", "agent", "monitor"):
        if name in cmdline:
            return f"(ray {name})"
    return "(other)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="walker_walk")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="rss-")) / "run"
    cmd = [sys.executable, "-m", "distdrq.cli", "launch", "--plain", "--task", args.task]
    cmd += ["--actors", str(args.actors), "--run-dir", str(run_dir), "--metrics-port", "0"]
    cmd += args.overrides
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    lines: list[tuple[float, str]] = []  # (when, line) of the launch's output

    def read() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first: dict[int, tuple[str, float]] = {}
    peak: dict[int, float] = {}
    driver = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.seconds and proc.poll() is None:
            driver.append(rss_mb(proc.pid) or 0.0)
            for pid in descendants(proc.pid):
                role = role_of(title(pid))
                mb = rss_mb(pid)
                if role is None or mb is None:
                    continue
                first.setdefault(pid, (role, mb))
                peak[pid] = max(peak.get(pid, 0.0), mb)
            time.sleep(1.0)
    finally:
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_seconds = time.monotonic() - signalled
        reader.join(timeout=10)
        output = "\n".join(line for _, line in lines)
        after_signal = [
            f"+{when - signalled:.1f}s {line}" for when, line in lines if when >= signalled
        ]
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt_*[0-9].pt"))
        deadline = time.monotonic() + 10  # Ray's processes end a moment after the driver
        while any(alive(pid) for pid in first) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [pid for pid in first if alive(pid)]
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    roles: dict[str, dict[str, list[float]]] = {}
    for pid, (role, mb) in first.items():
        entry = roles.setdefault(role, {"first": [], "peak": []})
        entry["first"].append(round(mb))
        entry["peak"].append(round(peak[pid]))
    roles["driver"] = {"first": [round(driver[0])], "peak": [round(max(driver))]}
    last = [line for line in output.splitlines() if "frame" in line][-1:]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(cmd[1:]),
        "seconds": args.seconds,
        "last_line": last[0] if last else "",
        "roles_mb": roles,
        # Ctrl-C (SIGINT) to exit, the checkpoint the run wrote, processes left behind
        "stop_seconds": round(stop_seconds, 1),
        "exit_code": proc.returncode,
        "checkpoints": checkpoints,
        "processes_left": len(left),
        "after_signal": after_signal,
    }
    print(f"{'role':28s} {'first seen MB':>16s} {'largest MB':>16s}")
    for role in sorted(roles):
        r = roles[role]
        print(f"{role:28s} {str(r['first']):>16s} {str(r['peak']):>16s}")
    print(report["last_line"])
    print("\n".join(after_signal))
    print(
        f"SIGINT to exit: {report['stop_seconds']} s (exit code {proc.returncode}), "
        f"checkpoints {checkpoints}, processes left {len(left)}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
