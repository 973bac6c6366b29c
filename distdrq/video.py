"""Evaluation videos: the frames of an episode written as an animated GIF (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_gif(frames: list[np.ndarray], path: str | Path, fps: int = 25) -> Path:
    """Write uint8 frames [C, H, W] (C = 3 or 1) as a looping GIF; returns the path."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = []
    for frame in frames:
        hwc = np.ascontiguousarray(np.moveaxis(np.asarray(frame, dtype=np.uint8), 0, -1))
        images.append(Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc))
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def video_name(frame: int) -> str:
    """The file name of the evaluation video at env frame ``frame`` (in ``RUN_DIR/videos``)."""
    return f"eval_{frame:012d}.gif"


def video_due(evaluation_index: int, every: int) -> bool:
    """True for the evaluations to record: the first, then every ``every``-th (0: never)."""
    return every > 0 and evaluation_index % every == 0
