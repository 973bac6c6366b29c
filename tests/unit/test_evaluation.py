"""The run core's evaluation: a stopping run cancels it between steps."""

from types import SimpleNamespace

import numpy as np
import pytest

from distdrq.run.evaluation import EvaluationCancelled, evaluate


class _Env:
    def __init__(self, length):
        self.length, self.t, self.steps = length, 0, 0

    def _ts(self):
        return SimpleNamespace(
            observation=np.zeros(1), frame=None, reward=1.0, last=self.t >= self.length
        )

    def reset(self):
        self.t = 0
        return self._ts()

    def step(self, action):
        self.t += 1
        self.steps += 1
        return self._ts()


class _Agent:
    def act(self, obs, step, eval_mode):
        return np.zeros(1)


def test_evaluation_runs_whole_episodes():
    env = _Env(5)
    result = evaluate(_Agent(), env, 3, 0)
    assert result["eval_return"] == 5.0 and result["eval_episodes"] == 3 and env.steps == 15


def test_cancelled_evaluation_stops_within_a_step():
    env = _Env(1000)
    with pytest.raises(EvaluationCancelled, match="episode 1 of 10"):
        evaluate(_Agent(), env, 10, 0, cancelled=lambda: env.steps >= 7)
    assert env.steps == 7


def test_an_evaluation_keeps_a_plain_log_and_the_panel_saying_where_it_is():
    """A CPU evaluation takes minutes: its progress shows as the display's "now" row, a plain
    log gets a line every ``interval`` seconds during it, and the row goes once it ends."""
    import io

    from distdrq.progress import ProgressDisplay
    from distdrq.run.evaluation import shown_on

    out = io.StringIO()
    progress = ProgressDisplay("cartpole", 1000, stream=out, live=False, interval=0.0)
    progress.update(100, 5)
    env = _Env(4)
    evaluate(_Agent(), env, 3, 0, on_step=shown_on(progress, 3))
    lines = out.getvalue().splitlines()
    assert "now evaluating: episode 1 of 3" in lines[1]
    assert "now evaluating: episode 3 of 3" in lines[-1]
    assert len(lines) == 1 + 12  # a line per step at interval 0
    progress.activity(None)
    progress.update(100, 5)
    assert "now" not in out.getvalue().splitlines()[-1]
