"""ReplayShard with frame codecs: bytes per transition and sampling speed on real episodes.

Renders (once, cached as .npy under --data, shared with benchmarks/replay_codec.py)
random-action episodes of walker_walk, cheetah_run and quadruped_walk (84x84, action repeat 2);
writes them through an EpisodeWriter (the codec runs there, actor side, chunk_length 50) into a
ReplayShard of that codec, and the same episodes through a raw writer into a raw shard. Reports
per codec: ``stats()`` bytes per transition and ratio against DrQ-v2 (index overhead included),
``sample(256)`` batches per second (nstep 3, frame_stack 3, one thread, ``out=`` reused), the raw
shard's batches per second timed alternately in the same loop, actor-side encode ms per frame
(codec writer time minus raw writer time) and memory for 1M transitions, extrapolated.

``--copies K`` fills each shard with K copies of the rendered episodes (each its own memory):
with the default K=1 the compressed frames fit in the CPU caches, as in a small shard; K=100
(100k transitions, hundreds of MB) gives the speed of a full-size shard, whose reads miss them.

On disk: a snapshot file of the default codec's shard (lz4d-star32) is written with each disk codec (``stored``: the
replay bytes as they are; ``cm``: the context-modelling coder of distdrq.replay.diskcodec) and
read back into a shard; reported as file bytes per transition, ratio against DrQ-v2, and write
and restore milliseconds per frame (restore includes re-encoding for the in-memory codec).

Where frames are decoded (``--decode-paths``, issue 13 part 1): in one shard of the default
codec, one sampling loop interleaves ``sample(256)`` decoded on the sampling thread
(shard-side), the same with a :class:`DecoderPool` of 1 and of 2 threads decoding what this
thread plans (learner-side in one process: ``distdrq train``), the coded path of ``distdrq
launch`` with both of its steps back to back (the shard's ``sample_coded(256)``, then the
pool decoding it), each of those two steps alone, and a raw shard's ``sample(256)``. CPU time
is the process's (all its threads), per batch: the work, which load from other processes
does not change as it changes the wall time; critical-path CPU is that work less the pool's
ranges plus the longest range (each range's thread CPU time): the wall time of a batch on a
machine with a free core per thread. Bytes crossing Ray per batch: the pickled size
(protocol 5) of what a shard returns, the decoded batch or the coded one, over 20 other
batches (not timed: Ray's copies of the 32.5 MB decoded batch into and out of the object
store would add to shard-side decoding's time, not to the learner side's).

The learner's frame cache (``replay.learner_cache_mb``): the same shard sends coded batches
to a :class:`FrameCache` through a :class:`SentFrames` record, each reply acknowledged before
the next (one request in flight). ``--warm`` batches fill the cache as a long run does (every
frame drawn at least once: a walker batch draws ~2,000 of the shard's 100k frames), then the
timed loop times a warm batch end to end and the shard's part alone. Its bytes per batch are
those of a steady state measured after the loop over ``--steady`` batches: a new episode's
transitions arrive at DrQ-v2's replay ratio (2 per batch of 256: one update per 2 agent steps),
so each batch brings its share of new frames by bytes and names the rest by key.

    python benchmarks/replay.py [--episodes 2] [--reps 40] [--codecs lz4-key16,lz4d-star32]
        [--copies 1] [--no-disk] [--decode-paths] [--warm 400] [--steady 500]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec_experiments import ALL_CODECS  # noqa: E402  (registers the experimental codecs)
from replay_codec import preamble, render_episode  # noqa: E402

from distdrq.replay import (  # noqa: E402
    DEFAULT_CODEC,
    EpisodeWriter,
    ReplayShard,
    drqv2_bytes_per_transition,
)
from distdrq.replay.decoding import DecoderPool  # noqa: E402
from distdrq.replay.framecache import FrameCache, SentFrames  # noqa: E402
from distdrq.replay.shard import disk_state  # noqa: E402
from distdrq.replay.snapshot import read_snapshot, write_snapshot  # noqa: E402

TASKS = ("walker_walk", "cheetah_run", "quadruped_walk")
FIELDS = ("obs", "next_obs", "action", "reward", "discount", "version")


def fill(
    shard: ReplayShard, codec: str, episodes: list[np.ndarray], chunk: int, copies: int = 1
) -> float:
    """Write ``episodes`` (``copies`` times, as new episodes) through a writer of ``codec`` into
    ``shard``; seconds in the writer for one copy."""
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
        for _ in range(copies - 1):  # the same bytes as another episode, in memory of its own
            insert_copy(shard, chunks)
        FILLED[id(shard)] = chunks
    return spent


FILLED: dict[int, list] = {}
"""a shard's last episode's chunks as written (for :func:`insert_copy` later)"""


def insert_copy(shard: ReplayShard, chunks: list) -> None:
    """One more episode into ``shard``: ``chunks``' bytes copied, under a new key."""
    key = shard.num_episodes + 10**6 + len(shard)
    for out in chunks:
        enc = out.encoded
        if enc is not None:
            payload = bytearray(memoryview(enc.payload))
            enc = dataclasses.replace(enc, payload=np.frombuffer(payload, np.uint8))
        frames_copy = np.array(out.frames, copy=True)
        shard.insert(dataclasses.replace(out, episode_key=key, frames=frames_copy, encoded=enc))


