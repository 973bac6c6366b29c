"""Host <-> device traffic of a learner that never waits for the host.

- :class:`DeviceFeed`: batches are assembled into a ring of host buffers (page-locked on a GPU
  node), copied to the device asynchronously on a side stream one batch ahead (the copy of the
  next batch runs while the current update computes), and each update is launched without
  waiting for the device; :class:`MetricsReadBack` reads the updates' metrics back once every
  ``agent.metrics_every`` updates (their mean), instead of a device sync per update.
- :func:`policy_snapshot`: the policy weights copied to host memory asynchronously, with an
  event to wait on, so that publishing them (a background thread's job) never stalls updates.

On a CPU device the same code runs: the host buffers are the device tensors' memory (copies
are no-ops), and an update finishes before the next batch is written, so results are those
of the plain loop (sample, update, sample, update) at the same seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distdrq.agent.base import _NUMPY_TO_TORCH, Agent
from distdrq.types import Batch

__all__ = ["DeviceFeed", "MetricsReadBack", "policy_snapshot"]

_UPLOADED = ("obs", "action", "reward", "discount", "next_obs")
"""what an update reads (``version`` stays on the host)"""


class MetricsReadBack:
    """Sums each update's metric tensors on the device; every ``every`` updates, reads their
    mean back in one transfer (the only point where the host waits for the device)."""

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"metrics are read back every {every} updates: must be >= 1")
        self.every = int(every)
        self._keys: tuple[str, ...] = ()
        self._sums: torch.Tensor | None = None
        self._count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """Count one update's metrics; the mean of the last ``every`` updates when it is time
        to read them back, else None (a change of keys starts the count anew)."""
        if not metrics:
            return None
        stacked = torch.stack([torch.as_tensor(v).float().reshape(()) for v in metrics.values()])
        if tuple(metrics) != self._keys or self._sums is None:
            self._keys, self._sums, self._count = tuple(metrics), stacked, 1
        else:
            self._sums += stacked
            self._count += 1
        if self._count < self.every:
            return None
        values = (self._sums / self._count).tolist()
        self._sums, self._count = None, 0
        return dict(zip(self._keys, values, strict=True))


class DeviceFeed:
    """Feeds one agent: host buffers to fill, asynchronous uploads, updates that do not wait.

    The loop of a learner, one batch ahead::

        feed.update(step)             # launch the update of the batch staged last (if any)
        host = feed.host_buffer()     # then, while the device computes: a free host batch,
        ...fill host...               # filled by sampling and decoding replay,
        feed.stage(host)              # and its copy to the device started on the side stream

    ``depth`` host buffers rotate; :meth:`host_buffer` waits only for the copy out of the buffer
    it returns (issued ``depth`` batches ago). Device copies are fresh tensors from the caching
    allocator, marked as used by the update's stream.
    """

    def __init__(
        self,
        agent: Agent,
        obs_shape: tuple[int, ...],
        action_dim: int,
        batch_size: int,
        metrics_every: int = 1,
        depth: int = 2,
    ) -> None:
        self.agent = agent
        self.device = agent.device
        self.cuda = self.device.type == "cuda"
        shapes = {
            "obs": ((batch_size, *obs_shape), np.uint8),
            "action": ((batch_size, action_dim), np.float32),
            "reward": ((batch_size,), np.float32),
            "discount": ((batch_size,), np.float32),
            "next_obs": ((batch_size, *obs_shape), np.uint8),
            "version": ((batch_size,), np.int64),
        }
        self._slots = [self._host_slot(shapes) for _ in range(max(1, depth))]
        self._copied: list[torch.cuda.Event | None] = [None] * len(self._slots)
        self._next = 0
        self._current = -1  # the slot host_buffer() handed out last
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._staged: tuple[dict[str, torch.Tensor], Any] | None = None
        self.metrics = MetricsReadBack(metrics_every)

    def _host_slot(self, shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, Any]:
        tensors = {
            name: torch.empty(shape, dtype=_NUMPY_TO_TORCH[np.dtype(dtype)], pin_memory=self.cuda)
            for name, (shape, dtype) in shapes.items()
        }
        batch = Batch(**{name: t.numpy() for name, t in tensors.items()})
        return {"tensors": tensors, "batch": batch}

    @property
    def staged(self) -> bool:
        """Whether a batch waits for its update."""
        return self._staged is not None

    def host_buffer(self) -> Batch:
        """The next host batch to fill (numpy views of pinned memory on a GPU node)."""
        index = self._next
        if self._copied[index] is not None:
            self._copied[index].synchronize()  # its previous copy to the device has finished
            self._copied[index] = None
        self._next = (index + 1) % len(self._slots)
        self._current = index
        return self._slots[index]["batch"]

    def stage(self, host: Batch) -> None:
        """Start copying ``host`` (the batch :meth:`host_buffer` returned last, filled) to the
        device; it is the next update's batch. A batch staged before and not yet updated on is
        dropped."""
        slot = self._slots[self._current]
        if host is not slot["batch"]:
            raise ValueError("stage() takes the batch that host_buffer() returned last")
        tensors = {name: slot["tensors"][name] for name in _UPLOADED}
        if self._stream is None:  # CPU: the update reads the host memory itself
            self._staged = (tensors, None)
            return
        with torch.cuda.stream(self._stream):
            device = {name: t.to(self.device, non_blocking=True) for name, t in tensors.items()}
            done = torch.cuda.Event()
            done.record(self._stream)
        self._copied[self._current] = done
        self._staged = (device, done)

    def discard(self) -> None:
        """Drop the staged batch, if any, without an update (a stopping learner)."""
        self._staged = None

    def update(self, step: int) -> dict[str, float] | None:
        """Launch the update of the staged batch (no-op without one) without waiting for the
        device; the mean metrics of the last ``metrics_every`` updates when read back, else
        None."""
        if self._staged is None:
            return None
        tensors, copied = self._staged
        self._staged = None
        if copied is not None:  # the update's stream waits for the copy, the host does not
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)
            for t in tensors.values():
                t.record_stream(stream)  # not reused by the copy stream while in use here
        batch = Batch(**tensors, version=np.empty(0, np.int64))
        return self.metrics.add(self.agent.learn(batch, step))


def policy_snapshot(agent: Agent) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
    """The encoder and actor weights as contiguous host tensors (what
    :meth:`Agent.policy_state_dict` returns), and an event that is complete once they are
    (None on CPU, where the copies are made at once). On a GPU the copies go into pinned memory
    asynchronously, ordered after the updates launched so far: the caller does not wait."""
    state = {
        f"{name}.{key}": t.detach()
        for name, module in (("encoder", agent.encoder), ("actor", agent.actor))
        for key, t in module.state_dict().items()
    }
    if agent.device.type != "cuda":
        return {k: t.clone(memory_format=torch.contiguous_format) for k, t in state.items()}, None
    out = {}
    for key, t in state.items():
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out[key] = host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(agent.device))
    return out, done
