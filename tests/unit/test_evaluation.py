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
