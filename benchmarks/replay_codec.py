"""Replay frame codec: bytes per transition and sampling speed on real rendered episodes.

Renders (once, cached as .npy under --data) random-action episodes of walker_walk, cheetah_run,
quadruped_walk (84x84, action repeat 2, DrQ-v2 cameras) and walker_walk in the compression
paper's setting (grayscale + black floor). For each codec: bytes per transition (payload plus
index, over all stored frames / transitions), ratio against DrQ-v2's 63,504 B per transition,
batches per second (256 windows of 6 consecutive clamped frames, frame_stack 3 + nstep 3,
uniform positions, one thread), the same for an uncompressed frame-once gather timed in the
same loop (interleaved), encode ms per frame, and memory for 1M transitions. Codecs: replay's
own and the experiments of benchmarks/codec_experiments.py.

    python benchmarks/replay_codec.py [--episodes 2] [--reps 30] [--codecs raw,lz4-tree]
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
from codec_experiments import ALL_CODECS  # noqa: E402  (registers the experimental codecs)

from distdrq.replay.codec import EpisodeFrames, FrameEncoder, decode_windows  # noqa: E402

DRQV2_BYTES = 63_504
SETTINGS = {
    "walker_walk": dict(task="walker_walk"),
    "cheetah_run": dict(task="cheetah_run"),
    "quadruped_walk": dict(task="quadruped_walk"),
    "walker_walk_paper": dict(task="walker_walk", grayscale=True, black_floor=True),
}


def render_episode(setting: str, episode: int, data: Path) -> np.ndarray:
    """Frames [L + 1, C, 84, 84] of one random-action episode (cached)."""
    path = data / f"{setting}_ep{episode}.npy"
    if path.exists():
        return np.load(path)
    from distdrq.config import EnvConfig
    from distdrq.envs.dmc import make_env

    env = make_env(EnvConfig(**SETTINGS[setting]), seed=episode)
    rng = np.random.default_rng(1000 + episode)
    ts = env.reset()
    frames = [ts.frame]
    while not ts.last:
        ts = env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        frames.append(ts.frame)
    env.close()
    data.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack(frames))
    return np.stack(frames)


def sample_windows(
    lengths: np.ndarray, batch: int, rng: np.random.Generator, stack: int = 3, nstep: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform n-step samples: episode index [B] and frame windows [B, stack + nstep]."""
    starts = np.maximum(lengths - 1 - nstep + 1, 0)  # transitions L = frames - 1
    ep = rng.choice(len(lengths), size=batch, p=starts / starts.sum())
    t = rng.integers(0, starts[ep])
    window = np.maximum(t[:, None] + np.arange(-stack + 1, nstep + 1)[None, :], 0)
    return ep, window


def bench_setting(setting: str, args: argparse.Namespace) -> list[dict]:
    episodes = [render_episode(setting, e, args.data) for e in range(args.episodes)]
    lengths = np.array([len(f) for f in episodes])
    transitions = int((lengths - 1).sum())
    shape = episodes[0].shape[1:]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.concatenate(episodes)  # uncompressed frame-once store
    rng = np.random.default_rng(0)
    samples = [sample_windows(lengths, args.batch, rng) for _ in range(args.reps)]

    stores, rows = {}, []
    for codec in args.codecs:
        t0 = time.perf_counter()
        eps = []
        for frames in episodes:
            enc, store = FrameEncoder(codec, shape), EpisodeFrames(codec, shape)
            for i in range(0, len(frames), args.chunk):  # chunks as an actor would send them
                store.append(enc.encode(frames[i : i + args.chunk]))
            eps.append(store)
        enc_ms = (time.perf_counter() - t0) / lengths.sum() * 1e3
        ep, win = samples[0]
        assert np.array_equal(decode_windows(eps, ep, win), flat[offsets[ep][:, None] + win]), codec
        stores[codec] = eps
        nbytes = sum(s.nbytes() for s in eps)
        rows.append(dict(setting=setting, codec=codec, bpt=nbytes / transitions, enc_ms=enc_ms))

    times = {c: [] for c in ["_raw", *args.codecs]}
    for ep, win in samples:  # interleaved, so that load from other processes hits all alike
        t0 = time.perf_counter()
        flat[offsets[ep][:, None] + win]  # uncompressed frame-once gather
        times["_raw"].append(time.perf_counter() - t0)
        for codec in args.codecs:
            t0 = time.perf_counter()
            decode_windows(stores[codec], ep, win)
            times[codec].append(time.perf_counter() - t0)
    raw_bps = 1.0 / np.median(times["_raw"])
    for row in rows:
        row["bps"] = 1.0 / np.median(times[row["codec"]])
        row["raw_bps"] = raw_bps
    return rows


def preamble(detail: str) -> None:
    """Pin torch to one thread; print the command and the machine (shared with replay.py)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    print("$ python " + " ".join(sys.argv))
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; one thread; {detail}\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--codecs", default=",".join(ALL_CODECS), help="shipped and experimental")
    p.add_argument("--reps", type=int, default=30, help="timed batches per codec")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--chunk", type=int, default=50, help="frames per encode() call")
    p.add_argument("--data", type=Path, default=Path("/tmp/codec_data"))
    args = p.parse_args()
    args.codecs = args.codecs.split(",")
    preamble(
        f"{args.episodes} episodes per setting, {args.reps} batches of {args.batch} x 6 frames"
    )
    print(
        "| setting | codec | B/transition | vs DrQ-v2 | batches/s | raw batches/s | speed vs raw "
        "| encode ms/frame | 1M transitions |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings.split(","):
        for r in bench_setting(setting, args):
            print(
                f"| {r['setting']} | {r['codec']} | {r['bpt']:,.0f} | {DRQV2_BYTES / r['bpt']:.1f}x "
                f"| {r['bps']:.0f} | {r['raw_bps']:.0f} | {r['bps'] / r['raw_bps']:.2f} "
                f"| {r['enc_ms']:.2f} | {r['bpt'] * 1e6 / 2**30:.1f} GiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
