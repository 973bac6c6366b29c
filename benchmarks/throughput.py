"""Env frames per second of the Ray runtime: plumbing overhead on CPU, end-to-end on a GPU box.

``--mode plumbing`` (any machine): on one task (default walker_walk, 84x84, default rendering;
``--fast-render`` turns shadows and reflections off) measures

1. the bare env loop in this process, one thread, for ``--bare-seconds`` each: env only (random
   actions), env + the actor's per-step policy forward pass (``distdrq.agent.Policy`` on CPU),
   env + policy + the actor's chunk encoding (``EpisodeWriter`` with ``replay.codec``), and
   ``min(actors, cores)`` such env + policy loops in parallel processes;
2. the distributed system (``connect``, ``build_topology``, ``Supervisor.start``) with
   ``--actors`` env actors (default 1,2,4,8) and ``--shards`` replay shards, no rate limit
   (``distributed.samples_per_insert=0``), no evaluator, and an idle learner
   (``train.seed_frames`` so large that replay never becomes sampleable, so the learner only
   waits on sample requests and publishes no new weights); env frames/s is the delta of the
   coordinator's frame counter over a ``--window`` s window that starts ``--warmup`` s after
   the loops start and at least ``--settle`` s after every actor reported its first chunk.
   CPU seconds per role over the window are read from /proc (this benchmark's Ray processes
   and everything else on the machine, e.g. other test suites). Ray is shut down between
   configurations.

Per-core efficiency = distributed frames/s / (min(actors, cores) x bare env+policy frames/s).

``--mode end-to-end`` (a GPU machine, e.g. 16 cores + 1 GPU): ``distdrq launch`` in-process on
walker_walk with the preset's DrQ-v2 settings and replay ratio (``--samples-per-insert``), learner
on ``--device`` (cuda), for each of ``--e2e-actors`` (default 8,14), stopped by SIGINT after
``--minutes`` of wall-clock (Ray start included) unless the frame budget ends it first.
Reports frames/s (overall and steady state), updates/s, the measured samples per insert, the
eval returns (run_dir/eval.csv) and the wall-clock time to an eval return above ``--target``.
Anchor: official single-process DrQ-v2 at ~96 frames/s on a V100.

    python benchmarks/throughput.py --mode plumbing [--actors 1,2,4,8] [--window 30] [--out f.json]
    python benchmarks/throughput.py --mode end-to-end --device cuda [--minutes 15] [--out f.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from distdrq.config import Config, load_config  # noqa: E402

ANCHOR_FPS = 96.0
"""official single-process DrQ-v2 on a V100 (69 to 111 frames/s in its own logs)"""

# ---------------------------------------------------------------------------------------------
# /proc accounting (no psutil here)

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, title, cpu seconds) for every readable process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        ppid = int(rest[1])
        cpu = (int(rest[11]) + int(rest[12])) / _TICK
        title = cmd or stat[stat.find("(") + 1 : stat.rfind(")")]
        table[int(entry)] = (ppid, title, cpu)
    return table


def _role_of(title: str) -> str:
    for prefix, role in (
        ("ray::EnvActor", "env actors"),
        ("ray::ReplayServer", "replay shards"),
        ("ray::Learner", "learner"),
        ("ray::Coordinator", "coordinator"),
        ("ray::", "other ray workers"),
    ):
        if title.startswith(prefix):
            return role
    if "ray" not in title.lower():
        return "benchmark driver"  # e.g. the bare loops' spawned processes
    return "ray system (raylet, gcs, dashboard, ...)"


def _self_and_descendants(table: dict) -> set[int]:
    """This process and every process below it in ``table`` (pid -> (ppid, title, cpu))."""
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in table.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return mine


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far: this process, its descendants by role, and everything else."""
    table = _proc_table()
    me = os.getpid()
    mine = _self_and_descendants(table)
    out: dict[str, float] = {}
    for pid, (_, title, cpu) in table.items():
        if pid == me:
            role = "benchmark driver"
        elif pid in mine:
            role = _role_of(title)
        else:
            role = "not this benchmark"
        out[role] = out.get(role, 0.0) + cpu
    return out


