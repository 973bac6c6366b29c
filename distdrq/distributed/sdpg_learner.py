"""SDPG's learner actor (flow 2 of DESIGN.md): it drives synchronous iterations.

One iteration: the newest policy weights v_k (one ``ray.put`` object, also published to the
coordinator) go to every :class:`~distdrq.distributed.group_actor.GroupActor`, each runs one
window of its groups and returns a :class:`~distdrq.run.groups.WindowResult` straight to this
actor (the driver never sees them), :meth:`~distdrq.agent.sdpg.SDPGAgent.learn` makes one
step, the weights v_k+1 are published and the iteration's counts (updates = iterations,
nominal frames and steps, finished nominal episodes) go to the coordinator, whose reply says
whether to stop.

A dead env actor's window is **re-run** on its new incarnation with the same weights v_k,
rather than the iteration proceeding without its groups: every transition of iteration k then
still comes from v_k, every iteration learns from all N groups (the critic's batch, the actor
regression's batch and the statistics do not shrink at random), and a window is seconds of
work. The re-runs are counted (``window_reruns``); an actor that stays down
``RERUN_PATIENCE_S`` fails the learner's loop (the supervisor then recreates the learner).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray
import torch

from distdrq.agent import make_agent
from distdrq.checkpoint import to_cpu
from distdrq.config import Config
from distdrq.distributed.learner import continued
from distdrq.distributed.messages import IterationReport, LearnerReply, LearnerReport
from distdrq.envs.clones import NominalEnv
from distdrq.run.groups import WindowResult

RERUN_PATIENCE_S = 300.0
"""How long an iteration waits for a dead env actor's new incarnation to run its window."""
LOOKUP_PATIENCE_S = 60.0
"""How long the learner waits for the env actors' names to be registered."""


class _Stopped(Exception):
    """The run stopped while the iteration waited for a restarting actor."""