def disk_rows(task: str, shard: ReplayShard, frames: int, tmp: Path) -> list[dict]:
    """Snapshot files of ``shard`` with each disk codec: size, write and restore time."""
    rows = []
    transitions = len(shard)
    for disk_codec in ("stored", "cm"):
        path = tmp / f"{task}_{disk_codec}.ddrq"
        t0 = time.perf_counter()
        size = write_snapshot(path, disk_state(shard.state_dict(), disk_codec))
        t1 = time.perf_counter()
        restored = ReplayShard(10**7, 3, 0.99, 3, seed=0, codec=shard.codec)
        restored.load_state_dict(read_snapshot(path))
        t2 = time.perf_counter()
        a = shard.sample(256, rng=np.random.default_rng(2))
        b = restored.sample(256, rng=np.random.default_rng(2))
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS), disk_codec
        path.unlink()
        bpt = size / transitions
        rows.append(
            dict(
                task=task,
                disk=disk_codec,
                bpt=bpt,
                ratio=drqv2_bytes_per_transition(shard.empty_batch(1).obs.shape[1:], 1) / bpt,
                write_ms=(t1 - t0) / frames * 1e3,
                restore_ms=(t2 - t1) / frames * 1e3,
            )
        )
    return rows


def bench_task(task: str, args: argparse.Namespace) -> list[dict]:
    episodes = [render_episode(task, e, args.data) for e in range(args.episodes)]
    frames_total = sum(len(f) for f in episodes)
    shape = episodes[0].shape[1:]
    make = lambda codec: ReplayShard(10**7, 3, 0.99, 3, seed=0, codec=codec)  # noqa: E731
    raw = make("raw")
    raw_writer_s = min(fill(make("raw"), "raw", episodes, args.chunk) for _ in range(2))
    fill(raw, "raw", episodes, args.chunk, args.copies)
    shards, rows = {}, []
    for codec in args.codecs:
        shard = make(codec)
        spent = fill(shard, codec, episodes, args.chunk, args.copies)
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
    if not args.no_disk and DEFAULT_CODEC in shards:
        shard = shards[DEFAULT_CODEC]
        args.disk_rows += disk_rows(task, shard, shard.stats()["frames"], args.data)
    return rows


class TimedPool(DecoderPool):
    """A DecoderPool that records the CPU time of each range it decodes, per thread."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        self.task_cpu: list[float] = []

    def _run(self, task) -> None:
        start = time.thread_time()
        super()._run(task)
        self.task_cpu.append(time.thread_time() - start)  # list.append is atomic


def timed_loop(steps: dict, pools: list[TimedPool], reps: int) -> tuple[dict, dict, dict]:
    """Wall seconds, process CPU seconds and critical-path CPU seconds of each step, ``reps``
    times, the steps interleaved (so that load from other work hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    critical: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm up (numba, page faults)
        step()
    load = os.getloadavg()[0]
    for _ in range(reps):
        for name, step in steps.items():
            for pool in pools:
                pool.task_cpu.clear()
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)  # every thread of this process
            # the longest chain of work: what is not the pool's ranges, plus the longest range
            ranges = [t for pool in pools for t in pool.task_cpu]
            critical[name].append(cpu[name][-1] - sum(ranges) + max(ranges, default=0.0))
    after = os.getloadavg()[0]
    print(f"load average (1 min) {load:.1f} before the timed loop, {after:.1f} after")
    return times, cpu, critical