def system_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def ray_descendants_alive() -> int:
    """Ray processes (raylet, gcs, workers, dashboard) started by this process still alive."""
    table = _proc_table()
    mine = _self_and_descendants(table)
    return sum(1 for pid in mine - {os.getpid()} if "ray" in table[pid][1].lower())


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# bare loop


def bare_frames_per_second(
    cfg: Config, seconds: float, policy: bool, encode: bool, seed: int = 0, warmup: float = 2.0
) -> dict[str, float]:
    """Env frames/s (agent steps x action repeat) of one single-threaded process."""
    import torch

    from distdrq.agent import Policy
    from distdrq.envs import make_env
    from distdrq.replay import EpisodeWriter

    torch.set_num_threads(1)
    env = make_env(cfg.env, seed)
    rng = np.random.default_rng(seed)
    actor = Policy(env.obs_shape, env.action_dim, cfg.agent) if policy else None
    writer = (
        EpisodeWriter(0, chunk_length=cfg.distributed.chunk_length, codec=cfg.replay.codec)
        if encode
        else None
    )
    repeat = cfg.env.action_repeat

    def run(duration: float, min_steps: int = 0) -> tuple[int, float]:
        steps = 0
        ts = env.reset()
        if writer is not None:
            writer.flush()  # the warm-up's unfinished episode
            writer.begin(ts.frame)
        start = time.perf_counter()
        while True:
            if actor is not None:
                action = actor.act(ts.observation, steps, eval_mode=False)
            else:
                action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
            ts = env.step(action)
            steps += 1
            if writer is not None:
                writer.append(action, ts.reward, ts.discount, ts.frame, ts.last, 0)
            if ts.last:
                ts = env.reset()
                if writer is not None:
                    writer.begin(ts.frame)
            elapsed = time.perf_counter() - start
            if elapsed >= duration and steps >= min_steps:
                return steps * repeat, elapsed

    run(warmup, min_steps=3 * cfg.distributed.chunk_length)  # jit-compiles the codec
    cpu0 = time.process_time()
    frames, elapsed = run(seconds)
    cpu = time.process_time() - cpu0
    env.close()
    return {"frames_per_second": frames / elapsed, "seconds": elapsed, "cpu_seconds": cpu}


def _bare_worker(cfg: Config, seconds: float, seed: int) -> dict[str, float]:
    return bare_frames_per_second(cfg, seconds, policy=True, encode=False, seed=seed)


