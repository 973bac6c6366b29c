"""The learner actor: prefetched batches from the shards, DrQ-v2 updates, weight broadcasts.

It keeps ``distributed.prefetch`` sample requests in flight so the device does not wait for
replay, decodes the batches that shards send coded (``replay.decode_on=learner``) on
``replay.decode_threads`` threads, and feeds the device one batch ahead
(:class:`~distdrq.agent.transfer.DeviceFeed`): while an update computes, the next batch is
collected and decoded into a pinned host buffer and copied on a side stream; metrics are read
back every ``agent.metrics_every`` updates. Updates use the same agent classes as ``distdrq
train``. The policy weights are published every ``distributed.weight_sync_every`` updates by a
background thread (:class:`WeightPublisher`), so publishing never stalls the updates. Policy
lag (learner version minus the version that produced each sampled transition) is measured.
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
from distdrq.agent.base import Agent, UpdateAbandoned
from distdrq.agent.transfer import DeviceFeed, policy_snapshot
from distdrq.checkpoint import to_cpu
from distdrq.config import Config
from distdrq.distributed import crash_tracebacks
from distdrq.distributed.env_actor import lookup
from distdrq.distributed.messages import LearnerReport
from distdrq.distributed.replay_actor import ReplayClient
from distdrq.replay.decoding import DecoderPool
from distdrq.run.counters import Counters
from distdrq.types import Batch


class WeightPublisher:
    """Publishes the policy weights from a background thread.

    :meth:`publish` only starts the copies of the weights to host memory (asynchronous on a
    GPU) and hands them over; the thread waits for them, puts them in the object store and
    tells the coordinator. A version still waiting when a newer one comes is replaced by it (versions
    only grow; env actors take the newest). An error in the thread (the coordinator gone) is
    raised by the next :meth:`publish` or :meth:`flush`.
    """

    def __init__(self, coordinator: Any, agent: Agent) -> None:
        self._coord = coordinator
        self._agent = agent
        self._cond = threading.Condition()
        self._pending: tuple[Any, ...] | None = None
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self.superseded = 0
        """versions replaced by a newer one before they were sent"""
        self._thread = threading.Thread(target=self._run, name="weight-publisher", daemon=True)
        self._thread.start()

    def publish(self, version: int, updates: int, wait: bool = False) -> None:
        """Publish the weights as they are after the updates launched so far, as ``version``;
        ``wait``: on this thread, returning once the coordinator has them."""
        self._raise_error()
        weights, copied = policy_snapshot(self._agent)
        item = (weights, copied, version, updates)
        if wait:
            self._send(item)
            return
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
            self._pending = item
            self._cond.notify_all()

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until what was handed over has been published."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
        self._raise_error()

    def close(self) -> None:
        """Publish what is pending, then stop the thread."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                item, self._pending = self._pending, None
                self._busy = True
            try:
                self._send(item)
            except Exception as exc:  # reported to the update loop, which decides
                self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, item: tuple[Any, ...]) -> None:
        weights, copied, version, updates = item
        if copied is not None:
            copied.synchronize()
        # as NumPy arrays: env actors and the evaluator act without torch (NumpyPolicy)
        ref = ray.put({key: value.numpy() for key, value in weights.items()})
        ray.get(self._coord.publish.remote(version, [ref], updates))


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
        learner_process(cpu_threads)
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
            shards,
            seed=cfg.train.seed + 31 * self.starts,
            limiter=limiter,
            decoder=self.decoder,
            cache_bytes=cfg.replay.learner_cache_mb << 20 if self.decoder is not None else 0,
        )
        # batches are assembled (and decoded) into its host buffers, pinned on a GPU node
        self.feed = DeviceFeed(
            self.agent, obs_shape, action_dim, cfg.agent.batch_size, cfg.agent.metrics_every
        )
        self.updates = 0
        self.version = 0
        if state is not None:
            self.agent.load_state_dict(state["agent"])
            self.updates = int(state["updates"])
            self.version = int(state["version"])
        self._continue_after(ray.get(coordinator.snapshot.remote()).counters)
        self._lock = threading.Lock()
        self._stop_now = threading.Event()
        self.abandoned_updates = 0
        self._report_lock = threading.Lock()  # the report never waits for an update
        self._metrics_now: dict[str, float] = {}
        self._received = (0, 0)  # the client's bytes and batches at the last report
        self._lag: deque[float] = deque(maxlen=200)
        self._sample_wait = 0.0
        self._latencies: list[float] = []
        self._frames = 0
        self._last_metrics: dict[str, float] = {}
        self.nonfinite_batches = 0
        self.publisher = WeightPublisher(coordinator, self.agent)
        self.publisher.publish(self.version, self.updates, wait=True)

    def _continue_after(self, counters: Counters) -> None:
        self.version, self.updates = continued(self.starts, self.version, self.updates, counters)

    def device(self) -> str:
        """The torch device updates run on."""
        return str(self.agent.device)

    def run(self) -> int:
        """Update until the coordinator says stop; returns the updates this call made.

        One batch ahead: each turn launches the update of the batch staged by the turn before
        (the device computes on), then collects and decodes the next batch and starts its copy
        to the device."""
        pending: deque[Any] = deque()
        reply = self._report()
        last_report = time.monotonic()
        made = 0
        while not (reply.stop or self._stop_now.is_set()):
            made += self._update_staged()
            if self._stop_now.is_set():
                break
            staged = self._stage_next(pending)
            now = time.monotonic()
            if now - last_report >= 1.0 or not staged:
                reply = self._report()
                last_report = now
        if not self._stop_now.is_set():  # the frame budget: the batch staged last
            made += self._update_staged()
        # a stopping run (Ctrl-C) does not wait for one more update: a staged batch is a
        # sample of replay, nothing is lost by dropping it
        self.feed.discard()
        self.publisher.flush()
        return made

    def stop(self) -> None:
        """Return from :meth:`run` without the staged batch's update, and give up the update
        in progress if it has not stepped an optimizer yet (:meth:`Agent.abandonable`), else
        after it (answered on the actor's second thread; on a CPU shared with many actors one
        update takes seconds)."""
        self._stop_now.set()

    def _update_staged(self) -> int:
        """Launch the update of the staged batch (1), or nothing (0)."""
        if not self.feed.staged:
            return 0
        with self._lock:
            try:
                with self.agent.abandonable(self._stop_now.is_set):
                    metrics = self.feed.update(self._frames // self.cfg.env.action_repeat)
            except UpdateAbandoned:  # stopping: the agent is as after the last whole update
                self.abandoned_updates += 1
                return 0
            if metrics is not None:
                self._last_metrics = metrics
            self.updates += 1
            if self.updates % self.cfg.distributed.weight_sync_every == 0:
                self.version += 1
                self.publisher.publish(self.version, self.updates)
        return 1

    def _stage_next(self, pending: deque[Any]) -> bool:
        """Collect the next batch into a host buffer and stage it; False if there was none."""
        while len(pending) < self.cfg.distributed.prefetch:
            pending.append(self.client.request(self.cfg.agent.batch_size, timeout=1.0))
        start = time.monotonic()
        request = pending.popleft()
        if not request:  # replay still empty: wait instead of spinning on stats calls
            time.sleep(0.2)
        batch = self.client.collect(request, self.feed.host_buffer()) if request else None
        waited = time.monotonic() - start
        self._sample_wait += waited
        if batch is None:
            return False
        with self._report_lock:
            self._latencies.append(waited)
        if not _finite(batch):
            # replay validates every insert; this is the last line of defence, so that one
            # bad batch can never turn the weights into NaN
            self.nonfinite_batches += 1
            return False
        lag = self.version - batch.version
        self._lag.extend(np.asarray(lag, dtype=np.float64).tolist()[:8])
        self.feed.stage(batch)
        return True

    def _report(self) -> Any:
        """Tell the coordinator how far the learner is (its reply: frames, stop), and keep the
        metrics the driver takes with :meth:`take_report`."""
        with self._report_lock:
            self._metrics_now = self._metrics(self._last_metrics)
        reply = ray.get(self._coord.report_learner.remote(self.updates))
        self._frames = reply.frames
        return reply

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
        out["replay_decode_failures"] = float(self.client.decode_failures)
        client, (bytes_then, batches_then) = self.client, self._received
        if client.batches_received > batches_then:  # the batches since the last report
            out["replay_bytes_per_batch"] = (client.bytes_received - bytes_then) / (
                client.batches_received - batches_then
            )
            self._received = (client.bytes_received, client.batches_received)
        elif "replay_bytes_per_batch" in self._metrics_now:
            out["replay_bytes_per_batch"] = self._metrics_now["replay_bytes_per_batch"]
        out["frame_cache_bytes"] = float(client.cache_bytes)
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


def learner_process(cpu_threads: int) -> None:
    """What a learner's process does first (any algorithm): every thread's stack on a crash,
    and ``cpu_threads`` torch threads (0: all cores; ``distributed.learner_threads``)."""
    crash_tracebacks()
    torch.set_num_threads(cpu_threads if cpu_threads > 0 else os.cpu_count() or 1)


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


def _finite(batch: Batch) -> bool:
    """Whether a batch's actions, rewards and discounts are all finite (frames are uint8)."""
    return bool(
        np.isfinite(batch.action).all()
        and np.isfinite(batch.reward).all()
        and np.isfinite(batch.discount).all()
    )
