"""The learner actor: prefetched batches from the shards, DrQ-v2 updates, weight broadcasts.

It keeps ``distributed.prefetch`` sample requests in flight so the device does not wait for
replay, decodes the batches that shards send coded (``replay.decode_on=learner``) on
``replay.decode_threads`` threads into one staging batch (pinned on a GPU), updates with the
same :class:`~distdrq.agent.DrQV2Agent` as ``distdrq train``, publishes the policy weights
every ``distributed.weight_sync_every`` updates as one ``ray.put`` object, and measures policy
lag (learner version minus the version that produced each sampled transition).
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
from distdrq.agent.base import host_allocator
from distdrq.checkpoint import to_cpu
from distdrq.config import Config
from distdrq.distributed.env_actor import lookup
from distdrq.distributed.messages import LearnerReport
from distdrq.distributed.replay_actor import ReplayClient
from distdrq.replay.decoding import DecoderPool, empty_batch


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
        self.decoder = (
            DecoderPool(cfg.replay.decode_threads) if cfg.replay.learner_decodes() else None
        )
        self.client = ReplayClient(
            shards, seed=cfg.train.seed + 31 * self.starts, limiter=limiter, decoder=self.decoder
        )
        # the batch is assembled (and decoded) here, in pinned memory on a GPU node
        self.staging = empty_batch(
            obs_shape, action_dim, cfg.agent.batch_size, host_allocator(self.agent.device)
        )
        self.updates = 0
        self.version = 0
        if state is not None:
            self.agent.load_state_dict(state["agent"])
            self.updates = int(state["updates"])
            self.version = int(state["version"])
        self._continue_after(ray.get(coordinator.snapshot.remote())["counters"])
        self._lock = threading.Lock()
        self._lag: deque[float] = deque(maxlen=200)
        self._sample_wait = 0.0
        self._latencies: list[float] = []
        self.nonfinite_batches = 0
        self._publish()

    def _continue_after(self, counters: dict[str, Any]) -> None:
        """Never reuse a weight version or go back in updates.

        A recreated learner starts from the last checkpoint (or from scratch), older than what
        its dead predecessor published: its first version is one past the coordinator's newest,
        so env actors switch to its weights at once and policy lag stays measured against
        versions that only grow. Its update count continues the run's.
        """
        published = int(counters["weight_version"])
        if self.starts > 1 or published > self.version:
            self.version = max(self.version, published + 1)
        self.updates = max(self.updates, int(counters["updates"]))

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
        reply = ray.get(self._coord.report_learner.remote(LearnerReport(self.updates)))
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
            batch = self.client.collect(request, self.staging) if request else None
            waited = time.monotonic() - start
            self._sample_wait += waited
            if batch is not None:
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
                latencies, self._latencies = self._latencies, []
                report = LearnerReport(self.updates, self._metrics(metrics), latencies)
                reply = ray.get(self._coord.report_learner.remote(report))
                frames = reply.frames
                last_report = now
        return made

    def _metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        out = dict(metrics)
        if self._lag:
            lag = np.asarray(self._lag)
            out["policy_lag_mean"] = float(lag.mean())
            out["policy_lag_max"] = float(lag.max())
        out["sample_wait_seconds"] = self._sample_wait
        out["nonfinite_batches"] = float(self.nonfinite_batches)
        out["replay_decode_failures"] = float(self.client.decode_failures)
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


def _finite(batch: Any) -> bool:
    """Whether a batch's actions, rewards and discounts are all finite (frames are uint8)."""
    return bool(
        np.isfinite(batch.action).all()
        and np.isfinite(batch.reward).all()
        and np.isfinite(batch.discount).all()
    )
