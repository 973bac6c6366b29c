"""Frame codec: lossless for any chunking, windows equal per-frame decoding, msgpack round trip."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distdrq.replay.codec as codec_mod
from distdrq.replay.codec import (
    EncodedFrames,
    EpisodeFrames,
    FrameEncoder,
    decode_windows,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from codec_experiments import ALL_CODECS  # noqa: E402  (shipped and experimental: all decode)

RECONSTRUCTORS = [codec_mod._reconstruct_numpy]
if codec_mod._reconstructor() is not codec_mod._reconstruct_numpy:  # numba's kernel
    RECONSTRUCTORS.append(codec_mod._reconstructor())


def moving_frames(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A moving checkerboard with a drifting blob and small noise (residuals of all sizes)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((n, c, h, w), np.uint8)
    for t in range(n):
        board = (((xx + t) // 3 + yy // 3) % 2) * 120 + 60
        blob = 90 * (((yy - h / 2) ** 2 + (xx - (t * 2) % w) ** 2) < (h / 4) ** 2)
        for ch in range(c):
            noise = rng.integers(-2, 3, (h, w))
            out[t, ch] = np.clip(board + blob * (ch + 1) // 2 + noise, 0, 255)
    return out


def store(
    codec: str, frames: np.ndarray, cuts: list[int], via_msgpack: bool = True
) -> EpisodeFrames:
    enc = FrameEncoder(codec, frames.shape[1:])
    ep = EpisodeFrames(codec, frames.shape[1:])
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(frames))), len(frames)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = enc.encode(frames[a:b])
        ep.append(EncodedFrames.from_msgpack(chunk.to_msgpack()) if via_msgpack else chunk)
    return ep


@pytest.fixture(params=RECONSTRUCTORS, ids=lambda f: f.__name__)
def reconstructor(request, monkeypatch):
    monkeypatch.setattr(codec_mod, "_reconstruct", request.param)
    return request.param


@settings(max_examples=25, deadline=None)
@given(
    codec=st.sampled_from(ALL_CODECS),
    n=st.integers(1, 40),
    shape=st.sampled_from([(3, 5, 7), (1, 6, 6), (3, 12, 9), (1, 1, 1)]),
    cuts=st.lists(st.integers(1, 39), max_size=6),
    seed=st.integers(0, 2**16),
    random=st.booleans(),
)
def test_random_frames_roundtrip(codec, n, shape, cuts, seed, random):
    rng = np.random.default_rng(seed)
    if random:
        frames = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    else:
        frames = moving_frames(n, shape, seed)
    ep = store(codec, frames, cuts, via_msgpack=bool(seed % 2))
    assert len(ep) == n
    for impl in RECONSTRUCTORS:
        codec_mod._reconstruct, saved = impl, codec_mod._reconstruct
        try:
            np.testing.assert_array_equal(ep.decode(np.arange(n)), frames)
            idx = rng.integers(0, n, (7, 6))
            got = decode_windows([ep, ep], rng.integers(0, 2, 7), idx)
            np.testing.assert_array_equal(got, frames[idx])
            np.testing.assert_array_equal(ep.decode(idx[0][::-1]), frames[idx[0][::-1]])
        finally:
            codec_mod._reconstruct = saved


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_windows_match_per_frame_decode(codec, reconstructor):
    """Clamped windows over several episodes of different lengths, all sharing codec."""
    rng = np.random.default_rng(0)
    episodes = [moving_frames(n, (3, 16, 20), seed=n) for n in (1, 17, 40, 70)]
    stores = [store(codec, f, list(rng.integers(1, len(f) + 1, 3))) for f in episodes]
    ep = rng.integers(0, len(episodes), 64)
    t = rng.integers(0, [len(episodes[e]) for e in ep])
    win = np.clip(t[:, None] + np.arange(-2, 4), 0, [[len(episodes[e]) - 1] for e in ep])
    got = decode_windows(stores, ep, win)
    assert got.shape == (64, 6, 3, 16, 20) and got.dtype == np.uint8
    for b in range(64):
        np.testing.assert_array_equal(got[b], stores[ep[b]].decode(win[b]))
        np.testing.assert_array_equal(got[b], episodes[ep[b]][win[b]])


@pytest.fixture(scope="module")
def rendered() -> np.ndarray:
    """30 real frames of cheetah_run at 84x84 (MuJoCo rendering is required, no fallback)."""
    from distdrq.config import EnvConfig
    from distdrq.envs.dmc import make_env

    env = make_env(EnvConfig(task="cheetah_run"), seed=0)
    rng = np.random.default_rng(0)
    ts = env.reset()
    frames = [ts.frame]
    for _ in range(29):
        ts = env.step(rng.uniform(-1, 1, env.action_dim))
        frames.append(ts.frame)
    env.close()
    return np.stack(frames)


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_real_frames(codec, rendered, reconstructor):
    ep = store(codec, rendered, [1, 2, 9, 20])
    np.testing.assert_array_equal(ep.decode(np.arange(len(rendered))), rendered)
    win = np.maximum(np.arange(-2, 24)[:, None] + np.arange(6), 0)
    win = np.minimum(win, len(rendered) - 1)
    np.testing.assert_array_equal(decode_windows([ep], np.zeros(len(win), int), win), rendered[win])
    if codec != "raw":
        assert ep.nbytes() < rendered.nbytes / 2
    clone = pickle.loads(pickle.dumps(ep))
    np.testing.assert_array_equal(clone.decode(np.arange(len(rendered))), rendered)


def test_msgpack_roundtrip_and_errors():
    frames = moving_frames(5, (3, 8, 8), 1)
    enc = FrameEncoder("lz4-tree", (3, 8, 8)).encode(frames)
    back = EncodedFrames.from_msgpack(enc.to_msgpack())
    assert back.payload == enc.payload and back.first_frame == 0
    np.testing.assert_array_equal(back.sizes, enc.sizes)
    ep = EpisodeFrames("lz4-tree", (3, 8, 8))
    with pytest.raises(ValueError):
        ep.append(EncodedFrames("lz4-tree", (3, 8, 8), 3, back.payload, back.sizes))
    ep.append(back)
    with pytest.raises(IndexError):
        ep.decode(np.array([5]))
    with pytest.raises(ValueError):
        FrameEncoder("nope")
    with pytest.raises(ValueError):
        FrameEncoder("raw", (3, 8, 8)).encode(frames.astype(np.int16))


@pytest.mark.parametrize("codec", ["lz4-tree", "lz4d-star32", "lz4-key16"])
def test_damaged_frame_bytes_raise_a_clear_error(codec, reconstructor):
    """A predicted frame whose LZ4 block lost its second half: every decoder path raises a
    one-line ValueError, no crash. (A well-formed but altered block may still decode, as any
    LZ4 block does; the disk codec's blobs carry a CRC32.)"""
    from distdrq.replay.codec import decode_windows_into

    frames = moving_frames(20, (3, 16, 16), 3)
    good = FrameEncoder(codec, frames.shape[1:]).encode(frames)
    starts = np.concatenate([[0], np.cumsum(good.sizes)])
    victim = 6  # a predicted frame (not an intra frame)
    blocks = [good.payload[starts[i] : starts[i + 1]] for i in range(len(frames))]
    blocks[victim] = blocks[victim][: len(blocks[victim]) // 2]
    sizes = np.array([len(b) for b in blocks], np.int64)
    ep = EpisodeFrames(codec, frames.shape[1:])
    ep.append(EncodedFrames(codec, frames.shape[1:], 0, b"".join(blocks), sizes))
    np.testing.assert_array_equal(ep.decode(np.arange(5)), frames[:5])  # the rest decodes
    with pytest.raises(ValueError, match="corrupt LZ4 frame in replay"):
        ep.decode(np.array([victim]))
    obs = np.empty((2, 3, *frames.shape[1:]), np.uint8)
    nxt = np.empty_like(obs)
    windows = np.array([[0, 1, 2, 3, 4, 5], [victim - 1, victim, victim + 1, 9, 10, 11]])
    with pytest.raises(ValueError, match="corrupt LZ4 frame in replay"):
        decode_windows_into([ep], np.zeros(2, np.int64), windows, (obs, nxt))


@pytest.mark.parametrize("shape", [(3, 150, 150), (1, 256, 256)])
def test_dictionary_codec_falls_back_to_residuals_for_frames_over_64k(shape, reconstructor):
    """LZ4 cannot reach a reference more than 65,535 bytes back: lz4d-star32 codes such frames
    as residuals (a dictionary it cannot reach would leave them uncompressed), bit-exact
    through every decoder."""
    from distdrq.replay.codec import decode_windows_into

    rng = np.random.default_rng(4)
    frames = np.repeat(rng.integers(0, 256, (1, *shape), dtype=np.uint8), 12, axis=0)
    for t in range(12):  # incompressible background, a small moving block
        frames[t, :, 10:20, t : t + 10] = 255
    assert not codec_mod.codec_spec("lz4d-star32").by_dict(int(np.prod(shape)))
    ep = store("lz4d-star32", frames, [5])
    assert ep.nbytes() < frames.nbytes / 4  # one intra frame, then nearly empty residuals
    np.testing.assert_array_equal(ep.decode(np.arange(len(frames))), frames)
    obs = np.empty((2, 3, *shape), np.uint8)
    nxt = np.empty_like(obs)
    windows = np.array([[0, 0, 0, 1, 2, 3], [6, 7, 8, 9, 10, 11]])
    decode_windows_into([ep], np.zeros(2, np.int64), windows, (obs, nxt))
    np.testing.assert_array_equal(obs, frames[windows[:, :3]])
    np.testing.assert_array_equal(nxt, frames[windows[:, 3:]])
