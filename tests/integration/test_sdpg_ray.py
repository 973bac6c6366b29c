"""SDPG's distributed iteration on a real local Ray cluster (tiny sizes, real MuJoCo)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ray  # starts Ray: one such test at a time (tests/conftest.py)

ray = pytest.importorskip("ray")

from distdrq.agent import make_agent  # noqa: E402
from distdrq.config import load_config  # noqa: E402
from distdrq.distributed.coordinator import Coordinator  # noqa: E402
from distdrq.distributed.group_actor import GroupActor, group_share  # noqa: E402
from distdrq.distributed.sdpg_learner import SDPGLearner  # noqa: E402
from distdrq.run.groups import GroupRunner, merge_clones  # noqa: E402

TINY = [
    "agent.algo=sdpg",
    "agent.device=cpu",
    "sdpg.obs=state",
    "sdpg.nominals=2",
    "sdpg.clones=2",
    "sdpg.horizon=6",
]


def _start(cfg, actors: int, name: str):
    """A coordinator and ``actors`` group actors by name (as the topology makes them), and a
    learner in this process."""
    coord = ray.remote(Coordinator).options(name=f"{name}-coordinator").remote(name)
    options = {"max_restarts": -1, "max_concurrency": 3, "num_cpus": 0}
    group_cls = ray.remote(GroupActor)
    envs = [
        group_cls.options(name=f"{name}-env-{i}", **options).remote(i, cfg, name, 0)
        for i in range(actors)
    ]
    learner = SDPGLearner(cfg, (17,), 6, name)  # cheetah_run: 17 state dims, 6 actions
    return coord, envs, learner


def _stop(coord, envs) -> None:
    for actor in [coord, *envs]:
        ray.kill(actor, no_restart=True)


def test_group_share_is_even_and_whole():
    shares = [group_share(5, 2, i) for i in range(2)]
    assert shares == [[0, 1, 2], [3, 4]]
    assert group_share(2, 2, 1) == [1]


def test_one_actor_iteration_equals_the_single_process_one(ray_cluster):
    """Window and learner step through Ray equal, bit for bit, the in-process ones (same
    seeds): the distributed layer only moves data."""
    cfg = load_config("cheetah_run", overrides=[*TINY, "distributed.actors=1"])
    coord, envs, learner = _start(cfg, 1, "sdpg-equal")
    try:
        torch.manual_seed(cfg.train.seed)
        agent = make_agent((17,), 6, cfg.agent, sdpg=cfg.sdpg, state_dim=17)
        runner = GroupRunner(cfg.env, cfg.sdpg, range(2), cfg.train.seed)
        runner.set_weights(agent.policy_state_dict(), 0)
        local = runner.run_window()
        remote = ray.get(envs[0].run_window.remote(learner.agent.policy_state_dict(), 0))
        for field in ("states", "rewards", "noise", "means", "dones"):
            np.testing.assert_array_equal(getattr(local, field), getattr(remote, field))
        # the next iteration, driven by the learner, against the in-process step (the
        # critic's minibatches draw from torch's generator: the same seed for each pair)
        for learn, window in ((agent.learn, local), (learner.agent.learn, remote)):
            torch.manual_seed(1)
            learn([window])
        runner.set_weights(agent.policy_state_dict(), 1)
        learner.version = 1
        learner._weights = ray.put(learner.agent.policy_state_dict())
        torch.manual_seed(2)
        learner.iteration(envs)
        torch.manual_seed(2)
        agent.learn([runner.run_window()])
        mine, theirs = agent.policy_state_dict(), learner.agent.policy_state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        runner.close()
    finally:
        _stop(coord, envs)


def test_iterations_count_publish_and_rerun_a_killed_actor(ray_cluster):
    cfg = load_config("cheetah_run", overrides=[*TINY, "distributed.actors=2"])
    coord, envs, learner = _start(cfg, 2, "sdpg-rerun")
    try:
        assert sorted(g for e in envs for g in ray.get(e.groups.remote())) == [0, 1]
        before = {k: v.clone() for k, v in learner.agent.policy_state_dict().items()}
        reply = learner.iteration(envs)
        c = ray.get(coord.snapshot.remote()).counters
        per_iteration = 2 * 6 * cfg.env.action_repeat  # nominals x window x action repeat
        assert (c.updates, c.frames, c.steps, c.weight_version) == (1, per_iteration, 12, 1)
        assert reply.frames == per_iteration and not reply.stop
        after = learner.agent.policy_state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned
        report = learner.take_report()
        assert report.updates == 1 and report.metrics["window_reruns"] == 0
        assert {"sigma", "temperature", "critic_loss", "window_bytes"} <= set(report.metrics)

        # SIGKILL one group actor: Ray restarts it and the learner re-runs its window there
        os.kill(ray.get(envs[1].pid.remote()), signal.SIGKILL)
        learner.iteration(envs)
        c = ray.get(coord.snapshot.remote()).counters
        assert (c.updates, c.frames) == (2, 2 * per_iteration)  # both groups learned from
        assert learner.take_report().metrics["window_reruns"] >= 1
        assert ray.get(envs[1].ping.remote()) == 2  # its second incarnation
        state = learner.state()
        assert (state["updates"], state["version"], state["agent"]["num_updates"]) == (2, 2, 2)
    finally:
        _stop(coord, envs)


def test_pixel_actor_iteration(ray_cluster):
    """A pixel nominal renders on the actor's own runner thread, whichever Ray thread asks
    (its GL context is current on the thread that made it), in the constructor and in windows."""
    overrides = [*TINY[:2], "sdpg.nominals=2", "sdpg.clones=1", "sdpg.horizon=4"]
    cfg = load_config("cheetah_run", overrides=[*overrides, "distributed.actors=1"])
    coord = ray.remote(Coordinator).options(name="sdpg-pix-coordinator").remote("sdpg-pix")
    actor = ray.remote(GroupActor).options(name="sdpg-pix-env-0", max_concurrency=3)
    envs = [actor.remote(0, cfg, "sdpg-pix", 0)]
    try:
        learner = SDPGLearner(cfg, (9, 84, 84), 6, "sdpg-pix")
        for _ in range(2):  # Ray may answer each call on another of its threads
            learner.iteration(envs)
        metrics = learner.take_report().metrics
        assert metrics["render_s"] > 0
        # the frames came coded by the replay codec and were decoded here
        assert metrics["encode_s"] > 0 and metrics["decode_s"] > 0
        raw_frames = 2 * (3 + 4) * 3 * 84 * 84  # groups x (stack + window) x frame bytes
        assert metrics["window_bytes"] < raw_frames / 2
        assert ray.get(coord.snapshot.remote()).counters.updates == 2
    finally:
        _stop(coord, envs)


def _slow_group_actor(delay: float):
    """A GroupActor whose clone jobs take ``delay`` s more (a busy or slow machine); made in a
    function so that Ray ships the class by value."""

    class SlowGroupActor(GroupActor):
        def run_clones(self, jobs):
            time.sleep(delay)
            return super().run_clones(jobs)

    return SlowGroupActor


def test_a_slow_actor_gets_fewer_clone_jobs_and_the_window_is_the_same(ray_cluster):
    """Work sharing: clone jobs go to whichever actor is free, so the fast actor steps most
    of them; the merged windows equal the in-process ones bit for bit."""
    cfg = load_config("cheetah_run", overrides=[*TINY, "sdpg.clones=4", "distributed.actors=2"])
    name = "sdpg-slow"
    coord = ray.remote(Coordinator).options(name=f"{name}-coordinator").remote(name)
    options = {"max_restarts": -1, "max_concurrency": 3, "num_cpus": 0}
    classes = [GroupActor, _slow_group_actor(0.5)]
    envs = [
        ray.remote(cls).options(name=f"{name}-env-{i}", **options).remote(i, cfg, name, 0)
        for i, cls in enumerate(classes)
    ]
    try:
        learner = SDPGLearner(cfg, (17,), 6, name)
        runners = [GroupRunner(cfg.env, cfg.sdpg, [g], cfg.train.seed) for g in range(2)]
        weights = learner.agent.policy_state_dict()
        for runner in runners:
            runner.set_weights(weights, 0)
        parts = [ray.get(e.run_nominals.remote(learner._weights, 0)) for e in envs]
        clones, _ = learner._clones(envs, [jobs for _, jobs in parts])
        assert sum(learner.clone_jobs) == 8 and learner.clone_jobs[0] > learner.clone_jobs[1]
        for runner, (part, _), pieces in zip(runners, parts, clones, strict=True):
            local = runner.run_window()
            merged = merge_clones(part, pieces, cfg.sdpg.clones)
            for field in ("states", "rewards", "dones", "reset_index", "noise", "means"):
                np.testing.assert_array_equal(getattr(local, field), getattr(merged, field))
            runner.close()
        learner.iteration(envs)  # and a whole iteration through both phases
        assert learner.take_report().metrics["clones_s"] > 0
    finally:
        _stop(coord, envs)