def bare_parallel(cfg: Config, processes: int, seconds: float) -> dict[str, float]:
    """``processes`` env + policy loops at once (spawned processes); summed frames/s."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.starmap(_bare_worker, [(cfg, seconds, i) for i in range(processes)])
    return {
        "processes": processes,
        "frames_per_second": sum(r["frames_per_second"] for r in results),
        "per_process": [r["frames_per_second"] for r in results],
    }


# ---------------------------------------------------------------------------------------------
# distributed plumbing


class _Quiet:
    """The slice of ProgressDisplay the supervisor uses, printing only messages."""

    def message(self, text: str) -> None:
        print(f"    [driver] {text}", flush=True)


def _start_local_ray(cfg: Config) -> dict[str, float]:
    """``launch.connect``'s local branch, but always a fresh instance (``address="local"``).

    ``connect(cfg, None)`` calls ``ray.init(num_cpus=...)`` without an address, which joins a
    Ray cluster already running on this machine (``/tmp/ray/ray_current_cluster``, e.g. one a
    test suite started) and then fails with "num_cpus and num_gpus must not be provided".
    """
    import math

    import ray

    from distdrq.distributed.cluster import NAMESPACE, required_cpus

    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(required_cpus(cfg))),
        namespace=NAMESPACE,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": {"MUJOCO_GL": os.environ.get("MUJOCO_GL", cfg.env.gl_backend)}},
        log_to_driver=False,
        configure_logging=False,
    )
    return ray.cluster_resources()


def distributed_frames_per_second(
    base: Config, actors: int, shards: int, warmup: float, settle: float, window: float
) -> dict[str, Any]:
    """Frames/s of the Ray runtime (no rate limit, idle learner, no evaluator)."""
    import ray

    from distdrq.distributed.supervisor import Supervisor
    from distdrq.distributed.topology import RunStart, build_topology

    cfg = load_config(
        base.env.task,
        overrides=[
            f"env.fast_render={str(base.env.fast_render).lower()}",
            f"distributed.actors={actors}",
            f"distributed.shards={shards}",
            "distributed.samples_per_insert=0",
            "distributed.evaluator=false",
            "distributed.learner_gpus=0",
            "agent.device=cpu",
            "train.frames=1000000000000",
            "train.seed_frames=2000000000",  # replay never sampleable: the learner idles
        ],
    )
    name = f"bench-a{actors}-{os.getpid()}"
    result: dict[str, Any] = {"actors": actors, "shards": shards}
    with tempfile.TemporaryDirectory(prefix="distdrq-bench-") as tmp:
        run_dir = Path(tmp)
        t_connect = time.monotonic()
        resources = _start_local_ray(cfg)
        try:
            topo = build_topology(cfg, name, run_dir, resources, RunStart())
            driver = Supervisor(cfg, run_dir, name, topo, _Quiet().message)
            driver.start()
            t0 = time.monotonic()
            result["startup_seconds"] = round(t0 - t_connect, 1)
            all_reported_at = None
            start = end = None
            cpu_start = busy_start = None
            failures: list[str] = []
            roles = [f"env-{i}" for i in range(actors)]
            samples: list[tuple[float, int]] = []  # (time, frames) inside the window
            while True:
                done, _ = ray.wait(list(driver.loops), num_returns=1, timeout=0.1)
                for ref in done:
                    role, _ = driver.loops.pop(ref)
                    try:
                        ray.get(ref)
                        failures.append(f"{role} returned early")
                    except ray.exceptions.RayError as exc:
                        failures.append(f"{role}: {str(exc).strip().splitlines()[0][:200]}")
                if failures:
                    raise RuntimeError("; ".join(failures))
                snap = ray.get(topo.coordinator.snapshot.remote())
                now = time.monotonic()
                t = now - t0
                per_role = {r: snap.role(r).frames for r in roles}
                if all_reported_at is None and all(v > 0 for v in per_role.values()):
                    all_reported_at = t
                    result["first_chunk_all_actors_seconds"] = round(t, 1)
                if start is None:
                    if all_reported_at is not None and t >= max(warmup, all_reported_at + settle):
                        start = (now, snap.counters.frames, per_role)
                        cpu_start, busy_start = cpu_by_role(), system_busy_seconds()
                        samples.append((now, snap.counters.frames))
                else:
                    samples.append((now, snap.counters.frames))
                if start is not None and now - start[0] >= window:
                    end = (now, snap.counters.frames, per_role)
                    cpu_end, busy_end = cpu_by_role(), system_busy_seconds()
                    break
                if t > warmup + 180 and start is None:
                    raise RuntimeError(f"actors did not all report within {t:.0f} s")
                time.sleep(0.15)
            seconds = end[0] - start[0]
            result["window_start_seconds"] = round(start[0] - t0, 1)
            result["window_seconds"] = round(seconds, 2)
            result["frames"] = end[1] - start[1]
            # counters move one chunk per actor at a time: the least-squares slope over the
            # ~4 Hz samples is less sensitive to where the window's ends fall than the delta
            times = np.array([x[0] for x in samples])
            counts = np.array([x[1] for x in samples], dtype=np.float64)
            result["frames_per_second_delta"] = (end[1] - start[1]) / seconds
            result["frames_per_second"] = float(np.polyfit(times - times[0], counts, 1)[0])
            result["samples_in_window"] = len(samples)
            result["per_actor_frames_per_second"] = [
                (end[2][r] - start[2][r]) / seconds for r in roles
            ]
            result["cpu_cores_busy"] = {
                k: round((cpu_end.get(k, 0.0) - cpu_start.get(k, 0.0)) / seconds, 3)
                for k in sorted(set(cpu_end) | set(cpu_start))
            }
            result["machine_cores_busy"] = round((busy_end - busy_start) / seconds, 3)
            result["load_after_window"] = loadavg()
            # stop: the loops return once the coordinator says so
            ray.get(topo.coordinator.stop.remote())
            for ref in list(driver.loops):
                with contextlib.suppress(ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                    ray.get(ref, timeout=30)
        finally:
            ray.shutdown()
    for _ in range(40):  # every Ray process of this configuration must be gone
        if ray_descendants_alive() == 0:
            break
        time.sleep(0.5)
    result["leftover_ray_processes"] = ray_descendants_alive()
    return result


@contextlib.contextmanager
def _other_load() -> Any:
    """Cores kept busy by processes that are not this benchmark's, while the block runs."""
    found: dict[str, float] = {}
    t0, before = time.monotonic(), cpu_by_role().get("not this benchmark", 0.0)
    yield found
    after = cpu_by_role().get("not this benchmark", 0.0)
    found["cores"] = round((after - before) / (time.monotonic() - t0), 3)