class SDPGLearner:
    """One SDPG learner process (GPU when given one, else CPU); the same constructor as the
    replay learner's, so the topology and the supervisor create either alike."""

    def __init__(
        self,
        cfg: Config,
        obs_shape: tuple[int, ...],
        action_dim: int,
        run_name: str,
        state: dict[str, Any] | None = None,
        cpu_threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, cpu_threads))
        self.cfg = cfg
        self.run_name = run_name
        self._coord = ray.get_actor(f"{run_name}-coordinator")
        self.starts = ray.get(self._coord.register.remote("learner"))
        torch.manual_seed(cfg.train.seed + 17 * (self.starts - 1))
        self.agent: Any = make_agent(
            obs_shape, action_dim, cfg.agent, sdpg=cfg.sdpg, state_dim=critic_state_dim(cfg)
        )
        self.updates, self.version = 0, 0
        if state is not None:
            self.agent.load_state_dict(state["agent"])
            self.updates, self.version = int(state["updates"]), int(state["version"])
        counters = ray.get(self._coord.snapshot.remote()).counters
        self.version, self.updates = continued(self.starts, self.version, self.updates, counters)
        self._lock = threading.Lock()  # state() never sees half an iteration
        self._report_lock = threading.Lock()
        self._metrics_now: dict[str, float] = {}
        self.reruns = 0
        self._weights = self._publish()

    def _publish(self) -> Any:
        """Put the policy weights once; the coordinator and the next window share the object."""
        ref = ray.put(self.agent.policy_state_dict())
        ray.get(self._coord.publish.remote(self.version, [ref], self.updates))
        return ref

    def device(self) -> str:
        """The torch device updates run on."""
        return str(self.agent.device)

    def run(self) -> int:
        """Iterate until the coordinator says stop; returns the iterations this call made."""
        actors = self._group_actors()
        reply = ray.get(self._coord.report_learner.remote(self.updates))
        made = 0
        while not reply.stop:
            try:
                reply = self.iteration(actors)
            except _Stopped:
                break
            made += 1
        return made

    def iteration(self, actors: list[Any]) -> LearnerReply:
        """One synchronous iteration over every env actor's groups; the coordinator's reply."""
        start = time.perf_counter()
        weights, version = self._weights, self.version
        refs = [actor.run_window.remote(weights, version) for actor in actors]
        coded = [
            self._window(actor, ref, weights, version)
            for actor, ref in zip(actors, refs, strict=True)
        ]
        gathered = time.perf_counter()
        results = [result.decoded() for result in coded]  # pixels: frames came coded
        decoded = time.perf_counter()
        with self._lock:
            metrics = self.agent.learn(results)
            self.updates += 1
            self.version += 1
            # the counts first: publishing also raises the coordinator's update count, and a
            # learner killed between the two must not leave an iteration counted without its
            # frames (a recreated learner continues from the coordinator's counts)
            reply = ray.get(self._coord.report_iteration.remote(self._counts(results)))
            self._weights = self._publish()
        learned = time.perf_counter()
        seconds = {"window_s": gathered - start, "decode_s": decoded - gathered}
        seconds["learner_s"] = learned - decoded
        seconds["iteration_s"] = time.perf_counter() - start
        with self._report_lock:
            self._metrics_now = metrics | seconds | self._window_metrics(coded, seconds)
        return reply

    def _window(self, actor: Any, ref: Any, weights: Any, version: int) -> WindowResult:
        """The actor's window; if the actor died, the same window again on its new
        incarnation (see the module docstring)."""
        deadline = time.monotonic() + RERUN_PATIENCE_S
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                if ray.get(self._coord.should_stop.remote()):
                    raise _Stopped from None
            time.sleep(0.5)
            self.reruns += 1
            ref = actor.run_window.remote(weights, version)

    def _counts(self, results: list[WindowResult]) -> IterationReport:
        nominals = sum(len(r.group_ids) for r in results)
        steps = nominals * results[0].horizon
        returns = [float(x) for r in results for x in r.episode_returns]
        frames = steps * self.cfg.env.action_repeat
        return IterationReport(self.updates, frames, steps, returns)

    def _window_metrics(
        self, results: list[WindowResult], seconds: dict[str, float]
    ) -> dict[str, float]:
        """The actors' time split (summed over actors), the wait beyond the slowest actor's
        work (transfer and scheduling), bytes, re-runs."""
        split = {f"{k}_s": sum(r.seconds.get(k, 0.0) for r in results) for k in _SPLIT}
        slowest = max(sum(r.seconds.get(k, 0.0) for k in _SPLIT) for r in results)
        return split | {
            "transfer_s": max(0.0, seconds["window_s"] - slowest),
            "window_bytes": float(sum(r.nbytes for r in results)),
            "window_reruns": float(self.reruns),
            "updates": float(self.updates),
        }

    def _group_actors(self) -> list[Any]:
        """The env actors by name (a restarted one keeps its handle)."""
        deadline = time.monotonic() + LOOKUP_PATIENCE_S
        names = [f"{self.run_name}-env-{i}" for i in range(self.cfg.distributed.actors)]
        while True:
            try:
                return [ray.get_actor(name) for name in names]
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def take_report(self) -> LearnerReport:
        """The last iteration's metrics (SDPG's quantities and its time split)."""
        with self._report_lock:
            return LearnerReport(self.updates, dict(self._metrics_now), [])

    def state(self) -> dict[str, Any]:
        """Agent (networks, optimizers, temperature, statistics), iterations, weight version."""
        with self._lock:
            return {
                "agent": to_cpu(self.agent.state_dict()),
                "updates": self.updates,
                "version": self.version,
            }

    def ping(self) -> int:
        """Liveness check."""
        return self.updates

    def pid(self) -> int:
        """The learner's process id (tests kill it the way the world does)."""
        return os.getpid()


_SPLIT = ("physics", "render", "policy", "encode")


def critic_state_dim(cfg: Config) -> int:
    """d, the critic's input size, from a state-only nominal (nothing rendered)."""
    probe = NominalEnv(cfg.env, cfg.train.seed, False)
    try:
        return probe.state_dim
    finally:
        probe.close()
