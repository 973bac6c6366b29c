"""Evaluation videos."""

import numpy as np
import pytest
from PIL import Image

from distdrq.video import video_due, write_gif


@pytest.mark.parametrize("channels", [3, 1])
def test_gif_has_every_frame(tmp_path, channels):
    frames = [np.full((channels, 16, 20), i * 20, np.uint8) for i in range(7)]
    path = write_gif(frames, tmp_path / "v" / "e.gif")
    with Image.open(path) as gif:
        assert gif.size == (20, 16) and gif.n_frames == 7


def test_schedule_and_empty():
    assert [i for i in range(11) if video_due(i, 5)] == [0, 5, 10]
    assert not any(video_due(i, 0) for i in range(5))
    with pytest.raises(ValueError, match="no frames"):
        write_gif([], "x.gif")
