"""ReplayShard with frame codecs: bytes per transition and sampling speed on real episodes.

Renders (once, cached as .npy under --data, shared with benchmarks/replay_codec.py)
random-action episodes of walker_walk, cheetah_run and quadruped_walk (84x84, action repeat 2);
writes them through an EpisodeWriter (the codec runs there, actor side, chunk_length 50) into a
ReplayShard of that codec, and the same episodes through a raw writer into a raw shard. Reports
per codec: ``stats()`` bytes per transition and ratio against DrQ-v2 (index overhead included),
``sample(256)`` batches per second (nstep 3, frame_stack 3, one thread, ``out=`` reused), the raw
shard's batches per second timed alternately in the same loop, actor-side encode ms per frame
(codec writer time minus raw writer time) and memory for 1M transitions, extrapolated.

    python benchmarks/replay.py [--episodes 2] [--reps 40] [--codecs lz4-key16,lz4-tree]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_codec import render_episode  # noqa: E402

from distdrq.replay import EpisodeWriter, ReplayShard, drqv2_bytes_per_transition  # noqa: E402

TASKS = ("walker_walk", "cheetah_run", "quadruped_walk")
FIELDS = ("obs", "next_obs", "action", "reward", "discount", "version")


def fill(shard: ReplayShard, codec: str, episodes: list[np.ndarray], chunk: int) -> float:
    """Write ``episodes`` through a writer of ``codec`` into ``shard``; seconds in the writer."""
    writer = EpisodeWriter(0, chunk_length=chunk, codec=codec)
    rng = np.random.default_rng(0)
    spent = 0.0
    for frames in episodes:
        actions = rng.uniform(-1, 1, (len(frames) - 1, 6)).astype(np.float32)
        t0 = time.perf_counter()
        writer.begin(frames[0])
        chunks = []
        for t in range(1, len(frames)):
            last = t == len(frames) - 1
            out = writer.append(actions[t - 1], 0.5, 1.0, frames[t], last, version=t)
            if out is not None:
                chunks.append(out)
        spent += time.perf_counter() - t0
        for out in chunks:
            shard.insert(out)
    return spent


def bench_task(task: str, args: argparse.Namespace) -> list[dict]:
    episodes = [render_episode(task, e, args.data) for e in range(args.episodes)]
    frames_total = sum(len(f) for f in episodes)
    shape = episodes[0].shape[1:]
    make = lambda codec: ReplayShard(10**7, 3, 0.99, 3, seed=0, codec=codec)  # noqa: E731
    raw = make("raw")
    raw_writer_s = min(fill(make("raw"), "raw", episodes, args.chunk) for _ in range(2))
    fill(raw, "raw", episodes, args.chunk)
    shards, rows = {}, []
    for codec in args.codecs:
        shard = make(codec)
        spent = fill(shard, codec, episodes, args.chunk)
        a, b = (
            shard.sample(256, rng=np.random.default_rng(1)),
            raw.sample(256, rng=np.random.default_rng(1)),
        )
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS), codec
        stats = shard.stats()
        rows.append(
            dict(
                task=task,
                codec=codec,
                bpt=stats["bytes_per_transition"],
                ratio=stats["ratio_vs_drqv2"],
                enc_ms=max(0.0, spent - raw_writer_s) / frames_total * 1e3,
            )
        )
        shards[codec] = shard
    raw_stats = raw.stats()
    times: dict[str, list[float]] = {c: [] for c in ["raw", *args.codecs]}
    outs = {c: s.empty_batch(256) for c, s in [("raw", raw), *shards.items()]}
    for codec, shard in [("raw", raw), *shards.items()]:  # warm up (numba, page faults)
        shard.sample(256, out=outs[codec])
    for _ in range(args.reps):  # interleaved, so that load from other work hits all alike
        for codec, shard in [("raw", raw), *shards.items()]:
            t0 = time.perf_counter()
            shard.sample(256, out=outs[codec])
            times[codec].append(time.perf_counter() - t0)
    raw_bps = 1.0 / np.median(times["raw"])
    rows.insert(
        0,
        dict(
            task=task,
            codec="raw",
            bpt=raw_stats["bytes_per_transition"],
            ratio=raw_stats["ratio_vs_drqv2"],
            enc_ms=0.0,
        ),
    )
    for row in rows:
        row["bps"] = 1.0 / np.median(times[row["codec"]])
        row["raw_bps"] = raw_bps
        row["drqv2"] = drqv2_bytes_per_transition(shape, 3)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--codecs", default="lz4-key16,lz4-tree,lz4-chain16")
    p.add_argument("--reps", type=int, default=40, help="timed batches per shard")
    p.add_argument("--chunk", type=int, default=50, help="writer chunk_length")
    p.add_argument("--data", type=Path, default=Path("/tmp/codec_data"))
    args = p.parse_args()
    args.codecs = [c for c in args.codecs.split(",") if c != "raw"]
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    print("$ python " + " ".join(sys.argv))
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; one thread; "
        f"{args.episodes} episodes per task, writer chunk_length {args.chunk}, "
        f"medians of {args.reps} sample(256) calls, nstep 3, frame_stack 3\n"
    )
    print(
        "| task | codec | B/transition | vs DrQ-v2 | batches/s | raw shard batches/s "
        "| speed vs raw | encode ms/frame | 1M transitions |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        for r in bench_task(task, args):
            print(
                f"| {r['task']} | {r['codec']} | {r['bpt']:,.0f} | {r['ratio']:.1f}x "
                f"| {r['bps']:.0f} | {r['raw_bps']:.0f} | {r['bps'] / r['raw_bps']:.2f} "
                f"| {r['enc_ms']:.2f} | {r['bpt'] * 1e6 / 2**30:.1f} GiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
