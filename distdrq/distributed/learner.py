"""The learner actor: prefetched batches from the shards, DrQ-v2 updates, weight broadcasts.

It keeps ``distributed.prefetch`` sample requests in flight so the device does not wait for
replay, updates with the same :class:`~distdrq.agent.DrQV2Agent` as ``distdrq train``, publishes
the policy weights every ``distributed.weight_sync_every`` updates as one ``ray.put`` object, and
measures policy lag (learner version minus the version that produced each sampled transition).
Its state leaves through :meth:`Learner.state` so the driver can checkpoint it on any node.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import ray
import torch

from distdrq.agent import make_agent
from distdrq.checkpoint import to_cpu
from distdrq.config import Config
from distdrq.distributed.env_actor import lookup
from distdrq.distributed.messages import LearnerReport
from distdrq.distributed.replay_actor import ReplayClient
from distdrq.run.counters import Counters


class Learner:
    """One learner process (GPU when given one, else CPU)."""

    def __init__(
        self,
        cfg: Config,
        obs_shape: tuple[int, int, int],
        action_dim: int,
        run_name: str,
        state: dict[str, Any] | None = None,
        cpu_threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, cpu_threads))
        coordinator, shards, limiter = lookup(run_name, cfg.distributed.shards)
        self.cfg = cfg
        self._coord = coordinator
        self.starts = ray.get(coordinator.register.remote("learner"))
        torch.manual_seed(cfg.train.seed + 17 * self.starts)
        self.agent = make_agent(obs_shape, action_dim, cfg.agent)
        self.client = ReplayClient(shards, seed=cfg.train.seed + 31 * self.starts, limiter=limiter)
        self.updates = 0
        self.version = 0
        if state is not None:
            self.agent.load_state_dict(state["agent"])
            self.updates = int(state["updates"])
            self.version = int(state["version"])
        self._continue_after(ray.get(coordinator.snapshot.remote()).counters)
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()  # the report never waits for an update
        self._metrics_now: dict[str, float] = {}
        self._lag: deque[float] = deque(maxlen=200)
        self._sample_wait = 0.0
        self._latencies: list[float] = []
        self.nonfinite_batches = 0
        self._publish()

    def _continue_after(self, counters: Counters) -> None:
        self.version, self.updates = continued(self.starts, self.version, self.updates, counters)

    def _publish(self) -> None:
        ref = ray.put(self.agent.policy_state_dict())
        ray.get(self._coord.publish.remote(self.version, [ref], self.updates))

    def device(self) -> str:
        """The torch device updates run on."""
        return str(self.agent.device)

    def run(self) -> int:
        """Update until the coordinator says stop; returns the updates this call made."""
        cfg = self.cfg
        batch_size = cfg.agent.batch_size
        pending: deque[Any] = deque()
        reply = ray.get(self._coord.report_learner.remote(self.updates))
        frames = reply.frames
        last_report = time.monotonic()
        metrics: dict[str, float] = {}
        made = 0
        while not reply.stop:
            while len(pending) < cfg.distributed.prefetch:
                pending.append(self.client.request(batch_size, timeout=1.0))
            start = time.monotonic()
            request = pending.popleft()
            if not request:  # replay still empty: wait instead of spinning on stats calls
                time.sleep(0.2)
            batch = self.client.collect(request) if request else None
            waited = time.monotonic() - start
            self._sample_wait += waited
            if batch is not None:
                with self._report_lock:
                    self._latencies.append(waited)
            if batch is not None and not _finite(batch):
                # replay validates every insert; this is the last line of defence, so that one
                # bad batch can never turn the weights into NaN
                self.nonfinite_batches += 1
                batch = None
            if batch is not None:
                with self._lock:
                    metrics = self.agent.update(batch, frames // cfg.env.action_repeat)
                    self.updates += 1
                    made += 1
                    lag = self.version - batch.version
                    self._lag.extend(np.asarray(lag, dtype=np.float64).tolist()[:8])
                    if self.updates % cfg.distributed.weight_sync_every == 0:
                        self.version += 1
                        self._publish()
            now = time.monotonic()
            if now - last_report >= 1.0 or batch is None:
                with self._report_lock:
                    self._metrics_now = self._metrics(metrics)
                reply = ray.get(self._coord.report_learner.remote(self.updates))
                frames = reply.frames
                last_report = now
        return made

    def take_report(self) -> LearnerReport:
        """Latest losses, policy lag and counts, and the batch waits since the last call (the
        driver reads them for its display and Prometheus; they do not pass the coordinator)."""
        with self._report_lock:
            latencies, self._latencies = self._latencies, []
            return LearnerReport(self.updates, dict(self._metrics_now), latencies)

    def _metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        out = dict(metrics)
        if self._lag:
            lag = np.asarray(self._lag)
            out["policy_lag_mean"] = float(lag.mean())
            out["policy_lag_max"] = float(lag.max())
        out["sample_wait_seconds"] = self._sample_wait
        out["nonfinite_batches"] = float(self.nonfinite_batches)
        out["updates"] = float(self.updates)
        if self.agent.device.type == "cuda":
            out["gpu_memory_bytes"] = float(torch.cuda.max_memory_allocated(self.agent.device))
        return out

    def state(self) -> dict[str, Any]:
        """Agent (networks, optimizers, scalers), update count and weight version, on CPU."""
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


def continued(starts: int, version: int, updates: int, counters: Counters) -> tuple[int, int]:
    """(weight version, updates) a learner continues from: never reuse a version or go back.

    A recreated learner starts from the last checkpoint (or from scratch), older than what
    its dead predecessor published: its first version is one past the coordinator's newest,
    so actors switch to its weights at once and policy lag stays measured against versions
    that only grow. Its update count continues the run's.
    """
    published = counters.weight_version
    if starts > 1 or published > version:
        version = max(version, published + 1)
    return version, max(updates, counters.updates)


def _finite(batch: Any) -> bool:
    """Whether a batch's actions, rewards and discounts are all finite (frames are uint8)."""
    return bool(
        np.isfinite(batch.action).all()
        and np.isfinite(batch.reward).all()
        and np.isfinite(batch.discount).all()
    )
