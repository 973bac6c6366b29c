"""SDPG windows travel to the learner with the nominals' frames coded by the replay codec:
lossless, checksummed, several times smaller (real MuJoCo rendering, tiny sizes)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from distdrq.config import EnvConfig, SDPGConfig
from distdrq.run.groups import GroupRunner


@pytest.fixture(scope="module")
def windows():
    """Two windows of a pixel runner (the second one has stacks of real earlier frames) and
    one of a state runner."""
    env = EnvConfig(task="cheetah_run", action_repeat=2, fast_render=True)
    pixels = GroupRunner(
        env, SDPGConfig(obs="pixels", nominals=2, clones=1, horizon=12), range(2), 3
    )
    state = GroupRunner(env, SDPGConfig(obs="state", nominals=2, clones=1, horizon=12), range(2), 3)
    try:
        yield [pixels.run_window(), pixels.run_window()], state.run_window()
    finally:
        pixels.close()
        state.close()


@pytest.mark.parametrize("codec", ["lz4d-star32", "lz4-key16", "raw"])
def test_coded_frames_decode_bit_for_bit(windows, codec):
    pixel_windows, _ = windows
    for window in pixel_windows:
        coded = window.coded(codec)
        assert coded.frames is None and coded.first_stack is None
        assert len(coded.coded_frames) == 2  # one chunk per group
        back = pickle.loads(pickle.dumps(coded, protocol=5)).decoded()  # as Ray carries it
        np.testing.assert_array_equal(back.frames, window.frames)
        np.testing.assert_array_equal(back.first_stack, window.first_stack)
        np.testing.assert_array_equal(back.actor_observations(), window.actor_observations())
        np.testing.assert_array_equal(back.states, window.states)  # the rest is untouched
        if codec != "raw":
            assert coded.nbytes < window.nbytes / 2, (coded.nbytes, window.nbytes)


def test_damaged_frames_are_refused_in_one_line(windows):
    coded = windows[0][1].coded("lz4d-star32")
    enc = coded.coded_frames[1]
    payload = bytearray(enc.payload)
    payload[len(payload) // 2] ^= 0xFF
    damaged = [coded.coded_frames[0], dataclasses.replace(enc, payload=bytes(payload))]
    with pytest.raises(ValueError, match="coded frames of group 1 of this window are damaged"):
        dataclasses.replace(coded, coded_frames=damaged).decoded()


def test_state_windows_carry_no_frames(windows):
    _, state = windows
    assert state.coded("lz4d-star32") is state and state.decoded() is state
