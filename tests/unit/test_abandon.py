"""A stopping learner gives up an update in flight only while it has changed nothing
(``Agent.abandonable``): the agent is then bit for bit as before it; past the first optimizer
step the update runs to its end, and the checks never change the maths."""

from __future__ import annotations

import copy

import pytest
import torch
from test_drq import ACTION_DIM, OBS_SHAPE, random_batch, tiny_cfg

from distdrq.agent import make_agent
from distdrq.agent.base import UpdateAbandoned


def tiny_agent(algo: str):
    torch.manual_seed(0)
    return make_agent(OBS_SHAPE, ACTION_DIM, tiny_cfg(algo=algo))


def _state(agent) -> dict:
    return copy.deepcopy(agent.state_dict())  # tensors cloned, not views of live weights


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("algo", ["drq", "drqv2"])
@pytest.mark.parametrize("checks_before_giving_up", [0, 1, 2, 3])
def test_an_update_given_up_before_its_first_step_leaves_the_agent_unchanged(
    algo, checks_before_giving_up
):
    agent = tiny_agent(algo=algo)
    agent.learn(random_batch(seed=1), step=10)  # optimizers hold state
    before = _state(agent)
    calls = []

    def give_up() -> bool:
        calls.append(agent._stepped)
        return len(calls) > checks_before_giving_up

    with pytest.raises(UpdateAbandoned), agent.abandonable(give_up):
        agent.learn(random_batch(seed=2), step=11)
    assert not any(calls)  # every check came before the first optimizer step
    _assert_same(_state(agent), before)
    assert agent._give_up is None
    agent.learn(random_batch(seed=3), step=12)  # and the next update runs


@pytest.mark.parametrize("algo", ["drq", "drqv2"])
def test_an_update_past_its_first_step_runs_to_the_end_with_the_same_result(algo):
    plain, guarded = tiny_agent(algo=algo), tiny_agent(algo=algo)
    for step in range(3):
        torch.manual_seed(step)
        expected = plain.update(random_batch(seed=step), step)
        torch.manual_seed(step)
        with guarded.abandonable(lambda: guarded._stepped):  # true only once it stepped
            got = guarded.update(random_batch(seed=step), step)
        assert got == expected
    _assert_same(_state(guarded), _state(plain))
