"""Evaluation: mean-action episodes, and the first episode as a video when one is due.

Used by ``distdrq train`` between updates and by the evaluator actor of ``distdrq launch``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distdrq.video import video_due, video_name, write_gif


def _no_grad() -> Any:
    """torch's no_grad where torch is loaded (a learner's agent); nothing otherwise (a NumPy
    policy in an env actor, which never imports torch)."""
    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None else contextlib.nullcontext()


class EvaluationCancelled(Exception):
    """An evaluation was stopped before its last episode ended (the run is stopping)."""


def evaluate(
    agent: Any,
    env: Any,
    episodes: int,
    step: int,
    frames: list[np.ndarray] | None = None,
    cancelled: Callable[[], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``episodes`` episodes with the mean action; return mean and std of the returns.

    ``agent`` is anything with ``act(obs, step, eval_mode)`` (a learner's agent or an actor's
    policy copy). ``frames``: if given, the first episode's frames are appended to it.
    ``cancelled``: asked every step; once true, :class:`EvaluationCancelled` is raised.
    ``on_step``: called every step with the episode's index (a display shows the progress of
    an evaluation that takes minutes on a CPU).
    """
    returns = []
    for episode in range(episodes):
        ts = env.reset()
        record = frames is not None and episode == 0
        if record:
            frames.append(ts.frame)
        total = 0.0
        while not ts.last:
            if cancelled is not None and cancelled():
                raise EvaluationCancelled(f"stopped in episode {episode + 1} of {episodes}")
            if on_step is not None:
                on_step(episode)
            with _no_grad():
                action = agent.act(ts.observation, step, eval_mode=True)
            ts = env.step(action)
            total += ts.reward
            if record:
                frames.append(ts.frame)
        returns.append(total)
    arr = np.asarray(returns, dtype=np.float64)
    return {
        "eval_return": float(arr.mean()) if returns else float("nan"),
        "eval_return_std": float(arr.std()) if returns else float("nan"),
        "eval_episodes": len(returns),
    }


def evaluate_and_record(
    agent: Any,
    env: Any,
    episodes: int,
    step: int,
    frame: int,
    evaluation_index: int,
    video_every: int,
    video_dir: str | Path | None,
    cancelled: Callable[[], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """:func:`evaluate`, and ``video_dir/eval_<frame>.gif`` of its first episode when this is
    the first or every ``video_every``-th evaluation (``video_dir`` None: never)."""
    frames: list[np.ndarray] | None = None
    if video_dir is not None and video_due(evaluation_index, video_every):
        frames = []
    result = evaluate(agent, env, episodes, step, frames, cancelled, on_step)
    if frames:
        write_gif(frames, Path(video_dir) / video_name(frame))  # type: ignore[arg-type]
    return result


def shown_on(progress: Any, episodes: int) -> Callable[[int], None]:
    """An ``on_step`` that keeps a display's "now" row on the evaluation's episode (the panel
    keeps refreshing, a plain log keeps its line every few seconds)."""
    return lambda episode: progress.activity(f"evaluating: episode {episode + 1} of {episodes}")
