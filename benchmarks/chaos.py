"""Chaos benchmark: a local ``distdrq launch`` under SIGKILLs and bad data, with its figures.

A real run (``distdrq launch`` as a subprocess on a local Ray instance, real MuJoCo rendering,
small networks so that it moves on 2 cores) is attacked for its whole length:

- ``--mode kill``: every 20-60 s (``--every``) one process is SIGKILLed by PID, the way the
  world kills processes, in turn over the roles env actor, replay shard, evaluator and learner
  (the order shuffled in each round);
- ``--mode bad-data``: a rogue client (this process) sends damaged chunks (payload bytes
  flipped, sizes consistent) and chunks with NaN / inf rewards, actions and discounts straight
  to the shards, as a broken env actor would;
- ``--mode both``: both at once.

It checks, and reports:

- kills injected per role, and that every one was survived (the run reaches its frame budget
  and exits 0);
- env frames, learner updates and weight versions never go backwards (the coordinator is
  polled every 0.25 s);
- after each shard kill, transitions lost = transitions inserted since that shard's last
  snapshot (read from the shard just before the kill), and no episode is stored twice (episode
  keys unique, stored transitions = the sum of episode lengths);
- rejected bad chunks = sent bad chunks, and no non-finite value ever reached a learner batch
  (the learner's ``nonfinite_batches`` counter);
- the final checkpoint loads and ``--resume`` continues; no process of the run is left.

    python benchmarks/chaos.py --mode both --frames 40000 [--every 20,60] [--out chaos.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import ray  # noqa: E402

from distdrq.distributed import enable_token_auth_if_available  # noqa: E402
from distdrq.proctree import alive, descendants  # noqa: E402
from distdrq.replay import EpisodeWriter  # noqa: E402

SMALL = [
    "--plain",
    "--task",
    "cartpole_swingup",
    "env.image_size=64",
    "env.fast_render=true",
    "agent.batch_size=32",
    "agent.hidden_dim=64",
    "agent.feature_dim=16",
    "agent.device=cpu",
    "train.seed_frames=400",
    "train.eval_every_frames=5000",
    "train.eval_episodes=1",
    "train.checkpoint_every_frames=4000",
    "distributed.samples_per_insert=8",
    "distributed.snapshot_every_inserts=500",
]
ROLES = ("env", "replay", "evaluator", "learner")
FRAME_SHAPE = (3, 64, 64)  # env.image_size=64 above


class Launch:
    """``distdrq launch`` in a subprocess; a thread keeps reading its output."""

    def __init__(self, args: list[str]) -> None:
        self.cmd = [sys.executable, "-m", "distdrq.cli", "launch", *args]
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.tree: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.tree |= descendants(self.proc.pid)

    def wait_for(self, text: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"launch ended or hung before {text!r}:\n" + self.tail())
            time.sleep(0.2)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


class Monitor(threading.Thread):
    """Polls the coordinator; records whether frames, updates or versions ever went back."""

    def __init__(self, coord: Any, name: str) -> None:
        super().__init__(daemon=True)
        self.coord = coord
        self.name = name
        self.last: dict[str, int] = {}
        self.backwards: list[str] = []
        self.polls = 0
        self.snap: Any = None
        self.learner: dict[str, float] = {}  # the learner's latest metrics (its own report)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                snap = ray.get(self.coord.snapshot.remote(), timeout=10)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                break  # the run ended
            self.snap = snap
            self.polls += 1
            if self.polls % 8 == 0:  # a recreated learner has the same name
                with contextlib.suppress(Exception):
                    learner = ray.get_actor(f"{self.name}-learner", namespace="distdrq")
                    self.learner = ray.get(learner.take_report.remote(), timeout=10).metrics
            c = snap.counters.to_dict()
            for key in ("frames", "updates", "weight_version"):
                if c[key] < self.last.get(key, -1):
                    self.backwards.append(f"{key} {self.last[key]} -> {c[key]}")
                self.last[key] = c[key]
            time.sleep(0.25)


def _call(actor: Any, method: str, timeout: float = 30) -> Any:
    return ray.get(getattr(actor, method).remote(), timeout=timeout)


def kill(name: str, role: str, index: int, record: dict[str, Any]) -> None:
    """SIGKILL one process of ``role``; for a shard, note what it held and had not snapshotted."""
    actor = ray.get_actor(
        {
            "env": f"{name}-env-{index}",
            "replay": f"{name}-replay-{index}",
            "evaluator": f"{name}-evaluator",
            "learner": f"{name}-learner",
        }[role]
    )
    if role == "replay":
        # the shard's insert thread is paused by nothing: read what it held as close to the
        # kill as possible (a chunk may still land in between; the check allows one chunk)
        stats = _call(actor, "stats")
        record.update(
            held=int(stats["transitions"]), unsnapshotted=int(stats["inserted_since_snapshot"])
        )
    pid = _call(actor, "pid")
    os.kill(pid, signal.SIGKILL)
    record.update(role=role, index=index, pid=pid, at=time.time())


def shard_restored(name: str, record: dict[str, Any], timeout: float = 300) -> None:
    """Wait for a killed shard's new process; record what it restored and what was lost."""
    shard = ray.get_actor(f"{name}-replay-{record['index']}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stats = _call(shard, "stats", timeout=10)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            time.sleep(0.5)
            continue
        if stats["pid"] != record["pid"]:
            record["restored"] = int(stats["restored_transitions"])
            record["lost"] = record["held"] - record["restored"]
            record["restored_from"] = stats.get("restored_from")
            return
        time.sleep(0.5)
    record["restored"] = None


def bad_chunks(rng: np.random.Generator, frame_shape: tuple[int, ...]) -> list[tuple[str, Any]]:
    """One bad chunk of each kind, coded like an env actor's, each for an episode of its own."""
    out = []
    kinds = ("damaged payload", "nan reward", "inf reward", "nan action", "discount 2")
    for kind in kinds:
        writer = EpisodeWriter(
            writer_id=(1 << 30) + int(rng.integers(1 << 20)), chunk_length=10, codec="lz4d-star32"
        )
        writer.begin(rng.integers(0, 255, size=frame_shape, dtype=np.uint8))
        chunk = None
        for _ in range(10):
            frame = rng.integers(0, 255, size=frame_shape, dtype=np.uint8)
            chunk = writer.append(rng.uniform(-1, 1, 1).astype(np.float32), 0.5, 1.0, frame, False)
        assert chunk is not None
        if kind == "damaged payload":  # flipped bytes, sizes consistent
            payload = bytearray(bytes(chunk.encoded.payload))
            middle = len(payload) // 2
            for i in range(middle, middle + 8):
                payload[i] ^= 0xFF
            chunk = replace(chunk, encoded=replace(chunk.encoded, payload=bytes(payload)))
        elif kind == "nan reward":
            chunk = replace(chunk, rewards=np.where(np.arange(10) == 3, np.nan, chunk.rewards))
        elif kind == "inf reward":
            chunk = replace(chunk, rewards=np.where(np.arange(10) == 7, np.inf, chunk.rewards))
        elif kind == "nan action":
            actions = chunk.actions.copy()
            actions[5, 0] = np.nan
            chunk = replace(chunk, actions=actions)
        else:
            chunk = replace(chunk, discounts=np.full_like(chunk.discounts, 2.0))
        out.append((kind, chunk))
    return out


def send_bad(name: str, num_shards: int, rng: np.random.Generator, sent: dict[str, int]) -> None:
    """Send one round of bad chunks to random shards; each must be refused with an error."""
    for kind, chunk in bad_chunks(rng, FRAME_SHAPE):
        i = int(rng.integers(num_shards))
        shard = ray.get_actor(f"{name}-replay-{i}")
        try:
            accepted = ray.get(shard.insert.remote(chunk, 5.0), timeout=60)
        except ray.exceptions.RayTaskError:
            sent["refused"] = sent.get("refused", 0) + 1
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            sent["shard_down"] = sent.get("shard_down", 0) + 1  # not sent: shard restarting
            continue
        else:
            sent["accepted" if accepted else "not_admitted"] = (
                sent.get("accepted" if accepted else "not_admitted", 0) + 1
            )
        sent[kind] = sent.get(kind, 0) + 1
        sent["sent"] = sent.get("sent", 0) + 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    order = random.Random(args.seed)
    low, high = (float(x) for x in args.every.split(","))
    root = Path(args.run_root or tempfile.mkdtemp(prefix="distdrq-chaos-"))
    run_dir = root / f"chaos-{args.mode}-{int(time.time())}"
    name = f"distdrq-{run_dir.name}"
    common = [*SMALL, "--actors", str(args.actors), "--shards", str(args.shards)]
    common += ["--metrics-port", "0"]
    launch = Launch(["--run-dir", str(run_dir), "--frames", str(args.frames), *common])
    started = time.monotonic()
    address = launch.wait_for("Ray cluster at ").split()[3]
    launch.wait_for("learner on")
    enable_token_auth_if_available()
    ray.init(address=address, namespace="distdrq", log_to_driver=False)
    coord = ray.get_actor(f"{name}-coordinator")
    monitor = Monitor(coord, name)
    monitor.start()
    kills: list[dict[str, Any]] = []
    sent: dict[str, int] = {}
    queue: list[str] = []
    next_kill = time.monotonic() + order.uniform(low, high)
    next_bad = time.monotonic() + order.uniform(low, high)
    kinds = ("kill", "both") if args.mode in ("kill", "both") else ()
    try:
        while launch.proc.poll() is None:
            frames = monitor.last.get("frames", 0)
            if frames >= args.frames * 0.95:
                break  # let it finish on its own, without this process connected (below)
            now = time.monotonic()
            if args.mode in kinds and now >= next_kill:
                if not queue:
                    queue = list(ROLES)
                    order.shuffle(queue)
                role = queue.pop()
                count = {"env": args.actors, "replay": args.shards}.get(role, 1)
                record: dict[str, Any] = {"frame": frames}
                try:
                    kill(name, role, order.randrange(count), record)
                    if role == "replay":
                        shard_restored(name, record)
                    kills.append(record)
                    print(f"chaos: killed {role} (pid {record['pid']}) at frame {frames:,}")
                except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError, ValueError) as e:
                    print(f"chaos: could not kill {role} now ({str(e).splitlines()[0][:100]})")
                next_kill = time.monotonic() + order.uniform(low, high)
            if args.mode in ("bad-data", "both") and now >= next_bad:
                send_bad(name, args.shards, rng, sent)
                next_bad = time.monotonic() + order.uniform(low, high) / 2
            time.sleep(0.25)
    finally:
        monitor.done.set()
        monitor.join(timeout=30)
        learner = dict(monitor.learner)
        # Ray ends a process still connected to a cluster that shuts down: leave first
        ray.shutdown()
    launch.proc.wait(timeout=900)
    launch._reader.join(timeout=30)
    (run_dir / "launch.log").write_text("\n".join(launch.lines) + "\n")
    last = _latest_counters(run_dir)
    for key in ("frames", "updates", "weight_version"):  # the final checkpoint, after the polls
        if key in last and last[key] < monitor.last.get(key, -1):
            monitor.backwards.append(f"{key} {monitor.last[key]} -> {last[key]} (final)")
    first_exit = launch.proc.returncode
    first_out = "\n".join(launch.lines)
    elapsed = time.monotonic() - started
    # what the driver said about each restart
    restart_lines = [x for x in launch.lines if " restarted (" in x]
    # the final checkpoint loads and --resume continues
    resume = Launch(["--resume", str(run_dir), "--frames", str(args.frames + 1500), *common[:1]])
    resume.proc.wait(timeout=900)
    resume._reader.join(timeout=30)
    (run_dir / "resume.log").write_text("\n".join(resume.lines) + "\n")
    time.sleep(5)
    left = sorted(p for p in launch.tree | resume.tree if alive(p))
    result = {
        "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
        "launch": " ".join(shlex.quote(x) for x in launch.cmd[2:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "mode": args.mode,
        "frames_budget": args.frames,
        "wall_seconds": round(elapsed, 1),
        "exit_code": first_exit,
        "reached_budget": first_exit == 0 and "done at frame" in first_out,
        "final_counters": last,
        "kills": kills,
        "kills_per_role": {r: sum(k["role"] == r for k in kills) for r in ROLES},
        "restart_lines": restart_lines,
        "backwards": monitor.backwards,
        "polls": monitor.polls,
        "bad_chunks": sent,
        "nonfinite_batches": learner.get("nonfinite_batches"),
        "resume_exit_code": resume.proc.returncode,
        "resume_continued": resume.proc.returncode == 0
        and any("resuming from" in x for x in resume.lines)
        and any("done at frame" in x for x in resume.lines),
        "processes_left": left,
        "launch_tail": launch.lines[-60:],
        "resume_tail": resume.lines[-20:],
    }
    result["shard_losses"] = [
        {k: r.get(k) for k in ("index", "held", "unsnapshotted", "restored", "lost")}
        for r in kills
        if r["role"] == "replay"
    ]
    result["episodes"] = episode_check(run_dir, args.shards)
    result["passed"] = verdict(result)
    return result


def _latest_counters(run_dir: Path) -> dict[str, Any]:
    """Counters of the run's newest checkpoint (it must load: that is one of the checks)."""
    from distdrq.checkpoint import list_checkpoints, load_checkpoint

    paths = list_checkpoints(run_dir)
    return dict(load_checkpoint(paths[0])[0]["counters"]) if paths else {}


def episode_check(run_dir: Path, shards: int) -> dict[str, Any]:
    """Every shard's newest snapshot: episode keys unique over all shards, and the transitions
    it says it holds equal to the sum of its episodes' lengths."""
    from distdrq.replay.snapshot import SnapshotStore

    out: dict[str, Any] = {"episodes": 0, "transitions": 0, "duplicate_keys": 0}
    keys: list[int] = []
    for i in range(shards):
        found = SnapshotStore(run_dir / "replay" / f"shard_{i:03d}").load_latest(warn=print)
        if found is None:
            continue
        state = found[1]["shard"]
        episode_keys = [int(k) for k in np.asarray(state["episode_keys"]).tolist()]
        keys += episode_keys
        out["episodes"] += len(episode_keys)
        out["transitions"] += sum(
            len(state[f"episode.{j}.rewards"]) for j in range(len(episode_keys))
        )
    out["duplicate_keys"] = len(keys) - len(set(keys))
    return out


def verdict(res: dict[str, Any]) -> bool:
    ok = res["reached_budget"] and not res["backwards"] and res["resume_continued"]
    ok = ok and not res["processes_left"] and res["episodes"]["duplicate_keys"] == 0
    for loss in res["shard_losses"]:
        slack = 50  # one chunk may land between the reading and the kill
        ok = ok and loss["restored"] is not None
        ok = ok and loss["unsnapshotted"] <= loss["lost"] <= loss["unsnapshotted"] + slack
    if res["mode"] in ("bad-data", "both"):
        sent = res["bad_chunks"]
        ok = ok and sent.get("sent", 0) > 0 and sent.get("refused", 0) == sent.get("sent", 0)
        ok = ok and not res["nonfinite_batches"]
    return bool(ok)


print = functools.partial(print, flush=True)  # noqa: A001  (progress lines, also under nohup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("kill", "bad-data", "both"), default="both")
    parser.add_argument("--frames", type=int, default=40_000, help="the run's frame budget")
    parser.add_argument("--every", default="20,60", help="seconds between faults: low,high")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-root", default=None, help="parent of the run dir (default: tmp)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args()
    res = run(args)
    text = json.dumps(res, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text)
    summary = {k: res[k] for k in res if not k.endswith("_tail") and k != "kills"}
    print(json.dumps(summary, indent=2, default=str))
    sys.exit(0 if res["passed"] else 1)


if __name__ == "__main__":
    main()