def decode_path_rows(task: str, args: argparse.Namespace) -> list[dict]:
    """Batches/s and bytes per batch of each place to decode (module docstring)."""
    episodes = [render_episode(task, e, args.data) for e in range(args.episodes)]
    make = lambda codec: ReplayShard(10**7, 3, 0.99, 3, seed=0, codec=codec)  # noqa: E731
    raw, coded = make("raw"), make(DEFAULT_CODEC)
    fill(raw, "raw", episodes, args.chunk, args.copies)
    fill(coded, DEFAULT_CODEC, episodes, args.chunk, args.copies)
    pools = {threads: TimedPool(threads) for threads in (1, 2)}
    outs = [coded.empty_batch(256) for _ in range(6)]
    expected = raw.sample(256, rng=np.random.default_rng(1))
    for got in (
        coded.sample(256, rng=np.random.default_rng(1), out=outs[0]),
        pools[2].assemble([coded.sample_coded(256, rng=np.random.default_rng(1))], outs[1]),
    ):
        assert all(np.array_equal(getattr(got, f), getattr(expected, f)) for f in FIELDS)
    parked = coded.sample_coded(256)  # decoded again and again by the decode-only steps
    sizes = {
        "shard": [len(pickle.dumps(coded.sample(256), protocol=5)) for _ in range(20)],
        "learner": [len(pickle.dumps(coded.sample_coded(256), protocol=5)) for _ in range(20)],
    }

    def learner(pool: DecoderPool, out) -> None:
        pool.assemble([coded.sample_coded(256)], out)

    # the learner's frame cache (replay.learner_cache_mb): shard's part, then the learner's,
    # each reply acknowledged by the next (as with one request in flight)
    sent, cache = SentFrames(4096 << 20), FrameCache()

    def cached_part(rng=None):
        part = coded.sample_coded(256, rng=rng, sent=sent)
        return part, sent.finish()

    def cached(pool: DecoderPool | None, out, rng=None, measure: bool = False) -> int:
        part, reply = cached_part(rng)
        part.windows.receive(cache, reply)
        sent.ack([reply.seq])
        if pool is not None:
            pool.assemble([part], out)
        return len(pickle.dumps((part, reply), protocol=5)) if measure else 0

    for _ in range(args.warm):  # the cache fills as a long run's does: every frame drawn
        cached(None, None)
    cached(pools[2], outs[1], np.random.default_rng(1))  # warm: nearly every frame by key
    assert all(np.array_equal(getattr(outs[1], f), getattr(expected, f)) for f in FIELDS)

    steps = {
        "raw shard": lambda: raw.sample(256, out=outs[0]),
        "shard-side": lambda: coded.sample(256, out=outs[1]),
        # distdrq train: planned on this thread, decoded by the pool from replay's memory
        "learner-side in one process, 1 thread": lambda: coded.sample(
            256, out=outs[2], decoder=pools[1]
        ),
        "learner-side in one process, 2 threads": lambda: coded.sample(
            256, out=outs[3], decoder=pools[2]
        ),
        # distdrq launch: the shard plans and packs, the learner decodes (here back to back)
        "coded batch, 1 thread": lambda: learner(pools[1], outs[2]),
        "coded batch, 2 threads": lambda: learner(pools[2], outs[3]),
        "  shard's part (plan, pack)": lambda: coded.sample_coded(256),
        "  learner's part, 1 thread": lambda: pools[1].assemble([parked], outs[4]),
        "  learner's part, 2 threads": lambda: pools[2].assemble([parked], outs[5]),
        "coded batch + frame cache (warm), 2 threads": lambda: cached(pools[2], outs[3]),
        "  shard's part with frame cache": cached_part,
    }
    times, cpu, critical = timed_loop(steps, list(pools.values()), args.reps)
    # steady state: a new episode's transitions arrive at DrQ-v2's ratio (2 per batch of 256:
    # one update per 2 agent steps), each replacing an old one's in a full replay
    per_episode = len(coded) // coded.num_episodes
    steady = []
    for i in range(args.steady):
        if i % (per_episode // 2) == 0:
            insert_copy(coded, FILLED[id(coded)])
        steady.append(cached(None, None, measure=True))
    sizes["cache"] = steady
    for pool in pools.values():
        pool.close()
    bps = {name: 1.0 / np.median(t) for name, t in times.items()}
    shard_bytes = float(np.mean(sizes["shard"]))
    return [
        dict(
            task=task,
            path=name,
            bps=bps[name],
            ms=1e3 * np.median(times[name]),
            cpu_ms=1e3 * np.median(cpu[name]),
            critical_ms=1e3 * np.median(critical[name]),
            vs_shard=bps[name] / bps["shard-side"],
            vs_raw=bps[name] / bps["raw shard"],
            bytes=(
                float(np.mean(sizes["cache"]))
                if "frame cache" in name and name.startswith("coded")
                else float(np.mean(sizes["learner"]))
                if name.startswith("coded")
                else shard_bytes
                if name in ("shard-side", "raw shard")
                else None
            ),
            shard_bytes=shard_bytes,
        )
        for name in steps
    ]


def print_decode_paths(args: argparse.Namespace) -> None:
    print(
        "| task | path | batches/s | ms/batch | CPU ms/batch | critical-path CPU ms "
        "| vs shard-side | vs raw shard | bytes crossing Ray per batch | fewer bytes than decoded |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        for r in decode_path_rows(task, args):
            sent = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.2f} MB"
            fewer = "" if r["bytes"] is None else f"{r['shard_bytes'] / r['bytes']:.1f}x"
            print(
                f"| {r['task']} | {r['path']} | {r['bps']:.0f} | {r['ms']:.1f} | {r['cpu_ms']:.1f} "
                f"| {r['critical_ms']:.1f} "
                f"| {r['vs_shard']:.2f} | {r['vs_raw']:.2f} | {sent} | {fewer} |",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument(
        "--codecs",
        default=f"lz4-key16,lz4-tree,{DEFAULT_CODEC}",
        help=f"any of {', '.join(ALL_CODECS)}",
    )
    p.add_argument("--reps", type=int, default=40, help="timed batches per shard")
    p.add_argument("--chunk", type=int, default=50, help="writer chunk_length")
    p.add_argument("--data", type=Path, default=Path("/tmp/codec_data"))
    p.add_argument("--copies", type=int, default=1, help="copies of each episode in a shard")
    p.add_argument("--no-disk", action="store_true", help="skip the snapshot (disk) table")
    p.add_argument(
        "--warm", type=int, default=400, help="batches that fill the frame cache before timing"
    )
    p.add_argument(
        "--steady",
        type=int,
        default=500,
        help="batches of the frame cache's steady state (new transitions arriving) for its bytes",
    )
    p.add_argument(
        "--decode-paths",
        action="store_true",
        help=f"only the table of where to decode ({DEFAULT_CODEC}: shard, learner, raw)",
    )
    args = p.parse_args()
    args.disk_rows = []
    args.codecs = [c for c in args.codecs.split(",") if c != "raw"]
    preamble(
        f"{args.episodes} episodes x {args.copies} copies per task, writer chunk_length "
        f"{args.chunk}, medians of {args.reps} sample(256) calls, nstep 3, frame_stack 3"
    )
    if args.decode_paths:
        print_decode_paths(args)
        return
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
    if args.disk_rows:
        print(f"\nOn disk (snapshot file of the {DEFAULT_CODEC} shard, written and restored):\n")
        print(
            "| task | disk codec | file B/transition | vs DrQ-v2 | write ms/frame | restore ms/frame |"
        )
        print("|---|---|---|---|---|---|")
        for r in args.disk_rows:
            print(
                f"| {r['task']} | {r['disk']} | {r['bpt']:,.0f} | {r['ratio']:.1f}x "
                f"| {r['write_ms']:.2f} | {r['restore_ms']:.2f} |"
            )


if __name__ == "__main__":
    main()