def plumbing(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.task, overrides=[f"env.fast_render={str(args.fast_render).lower()}"])
    cores = os.cpu_count() or 1
    actor_counts = [int(x) for x in args.actors.split(",")]
    out: dict[str, Any] = {"mode": "plumbing", "cores": cores, "bare": {}, "distributed": []}
    out["load_before"] = loadavg()
    print(f"load average before: {out['load_before']}", flush=True)

    for label, policy, encode in (
        ("env", False, False),
        ("env+policy", True, False),
        ("env+policy+encode", True, True),
    ):
        with _other_load() as other:
            r = bare_frames_per_second(cfg, args.bare_seconds, policy=policy, encode=encode)
        r["other_cores_busy"] = other["cores"]
        out["bare"][label] = r
        print(f"bare {label:>18}: {r['frames_per_second']:7.1f} frames/s", flush=True)
    parallel = sorted({min(a, cores) for a in actor_counts} - {1})
    out["bare_parallel"] = {}
    for k in parallel:
        with _other_load() as other:
            r = bare_parallel(cfg, k, args.bare_seconds)
        r["other_cores_busy"] = other["cores"]
        out["bare_parallel"][str(k)] = r
        print(f"bare env+policy x{k} processes: {r['frames_per_second']:7.1f} frames/s", flush=True)

    per_core = out["bare"]["env+policy"]["frames_per_second"]
    for actors in actor_counts:
        print(f"distributed: {actors} actors, {args.shards} shards ...", flush=True)
        try:
            r = distributed_frames_per_second(
                cfg, actors, args.shards, args.warmup, args.settle, args.window
            )
        except Exception as exc:  # one broken configuration must not lose the others
            r = {"actors": actors, "shards": args.shards, "error": f"{type(exc).__name__}: {exc}"}
            print(f"    failed: {r['error']}", flush=True)
            out["distributed"].append(r)
            continue
        used = min(actors, cores)
        r["per_core_efficiency"] = r["frames_per_second"] / (used * per_core)
        par = out["bare_parallel"].get(str(used))
        bare_same_cores = par["frames_per_second"] if par else per_core
        r["efficiency_vs_parallel_bare"] = r["frames_per_second"] / bare_same_cores
        # per CPU-second: robust to other processes taking cores away from both measurements
        bare = out["bare"]["env+policy"]
        bare_per_cpu_second = bare["frames_per_second"] * bare["seconds"] / bare["cpu_seconds"]
        busy = r["cpu_cores_busy"]
        ours = sum(v for k, v in busy.items() if k != "not this benchmark")
        r["efficiency_per_actor_cpu_second"] = (
            r["frames_per_second"] / max(busy.get("env actors", 0.0), 1e-9) / bare_per_cpu_second
        )
        r["efficiency_per_cpu_second_all"] = r["frames_per_second"] / ours / bare_per_cpu_second
        out["distributed"].append(r)
        print(
            f"    {r['frames_per_second']:.1f} frames/s, efficiency {r['per_core_efficiency']:.2f}"
            f", busy cores {r['cpu_cores_busy']}, machine {r['machine_cores_busy']}",
            flush=True,
        )
    out["load_after"] = loadavg()
    return out


