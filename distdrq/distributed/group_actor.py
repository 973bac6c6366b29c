"""SDPG's env actor (flow 2 of DESIGN.md): a :class:`~distdrq.run.groups.GroupRunner` owning
this actor's share of the groups, run one window at a time when the learner asks: its
nominals (:meth:`GroupActor.run_nominals`), then whichever clone jobs of any actor's groups the
learner hands it (:meth:`GroupActor.run_clones`), so that a slow actor holds an iteration only
for its nominals and its last clone job.

The actor has no loop of its own: the SDPG learner calls :meth:`GroupActor.run_window` once
per iteration with that iteration's weights (one ``ray.put`` object, which Ray resolves in
the actor). Its :meth:`GroupActor.run` only waits for the run to stop, so that the supervisor
watches this actor as it watches every other role: when the process dies, the ``run`` call
fails, Ray restarts the actor (``max_restarts=-1``), and the supervisor counts the restart and
starts ``run`` again once the new incarnation answers a ping. A new incarnation's nominals
start fresh episodes (an episode in progress is lost, as when a DrQ-v2 env actor dies).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
import torch

from distdrq.config import Config
from distdrq.distributed.env_actor import pin_threads
from distdrq.run.groups import CloneJob, CloneResult, GroupRunner, WindowResult

STOP_POLL_S = 1.0
"""How often a waiting :meth:`GroupActor.run` asks the coordinator whether the run stops."""


def group_share(nominals: int, actors: int, index: int) -> list[int]:
    """The groups (global indices) actor ``index`` of ``actors`` owns: an even split, the
    first ``nominals % actors`` actors one group more."""
    return [int(g) for g in np.array_split(np.arange(nominals), actors)[index]]


class GroupActor:
    """One env process of an SDPG launch: whole groups (a nominal and its clones each)."""

    def __init__(self, index: int, cfg: Config, run_name: str, session: int) -> None:
        pin_threads()
        self.role = f"env-{index}"
        self._coord = ray.get_actor(f"{run_name}-coordinator")
        self.starts = ray.get(self._coord.register.remote(self.role))
        # the first incarnation of the first session seeds as `distdrq train` does
        seed = cfg.train.seed + 100_003 * (self.starts - 1 + 64 * session)
        groups = group_share(cfg.sdpg.nominals, cfg.distributed.actors, index)
        # the runner lives on one thread of its own: a pixel nominal's GL context is current
        # on the thread that made it, while Ray answers calls on any of its threads; one
        # thread also runs one window at a time (a recreated learner may ask while its dead
        # predecessor's window still runs here: Ray does not cancel a dead caller's call)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="groups")
        self.runner = self._thread.submit(GroupRunner, cfg.env, cfg.sdpg, groups, seed).result()
        self._stop = threading.Event()
        self._codec = cfg.replay.codec

    def run_window(self, weights: dict[str, torch.Tensor], version: int) -> WindowResult:
        """One window of this actor's groups acting with ``weights`` (version ``version``),
        clones included."""
        return self._thread.submit(self._window, weights, version).result()

    def run_nominals(
        self, weights: dict[str, torch.Tensor], version: int
    ) -> tuple[WindowResult, list[CloneJob]]:
        """Phase 1 of a window: this actor's nominals only (frames coded), and the clone jobs
        of its groups, which the learner spreads over every actor (:meth:`run_clones`)."""
        return self._thread.submit(self._nominals, weights, version).result()

    def run_clones(self, jobs: list[CloneJob]) -> list[CloneResult]:
        """Phase 2: step these clone jobs (any actor's groups) on this actor's worker physics."""
        return self._thread.submit(self.runner.run_clones, jobs).result()

    def _nominals(
        self, weights: dict[str, torch.Tensor], version: int
    ) -> tuple[WindowResult, list[CloneJob]]:
        self.runner.set_weights(weights, version)
        part, jobs = self.runner.run_nominals()
        return self._coded(part), jobs

    def _window(self, weights: dict[str, torch.Tensor], version: int) -> WindowResult:
        self.runner.set_weights(weights, version)
        return self._coded(self.runner.run_window())

    def _coded(self, result: WindowResult) -> WindowResult:
        """``result`` with the nominals' frames (pixels) coded as replay chunks, timed."""
        start = time.perf_counter()
        coded = result.coded(self._codec)
        coded.seconds["encode"] = time.perf_counter() - start
        return coded

    def run(self) -> None:
        """Wait until the run stops (:meth:`stop`, or the coordinator's stop flag)."""
        while not self._stop.wait(STOP_POLL_S):
            if ray.get(self._coord.should_stop.remote()):
                return

    def stop(self) -> None:
        """End :meth:`run` now (a window in progress finishes: windows are short)."""
        self._stop.set()

    def groups(self) -> list[int]:
        """The groups this actor owns."""
        return [int(g) for g in self.runner.group_ids]

    def ping(self) -> int:
        """Liveness check: how often this role has started."""
        return self.starts

    def pid(self) -> int:
        """The actor's process id (tests kill it the way the world does)."""
        return os.getpid()
