"""The learner's feeding loop (issue 13 part 2): one batch ahead, metrics read back every few
updates, weight snapshots copied asynchronously; the same parameters as the plain loop."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from test_agent import ACTION_DIM, OBS_SHAPE, random_batch, tiny_cfg

from distdrq.agent import make_agent
from distdrq.agent.transfer import DeviceFeed, MetricsReadBack, policy_snapshot

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FIELDS = ("obs", "action", "reward", "discount", "next_obs", "version")


def _agent(device: str, algo: str = "drqv2", seed: int = 3):
    torch.manual_seed(seed)
    return make_agent(OBS_SHAPE, ACTION_DIM, tiny_cfg(device=device, algo=algo))


def _plain(device: str, algo: str, batches: list) -> tuple:
    agent = _agent(device, algo)
    metrics = [agent.update(batch, step) for step, batch in enumerate(batches)]
    return agent, metrics


def _prefetching(device: str, algo: str, batches: list, every: int) -> tuple:
    """The learner's order: launch the update of the batch staged last, then fill and stage
    the next one (the step each update gets is the plain loop's)."""
    agent = _agent(device, algo)
    feed = DeviceFeed(agent, OBS_SHAPE, ACTION_DIM, len(batches[0]), metrics_every=every)
    read = []
    for step, batch in enumerate(batches):
        read.append(feed.update(step - 1))
        host = feed.host_buffer()
        for name in FIELDS:
            getattr(host, name)[...] = getattr(batch, name)
        feed.stage(host)
    read.append(feed.update(len(batches) - 1))
    assert not feed.staged
    return agent, read[1:]


def _tensors(a, b, prefix=""):
    """(path, (tensor of a, tensor of b)) for every tensor of two nested state dicts, which
    must have the same structure."""
    if isinstance(a, torch.Tensor):
        yield prefix, (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), prefix
        for key in a:
            yield from _tensors(a[key], b[key], f"{prefix}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), prefix
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _tensors(x, y, f"{prefix}[{i}]")
    else:
        assert a == b, prefix


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algo", ["drqv2", "drq"])
def test_prefetching_loop_gives_the_plain_loops_parameters(device, algo):
    """N updates from the same seed and batches: every parameter, optimizer moment and the
    metrics' means equal (bit for bit on CPU, where the update reads the host buffer itself)."""
    batches = [random_batch(8, seed=s) for s in range(7)]
    plain, plain_metrics = _plain(device, algo, batches)
    fed, read = _prefetching(device, algo, batches, every=3)
    exact = device == "cpu"
    for name, (a, b) in _tensors(plain.state_dict(), fed.state_dict()):
        if exact:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert plain.num_updates == fed.num_updates == 7
    assert [r is not None for r in read] == [False, False, True, False, False, True, False]
    for key, value in read[2].items():  # the mean of updates 0, 1, 2
        want = np.mean([m[key] for m in plain_metrics[:3]])
        assert value == pytest.approx(want, rel=1e-5, abs=1e-6), key


def test_host_buffers_rotate_and_only_the_last_one_handed_out_stages():
    agent = _agent("cpu")
    feed = DeviceFeed(agent, OBS_SHAPE, ACTION_DIM, 4, depth=2)
    first, second, third = feed.host_buffer(), feed.host_buffer(), feed.host_buffer()
    assert first is third and first is not second
    assert first.obs.shape == (4, *OBS_SHAPE) and first.obs.flags.c_contiguous
    with pytest.raises(ValueError, match="host_buffer\\(\\) returned last"):
        feed.stage(second)
    assert feed.update(0) is None and not feed.staged  # nothing staged: nothing to do
    feed.stage(third)
    assert feed.staged


def test_metrics_are_read_back_as_means_every_k_updates():
    reader = MetricsReadBack(every=2)
    assert reader.add({"loss": torch.tensor(1.0), "q": torch.tensor(4.0)}) is None
    assert reader.add({"loss": torch.tensor(3.0), "q": torch.tensor(2.0)}) == {
        "loss": 2.0,
        "q": 3.0,
    }
    assert reader.add({"loss": torch.tensor(5.0)}) is None  # new keys: the count starts anew
    assert reader.add({"q": torch.tensor(1.0)}) is None
    assert reader.add({"q": torch.tensor(3.0)}) == {"q": 2.0}
    assert MetricsReadBack(every=1).add({"x": torch.tensor(7.0)}) == {"x": 7.0}
    with pytest.raises(ValueError, match="must be >= 1"):
        MetricsReadBack(every=0)


@pytest.mark.parametrize("device", DEVICES)
def test_policy_snapshot_is_the_policy_state_and_does_not_follow_later_updates(device):
    agent = _agent(device)
    snapshot, copied = policy_snapshot(agent)
    assert (copied is None) == (device == "cpu")
    if copied is not None:
        copied.synchronize()
        assert all(t.is_pinned() for t in snapshot.values())
    want = agent.policy_state_dict()
    assert snapshot.keys() == want.keys()
    for key, value in want.items():
        assert snapshot[key].device.type == "cpu" and snapshot[key].is_contiguous()
        assert torch.equal(snapshot[key], value), key
    agent.update(random_batch(8), 0)
    changed = agent.policy_state_dict()
    assert any(not torch.equal(snapshot[k], changed[k]) for k in want)
    assert all(torch.equal(snapshot[k], want[k]) for k in want)


class _Reply:
    stop = False


class _FakeFeed:
    """Counts updates; the first one's caller asks the learner to stop while it runs."""

    def __init__(self, on_update):
        self.staged, self.updates, self.discarded = False, 0, 0
        self.on_update = on_update

    def update(self, step):
        self.staged = False
        self.updates += 1
        self.on_update()
        return None

    def discard(self):
        self.staged = False
        self.discarded += 1


def test_a_stopped_learner_returns_after_the_update_in_progress_without_the_staged_one():
    """Ctrl-C reaches the learner mid-update (``stop()`` on its second thread): run() returns
    once that update ends, dropping the batch staged for the next (on a CPU shared with eight
    actors an update takes seconds); without stop() the loop goes on."""
    import threading

    from distdrq.config import load_config
    from distdrq.distributed.learner import Learner

    def learner_stopped_in_update(n: int) -> Learner:
        learner = Learner.__new__(Learner)
        learner._stop_now = threading.Event()
        learner._lock = threading.Lock()
        learner._frames, learner.updates, learner.version = 0, 0, 0
        learner.cfg = load_config("cartpole_swingup")
        learner.publisher = type("P", (), {"flush": lambda self: None, "publish": print})()
        learner._report = lambda: _Reply()
        learner.feed = _FakeFeed(lambda: learner.updates == n - 1 and learner.stop())
        learner.agent = type("A", (), {"abandonable": lambda self, give_up: nullcontext()})()

        def stage(pending):
            learner.feed.staged = True
            return True

        learner._stage_next = stage
        learner.feed.staged = True
        return learner

    for n in (1, 3):
        learner = learner_stopped_in_update(n)
        assert learner.run() == n
        assert learner.feed.updates == n and learner.feed.discarded == 1
        assert learner.updates == n


def test_a_stopped_learner_gives_up_an_update_that_has_not_stepped_yet():
    """The stop reaches the learner while its update runs the critic's forward pass (the
    slow part on a busy CPU): run() returns without finishing that update, the agent is as
    after the last whole one, and the update is not counted."""
    import threading

    from distdrq.config import load_config
    from distdrq.distributed.learner import Learner

    learner = Learner.__new__(Learner)
    learner._stop_now = threading.Event()
    learner._lock = threading.Lock()
    learner._frames, learner.updates, learner.version, learner.abandoned_updates = 0, 0, 0, 0
    learner.cfg = load_config("cartpole_swingup")
    learner.publisher = type("P", (), {"flush": lambda self: None, "publish": print})()
    learner._report = lambda: _Reply()
    torch.manual_seed(0)
    learner.agent = make_agent(OBS_SHAPE, ACTION_DIM, tiny_cfg())
    learner.feed = DeviceFeed(learner.agent, OBS_SHAPE, ACTION_DIM, batch_size=8)
    batches = iter(random_batch(8, seed=i) for i in range(100))

    def stage(pending):
        host = learner.feed.host_buffer()
        for key, value in vars(next(batches)).items():
            getattr(host, key)[...] = value
        learner.feed.stage(host)
        return True

    learner._stage_next = stage
    stop_at = 3  # the stop comes during the critic's forward pass of the fourth update

    def stop_in_fourth_update(*_) -> None:
        if learner.updates == stop_at:
            learner.stop()

    learner.agent.critic.register_forward_pre_hook(stop_in_fourth_update)
    stage(None)
    made = learner.run()
    assert made == learner.updates == stop_at and learner.abandoned_updates == 1
    assert learner.agent.num_updates == stop_at
