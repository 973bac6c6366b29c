"""Typed messages between the roles of a launch (they cross Ray as pickled dataclasses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EnvReply:
    """The coordinator's answer to an env actor's report."""

    frames: int
    """global env frames (the exploration schedule runs on them)"""
    weight_version: int
    """newest published weight version (the actor fetches weights only when newer)"""
    stop: bool
    """the run is stopping (Ctrl-C, the frame budget, a failure)"""


@dataclass(frozen=True)
class LearnerReply:
    """The coordinator's answer to the learner's report."""

    frames: int
    """global env frames"""
    stop: bool
    """the run is stopping"""


@dataclass
class LearnerReport:
    """What the learner tells the coordinator about once a second."""

    updates: int
    """updates made so far (continuing over restarts)"""
    metrics: dict[str, float] = field(default_factory=dict)
    """latest losses, Q values, policy lag, sample wait, ..."""
    latencies: list[float] = field(default_factory=list)
    """seconds the learner waited for each batch since its last report"""


class SendResult(enum.Enum):
    """What became of a chunk an env actor sent to replay."""

    SENT = "sent"
    """stored"""
    REFUSED = "refused"
    """replay refused it (damaged, non-finite, or its episode's start lost in a shard restart);
    nothing was stored and the actor starts a new episode"""
    STOPPED = "stopped"
    """the run is stopping; the chunk was not stored"""
