"""``distdrq plot``: learning curves of runs as PNG (eval return against frames and wall-clock)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml

from distdrq.config import ConfigError


def read_eval(run_dir: Path) -> tuple[list[float], list[float], list[float]]:
    """(frames, eval returns, wall-clock hours) of a run's eval.csv."""
    path = run_dir / "eval.csv"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no eval.csv; is it a distdrq run directory?")
    frames, returns, hours = [], [], []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            value = float(row.get("eval_return") or "nan")
            if not math.isfinite(value):
                continue
            frames.append(float(row["frame"]))
            returns.append(value)
            hours.append(float(row.get("wall_time") or 0.0) / 3600.0)
    return frames, returns, hours


def run_task(run_dir: Path) -> str | None:
    """The task of a run, from its config.yaml."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("env", {}).get("task")


def read_reference(
    path: Path, task: str | None, warn: Callable[[str], None] | None = None
) -> dict[str, list[tuple[float, float, float]]]:
    """Reference curves (DrQ-v2's released CSV layout: agent, task, seed, frame, episode_reward,
    hour) as mean over seeds per frame: {agent: [(frame, mean, hour)]}. Only rows of ``task``
    (if given); ``warn`` hears, in one line, of a file that holds other tasks only."""
    if not path.is_file():
        raise ConfigError(f"--reference {path}: no such file")
    per: dict[str, dict[float, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"frame", "episode_reward"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"--reference {path}: missing column(s) {', '.join(sorted(missing))}")
        others = set()
        for row in reader:
            if task and row.get("task") and row["task"] != task:
                others.add(row["task"])
                continue
            agent = row.get("agent") or path.stem
            hour = float(row.get("hour") or "nan")
            per[agent][float(row["frame"])].append((float(row["episode_reward"]), hour))
    if others and not per and warn is not None:
        warn(
            f"--reference {path} holds {', '.join(sorted(others))}, not {task}: "
            "no reference curve plotted"
        )
    out = {}
    for agent, by_frame in per.items():
        out[agent] = [
            (
                frame,
                sum(v for v, _ in vals) / len(vals),
                sum(h for _, h in vals) / len(vals),
            )
            for frame, vals in sorted(by_frame.items())
        ]
    return out


def reference_until(points: list[tuple[float, float, float]], frame: float) -> list:
    """The reference points up to ``frame``, and the next one (so its line reaches the edge)."""
    shown = sum(1 for p in points if p[0] <= frame)
    return points[: shown + 1]


def plot_runs(
    run_dirs: list[Path],
    out: Path,
    reference: Path | None = None,
    warn: Callable[[str], None] | None = None,
    full_reference: bool = False,
) -> Path:
    """Write one PNG with two panels: eval return vs frames and vs wall-clock hours; ``warn``
    hears of a reference that holds none of the runs' task. The reference is drawn up to the
    runs' last frame (and its next point), so that a 40k-frame run is not a sliver beside a
    1M-frame curve, unless ``full_reference``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_frames, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    tasks = set()
    last_frame = 0.0
    for run_dir in run_dirs:
        frames, returns, hours = read_eval(run_dir)
        if not frames:
            raise ConfigError(f"{run_dir}/eval.csv has no evaluation yet; plot after one")
        tasks.add(run_task(run_dir))
        last_frame = max(last_frame, frames[-1])
        by_frames.plot(frames, returns, marker="o", ms=3, label=run_dir.name)
        by_time.plot(hours, returns, marker="o", ms=3, label=run_dir.name)
    if reference is not None:
        task = next(iter(tasks)) if len(tasks) == 1 else None
        for agent, points in read_reference(reference, task, warn).items():
            if not full_reference:
                points = reference_until(points, last_frame)
            xs, ys, hs = zip(*points, strict=True)
            by_frames.plot(xs, ys, "--", color="grey", label=f"{agent} (reference)")
            if all(math.isfinite(h) for h in hs):
                by_time.plot(hs, ys, "--", color="grey", label=f"{agent} (reference)")
    title = ", ".join(sorted(t for t in tasks if t)) or "runs"
    by_frames.set(xlabel="env frames", ylabel="eval return", title=f"{title}: return vs frames")
    by_time.set(xlabel="wall-clock hours", ylabel="eval return", title="return vs wall-clock")
    for ax in (by_frames, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
