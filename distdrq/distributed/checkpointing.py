"""The checkpoint policy of a launch: a wrapper around the supervisor (as Acme's
``CheckpointingRunner`` wraps its runner).

A checkpoint is the learner's state, the counters and the rate limiter's state (the main file)
written after a snapshot of every replay shard, every ``train.checkpoint_every_frames`` and at
the end. It needs every shard and the learner: while one is down (Ray restarting a shard, the
supervisor yet to recreate the learner) a periodic checkpoint is postponed and tried again
``CHECKPOINT_RETRY_S`` later, never fatal; the final one waits for restarting shards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from distdrq.checkpoint import save_checkpoint
from distdrq.distributed.messages import RunSnapshot

CHECKPOINT_RETRY_S = 30.0
"""A periodic checkpoint that an unavailable actor postponed is tried again this much later."""
FINAL_CHECKPOINT_PATIENCE_S = 900.0
"""How long a checkpoint waits for actors that Ray is restarting (a restarted shard restores
its snapshot first: minutes for a large one), counted from the first postponement."""


class Checkpointing:
    """Wraps a :class:`~distdrq.distributed.supervisor.Supervisor`: each :meth:`step` is the
    supervisor's, followed by a checkpoint when one is due."""

    def __init__(
        self,
        supervisor: Any,
        every_frames: int,
        next_frame: int,
        session: int,
        message: Callable[[str], None],
    ) -> None:
        self.supervisor = supervisor
        self.every_frames = every_frames
        self.next_frame = next_frame
        self.session = session
        self.message = message
        self.retry_at = 0.0
        self._down_since: float | None = None  # first postponed checkpoint of a down actor

    @property
    def run_dir(self) -> Path:
        return self.supervisor.run_dir

    def step(self, after: Callable[[RunSnapshot], None] | None = None) -> RunSnapshot:
        """One supervisor tick; ``after(snapshot)`` (the display) runs before a due checkpoint."""
        snap = self.supervisor.step()
        if after is not None:
            after(snap)
        frames = snap.counters.frames
        due = frames >= self.next_frame and time.monotonic() >= self.retry_at
        if due and self.checkpoint(snap, patience=0.0) is not None:
            self.next_frame = frames + self.every_frames
        return snap

    def final(self, snap: RunSnapshot, quick: bool = False) -> Path:
        """The last checkpoint of a session, waiting for restarting shards. ``quick`` (Ctrl-C:
        the user waits): shards leave episodes that no snapshot holds yet in their replay codec
        instead of coding them for disk; the next session's first snapshot codes them."""
        path = self.checkpoint(snap, patience=FINAL_CHECKPOINT_PATIENCE_S, quick=quick)
        assert path is not None  # with patience, a failure raises
        return path

    def checkpoint(
        self, snap: RunSnapshot, patience: float = 0.0, quick: bool = False
    ) -> Path | None:
        """Shard snapshots, then the main file; None if postponed (``patience`` 0 only).

        With ``patience`` 0 (periodic checkpoints) an actor that is down postpones the
        checkpoint: a message says why, and the previous checkpoint stays the newest. An actor
        still down FINAL_CHECKPOINT_PATIENCE_S after the first postponement is taken for lost:
        its error is raised. With ``patience`` > 0 (the final checkpoint) restarting shards are
        waited for, up to that many seconds less the time they have already been down; a dead
        learner raises at once (Ray never restarts it).
        """
        now = time.monotonic()
        if patience > 0 and self._down_since is not None:
            patience = max(0.0, patience - (now - self._down_since))
        try:
            learner_ref = self.supervisor.topo.learner.state.remote()  # while shards snapshot
            snapshots = self._snapshot_shards(patience, code_new=not quick)
            learner_state = ray.get(learner_ref, timeout=300)
        except ray.exceptions.RayActorError as exc:
            if patience > 0:
                raise
            self._postpone(exc, now)
            return None
        self._down_since = None
        return self._save(snap, learner_state, snapshots)

    def _postpone(self, exc: Exception, now: float) -> None:
        if self._down_since is None:
            self._down_since = now
        if now - self._down_since >= FINAL_CHECKPOINT_PATIENCE_S:
            raise exc
        reason = str(exc).strip().splitlines()[0][:160]
        self.retry_at = time.monotonic() + CHECKPOINT_RETRY_S
        self.message(
            f"checkpoint postponed, an actor is down ({reason}); "
            f"trying again in {CHECKPOINT_RETRY_S:.0f} s"
        )

    def _save(self, snap: RunSnapshot, learner_state: Any, snapshots: list[str]) -> Path:
        topo = self.supervisor.topo
        limiter = ray.get(topo.limiter.state_dict.remote()) if topo.limiter else None
        state = {
            "rate_limiter": limiter,
            "counters": snap.counters.to_dict(),
            "learner": learner_state,
            "replay_snapshots": [str(p) for p in snapshots],
            "restarts": dict(self.supervisor.restarts),
            "session": self.session,
        }
        return save_checkpoint(self.run_dir, snap.counters.frames, state)

    def _snapshot_shards(self, patience: float, code_new: bool = True) -> list[str]:
        """Snapshot every shard; the paths in shard order. Every call is waited for before any
        is sent again, and only to the shards whose call failed (so a healthy shard never has
        snapshots queued behind one another). A failure is raised at once with ``patience`` 0,
        else the failed shards are asked again every 2 s for up to ``patience`` seconds."""
        shards = self.supervisor.topo.shards
        deadline = time.monotonic() + patience
        refs = {i: shard.snapshot.remote(code_new) for i, shard in enumerate(shards)}
        paths: dict[int, str] = {}
        while True:
            error: ray.exceptions.RayActorError | None = None
            for i, ref in refs.items():
                try:
                    paths[i] = ray.get(ref, timeout=3600)
                except ray.exceptions.RayActorError as exc:
                    error = error or exc
            if error is None:
                return [paths[i] for i in range(len(shards))]
            if patience <= 0 or time.monotonic() >= deadline:
                raise error
            time.sleep(2.0)
            refs = {i: shards[i].snapshot.remote(code_new) for i in refs if i not in paths}