def plumbing_markdown(res: dict[str, Any]) -> str:
    cores = res["cores"]
    bare = res["bare"]
    per_core = bare["env+policy"]["frames_per_second"]
    lines = [
        "| bare loop (1 thread per process) | frames/s | other processes, cores busy |",
        "|---|---|---|",
    ]
    for label, r in bare.items():
        lines.append(f"| {label} | {r['frames_per_second']:.1f} | {r['other_cores_busy']:.2f} |")
    for k, r in res.get("bare_parallel", {}).items():
        each = ", ".join(f"{x:.1f}" for x in r["per_process"])
        lines.append(
            f"| env+policy x {k} processes at once | {r['frames_per_second']:.1f} ({each}) | "
            f"{r['other_cores_busy']:.2f} |"
        )
    lines += [
        "",
        "| actors | frames/s | frames/s per actor | per-core efficiency | vs bare x min(actors, "
        "cores) in parallel | per actor CPU-s | per CPU-s, all distdrq + Ray | cores | env actors "
        "/ shards / learner / ray + driver / other processes, cores busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["distributed"]:
        if "error" in r:
            lines.append(f"| {r['actors']} | failed: {r['error']} | | | | {cores} | |")
            continue
        busy = r["cpu_cores_busy"]
        ray_sys = sum(
            v
            for k, v in busy.items()
            if k.startswith("ray system") or k in ("coordinator", "other ray workers")
        )
        usage = " / ".join(
            f"{x:.2f}"
            for x in (
                busy.get("env actors", 0.0),
                busy.get("replay shards", 0.0),
                busy.get("learner", 0.0),
                ray_sys + busy.get("benchmark driver", 0.0),
                busy.get("not this benchmark", 0.0),
            )
        )
        lines.append(
            f"| {r['actors']} | {r['frames_per_second']:.1f} | "
            f"{r['frames_per_second'] / r['actors']:.1f} | {r['per_core_efficiency']:.2f} | "
            f"{r['efficiency_vs_parallel_bare']:.2f} | {r['efficiency_per_actor_cpu_second']:.2f} | "
            f"{r['efficiency_per_cpu_second_all']:.2f} | {cores} | {usage} |"
        )
    lines.append("")
    lines.append(
        f"per-core efficiency = frames/s / (min(actors, {cores}) x {per_core:.1f}), the bare "
        "env+policy frames/s of one process; target >= 0.90. Per CPU-s: frames per CPU-second "
        "of the env actors (or of every process of the run) / the bare loop's frames per "
        "CPU-second."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# end to end (GPU machine)


def _recording_progress(title: str, total: int) -> Any:
    from distdrq.progress import ProgressDisplay

    class Recording(ProgressDisplay):
        """Plain progress lines, plus every update and eval message with its time."""

        def __init__(self) -> None:
            super().__init__(title, total, interval=30.0, live=False)
            self.t0 = time.monotonic()
            self.points: list[tuple[float, int, int]] = []
            self.evals: list[tuple[float, int, float]] = []

        def update(self, frames: int, updates: int, **fields: Any) -> None:
            self.points.append((time.monotonic() - self.t0, int(frames), int(updates)))
            super().update(frames, updates, **fields)

        def message(self, text: str) -> None:
            found = re.match(r"eval at frame ([\d,]+): return (-?[\d.]+|nan)", text)
            if found:
                frame = int(found.group(1).replace(",", ""))
                self.evals.append((time.monotonic() - self.t0, frame, float(found.group(2))))
            super().message(text)

    return Recording()


def _rate(points: list[tuple[float, int, int]], index: int, since: float) -> float | None:
    use = [(p[0], p[index]) for p in points if p[0] >= since]
    if len(use) < 2 or use[-1][0] <= use[0][0]:
        return None
    t = np.array([u[0] for u in use])
    y = np.array([u[1] for u in use], dtype=np.float64)
    return float(np.polyfit(t, y, 1)[0])


def _rates_so_far(points: list[tuple[float, int, int]], elapsed: float) -> dict[str, Any]:
    """Frames and updates so far and their rates (the second half of the points: steady)."""
    since = (points[-1][0] / 2) if points else 0.0
    frames, updates = (points[-1][1], points[-1][2]) if points else (0, 0)
    return {
        "elapsed_seconds": round(elapsed, 1),
        "frames": frames,
        "updates": updates,
        "frames_per_second_overall": frames / elapsed,
        "updates_per_second_overall": updates / elapsed,
        "frames_per_second_steady": _rate(points, 1, since),
        "updates_per_second_steady": _rate(points, 2, since),
    }


def end_to_end_one(args: argparse.Namespace, actors: int) -> dict[str, Any]:
    from distdrq.distributed.launch import launch

    overrides = [
        f"distributed.actors={actors}",
        f"distributed.shards={args.shards}",
        f"agent.device={args.device}",
        *args.overrides,
    ]
    if args.samples_per_insert is not None:
        overrides.append(f"distributed.samples_per_insert={args.samples_per_insert}")
    if args.frames:
        overrides.append(f"train.frames={args.frames}")
    if args.fast_render:
        overrides.append("env.fast_render=true")
    cfg = load_config(args.task, overrides=overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_root) / f"{cfg.env.task}-a{actors}-{stamp}"
    progress = _recording_progress(f"{cfg.env.task} x{actors}", cfg.train.frames)
    budget = args.minutes * 60.0

    def at_budget() -> None:  # the rates so far, in case stopping outlasts a caller's timeout
        if args.out:
            partial = {"partial": True, "actors": actors, "run_dir": str(run_dir)}
            partial |= _rates_so_far(progress.points, time.monotonic() - t0)
            Path(args.out + ".partial").write_text(json.dumps(partial, indent=1))
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(budget, at_budget)
    timer.daemon = True
    print(f"end-to-end: {actors} actors, run dir {run_dir}, budget {args.minutes} min", flush=True)
    t0 = time.monotonic()
    progress.t0 = t0
    timer.start()
    try:
        counters = launch(cfg, run_dir, False, args.address, progress)
    finally:
        timer.cancel()
    elapsed = time.monotonic() - t0
    evals = []
    eval_csv = run_dir / "eval.csv"
    if eval_csv.exists():
        with open(eval_csv) as f:
            for row in csv.DictReader(f):
                evals.append(
                    {
                        "frame": int(float(row["frame"])),
                        "eval_return": float(row["eval_return"]),
                        "coordinator_wall_time": float(row["wall_time"]),
                    }
                )
    when = {frame: t for t, frame, _ in progress.evals}
    for e in evals:
        e["benchmark_seconds"] = when.get(e["frame"])
    hit = next((e for e in evals if e["eval_return"] > args.target), None)
    points = progress.points
    frames = int(counters["frames"])
    transitions = frames / cfg.env.action_repeat
    updates = int(counters["updates"])
    steady_since = (points[-1][0] / 2) if points else 0.0
    return {
        "actors": actors,
        "shards": args.shards,
        "run_dir": str(run_dir),
        "reason": counters.get("reason"),
        "elapsed_seconds": round(elapsed, 1),
        "budget_seconds": budget,
        "stop_seconds": round(elapsed - budget, 1)
        if counters.get("reason") == "interrupted"
        else None,
        "coordinator_wall_time": round(float(counters["wall_time"]), 1),
        "frames": frames,
        "updates": updates,
        "frames_per_second_overall": frames / elapsed,
        "frames_per_second_steady": _rate(points, 1, steady_since),
        "updates_per_second_steady": _rate(points, 2, steady_since),
        "updates_per_second_overall": updates / elapsed,
        "samples_per_insert": cfg.distributed.samples_per_insert,
        "measured_samples_per_insert": updates * cfg.agent.batch_size / max(transitions, 1.0),
        "batch_size": cfg.agent.batch_size,
        "evals": evals,
        "last_eval_return": evals[-1]["eval_return"] if evals else None,
        "best_eval_return": max((e["eval_return"] for e in evals), default=None),
        "target": args.target,
        "first_above_target": hit,
        "restarts": counters.get("restarts"),
    }


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": "end-to-end", "cores": os.cpu_count(), "runs": []}
    out["load_before"] = loadavg()
    for i, actors in enumerate(int(x) for x in args.e2e_actors.split(",")):
        if i:
            time.sleep(5)  # let the previous run's Ray processes go
        out["runs"].append(end_to_end_one(args, actors))
    out["load_after"] = loadavg()
    try:
        import torch

        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - informational only
        out["gpu"] = None
    return out


def end_to_end_markdown(res: dict[str, Any]) -> str:
    lines = [
        "| actors | frames/s steady | frames/s overall | x anchor (96) | updates/s | samples/insert"
        " | frames | minutes | last eval | best eval | first eval > target (min, frame) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        steady = r["frames_per_second_steady"]
        ups = r["updates_per_second_steady"]
        hit = r["first_above_target"]
        when = "not reached"
        if hit:
            secs = hit["benchmark_seconds"] or hit["coordinator_wall_time"]
            when = f"{secs / 60:.1f}, {hit['frame']:,}"

        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1f}"

        lines.append(
            f"| {r['actors']} | {fmt(steady)} | {r['frames_per_second_overall']:.1f} | "
            f"{(steady or r['frames_per_second_overall']) / ANCHOR_FPS:.1f}x | {fmt(ups)} | "
            f"{r['measured_samples_per_insert']:.1f} | {r['frames']:,} | "
            f"{r['elapsed_seconds'] / 60:.1f} | {fmt(r['last_eval_return'])} | "
            f"{fmt(r['best_eval_return'])} | {when} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("plumbing", "end-to-end"), default="plumbing")
    parser.add_argument("--task", default="walker_walk")
    parser.add_argument("--fast-render", action="store_true", help="env.fast_render=true")
    parser.add_argument("--shards", type=int, default=2, help="replay shards")
    parser.add_argument("--out", help="write the results as JSON to this file")
    g = parser.add_argument_group("plumbing")
    g.add_argument("--actors", default="1,2,4,8", help="env actor counts, comma separated")
    g.add_argument("--bare-seconds", type=float, default=15.0, help="timed seconds per bare loop")
    g.add_argument("--warmup", type=float, default=15.0, help="seconds before the window opens")
    g.add_argument(
        "--settle", type=float, default=5.0, help="and seconds after every actor's first chunk"
    )
    g.add_argument("--window", type=float, default=30.0, help="measured seconds per config")
    g = parser.add_argument_group("end-to-end")
    g.add_argument("--e2e-actors", default="8,14", help="env actor counts, comma separated")
    g.add_argument(
        "--samples-per-insert", type=float, default=None, help="default: the preset's (128)"
    )
    g.add_argument("--device", default="cuda", help="learner device (agent.device)")
    g.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget per run")
    g.add_argument("--frames", type=int, default=0, help="train.frames (0: the preset's)")
    g.add_argument("--target", type=float, default=900.0, help="eval return to reach")
    g.add_argument("--run-root", default="runs/bench-throughput", help="parent of run dirs")
    g.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    g.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (e2e)")
    args = parser.parse_args()

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    started = time.monotonic()
    if args.mode == "plumbing":
        res = plumbing(args)
        table = plumbing_markdown(res)
    else:
        res = end_to_end(args)
        table = end_to_end_markdown(res)
    import ray
    import torch

    res.update(
        command=command,
        task=args.task,
        fast_render=args.fast_render,
        date=time.strftime("%Y-%m-%d"),
        seconds=round(time.monotonic() - started, 1),
        machine=platform.processor() or platform.machine(),
        python=platform.python_version(),
        ray=ray.__version__,
        torch=torch.__version__,
        mujoco_gl=os.environ.get("MUJOCO_GL"),
    )
    print()
    print(f"- Command: `{command}` ({res['seconds']:.0f} s)")
    print(
        f"- Cores: {res['cores']}; load average before {res['load_before']}, after "
        f"{res['load_after']}"
    )
    print()
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
