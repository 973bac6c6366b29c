"""SDPG's learner actor (flow 2 of DESIGN.md): it drives synchronous iterations.

One iteration: the newest policy weights v_k (one ``ray.put`` object, also published to the
coordinator) go to every :class:`~distdrq.distributed.group_actor.GroupActor`, each steps its
nominals through one window and returns their part of a
:class:`~distdrq.run.groups.WindowResult` and its groups' clone jobs straight to this actor (the
driver never sees them); the clone jobs, cut into pieces, go to whichever actor is free (work
sharing: a slow or busy actor holds the iteration for one piece, not for all its groups'
clones); the pieces come back and :func:`~distdrq.run.groups.merge_clones` completes each
window (bit for bit the lockstep one); :meth:`~distdrq.agent.sdpg.SDPGAgent.learn` makes one
step, the weights v_k+1 are published and the iteration's counts (updates = iterations,
nominal frames and steps, finished nominal episodes) go to the coordinator, whose reply says
whether to stop.

A dead env actor's nominal window is **re-run** on its new incarnation (a clone piece it held
goes to the next free actor) with the same weights v_k,
rather than the iteration proceeding without its groups: every transition of iteration k then
still comes from v_k, every iteration learns from all N groups (the critic's batch, the actor
regression's batch and the statistics do not shrink at random), and a window is seconds of
work. The re-runs are counted (``window_reruns``); an actor that stays down
``RERUN_PATIENCE_S`` fails the learner's loop (the supervisor then recreates the learner).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from typing import Any

import ray
import torch

from distdrq.agent import make_agent
from distdrq.checkpoint import to_cpu
from distdrq.config import Config
from distdrq.distributed.learner import continued, learner_process
from distdrq.distributed.messages import IterationReport, LearnerReply, LearnerReport
from distdrq.envs.clones import NominalEnv
from distdrq.run.groups import CloneJob, CloneResult, WindowResult, merge_clones

RERUN_PATIENCE_S = 300.0
"""How long an iteration waits for a dead env actor's new incarnation to run its window."""
CLONE_JOBS_PER_ACTOR = 4
"""Phase 2 cuts the clones into about this many jobs per env actor: finer jobs balance a slow
actor better, each costs a Ray call (about a millisecond)."""
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
        learner_process(cpu_threads)
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
        self.clone_jobs: list[int] = []
        """clone jobs each env actor stepped in the last iteration"""
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
        """One synchronous iteration over every env actor's groups; the coordinator's reply.

        Phase 1: every actor steps its nominals; phase 2: their clone jobs, cut into about
        ``CLONE_JOBS_PER_ACTOR`` pieces per actor, go to whichever actor is free (a slow actor
        holds the iteration for one piece, not for all its clones)."""
        start = time.perf_counter()
        weights, version = self._weights, self.version
        refs = [actor.run_nominals.remote(weights, version) for actor in actors]
        parts = [
            self._nominals(actor, ref, weights, version)
            for actor, ref in zip(actors, refs, strict=True)
        ]
        nominals = time.perf_counter()
        clones, busy = self._clones(actors, [jobs for _, jobs in parts])
        gathered = time.perf_counter()
        coded = [part for part, _ in parts]
        decoded_parts = [part.decoded() for part in coded]  # pixels: frames came coded
        decoded = time.perf_counter()
        p = self.cfg.sdpg.clones
        results = [merge_clones(part, c, p) for part, c in zip(decoded_parts, clones, strict=True)]
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
        seconds["nominals_s"] = nominals - start
        seconds["clones_s"] = gathered - nominals
        seconds["learner_s"] = learned - decoded
        seconds["iteration_s"] = time.perf_counter() - start
        work = [
            sum(part.seconds.get(k, 0.0) for k in _SPLIT) + busy[i] for i, part in enumerate(coded)
        ]
        clone_bytes = sum(_clone_bytes(c) for per_part in clones for c in per_part)
        with self._report_lock:
            self._metrics_now = (
                metrics | seconds | self._window_metrics(results, coded, seconds, work, clone_bytes)
            )
        return reply

    def _nominals(
        self, actor: Any, ref: Any, weights: Any, version: int
    ) -> tuple[WindowResult, list[CloneJob]]:
        """The actor's nominal window and clone jobs; if the actor died, the same window again
        on its new incarnation (see the module docstring)."""
        deadline = time.monotonic() + RERUN_PATIENCE_S
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError:
                self._down(deadline)
            self.reruns += 1
            ref = actor.run_nominals.remote(weights, version)

    def _down(self, deadline: float) -> None:
        """An actor call failed: raise if the run stops or the patience is spent, else pause."""
        if time.monotonic() > deadline:
            raise
        if ray.get(self._coord.should_stop.remote()):
            raise _Stopped from None
        time.sleep(0.5)

    def _clones(
        self, actors: list[Any], jobs: list[list[CloneJob]]
    ) -> tuple[list[list[CloneResult]], list[float]]:
        """Every clone job, in pieces, each to the next free actor; per part (actor of phase
        1) its groups' clone results, and per actor the seconds it stepped clones. A piece
        whose actor died goes to another (or to that one's new incarnation)."""
        total = sum(job.clones for per in jobs for job in per)
        size = max(1, math.ceil(total / (CLONE_JOBS_PER_ACTOR * len(actors))))
        self.clone_jobs = [0] * len(actors)
        queue = deque(
            (i, piece) for i, per in enumerate(jobs) for job in per for piece in job.split(size)
        )
        results: list[list[CloneResult]] = [[] for _ in jobs]
        busy = [0.0] * len(actors)
        free = deque(range(len(actors)))
        running: dict[Any, tuple[int, tuple[int, CloneJob]]] = {}
        deadline = time.monotonic() + RERUN_PATIENCE_S
        while queue or running:
            while queue and free:
                a = free.popleft()
                unit = queue.popleft()
                running[actors[a].run_clones.remote([unit[1]])] = (a, unit)
            done, _ = ray.wait(list(running), num_returns=1)
            a, unit = running.pop(done[0])
            try:
                (result,) = ray.get(done[0])
            except ray.exceptions.RayActorError:
                self.reruns += 1
                queue.appendleft(unit)  # another actor takes it; this one after its restart
                self._down(deadline)
                free.append(a)
                continue
            results[unit[0]].append(result)
            busy[a] += result.seconds
            self.clone_jobs[a] += 1
            free.append(a)
        return results, busy

    def _counts(self, results: list[WindowResult]) -> IterationReport:
        nominals = sum(len(r.group_ids) for r in results)
        steps = nominals * results[0].horizon
        returns = [float(x) for r in results for x in r.episode_returns]
        frames = steps * self.cfg.env.action_repeat
        return IterationReport(self.updates, frames, steps, returns)

    def _window_metrics(
        self,
        results: list[WindowResult],
        parts: list[WindowResult],
        seconds: dict[str, float],
        work: list[float],
        clone_bytes: int,
    ) -> dict[str, float]:
        """The actors' time split (summed over actors; clone physics in ``physics_s``), the
        wait beyond the busiest actor's work (transfer and scheduling), bytes, re-runs."""
        split = {f"{k}_s": sum(r.seconds.get(k, 0.0) for r in results) for k in _SPLIT}
        return split | {
            "transfer_s": max(0.0, seconds["window_s"] - max(work)),
            "window_bytes": float(sum(p.nbytes for p in parts) + clone_bytes),
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


def _clone_bytes(result: CloneResult) -> int:
    arrays = (result.states, result.rewards, result.terminated, result.dones)
    return sum(a.nbytes for a in arrays) + sum(state.nbytes for _, _, state in result.resets)


def critic_state_dim(cfg: Config) -> int:
    """d, the critic's input size, from a state-only nominal (nothing rendered)."""
    probe = NominalEnv(cfg.env, cfg.train.seed, False)
    try:
        return probe.state_dim
    finally:
        probe.close()
