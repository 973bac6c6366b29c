"""Typed messages between the roles of a launch (they cross Ray as pickled dataclasses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from distdrq.run.counters import Counters


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
    """The coordinator's answer to the learner's update count."""

    frames: int
    """global env frames"""
    stop: bool
    """the run is stopping"""


@dataclass(frozen=True)
class IterationReport:
    """What an SDPG learner tells the coordinator after each iteration (flow 2)."""

    updates: int
    """iterations made so far (continuing over restarts and sessions)"""
    frames: int
    """env frames of the iteration's nominals (agent steps x action repeat)"""
    steps: int
    """agent steps of the iteration's nominals"""
    returns: list[float] = field(default_factory=list)
    """returns of the nominal episodes that ended in the iteration"""


@dataclass
class LearnerReport:
    """What the driver takes from the learner about once a second (display, Prometheus)."""

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


@dataclass(frozen=True)
class EvalReport:
    """An evaluation's result, from the evaluator to the coordinator."""

    frame: int
    """global env frame the evaluated weights had been trained to"""
    mean_return: float
    std_return: float
    episodes: int
    policy_version: int
    """weight version evaluated"""


@dataclass(frozen=True)
class RoleState:
    """What the coordinator knows of one role (``env-3``, ``replay-0``, ``learner``, ...)."""

    starts: int = 0
    """how often the role has started (every actor registers in its constructor)"""
    frames: int = 0
    """env frames the role reported (env actors)"""
    episodes: int = 0
    """training episodes the role completed (env actors)"""
    policy_version: int = -1
    """weight version the role acted with at its last report (env actors)"""

    @property
    def restarts(self) -> int:
        """Starts after the first."""
        return max(self.starts - 1, 0)


@dataclass(frozen=True)
class RunSnapshot:
    """One reading of the coordinator: counters, roles, the stop flag."""

    counters: Counters
    roles: dict[str, RoleState] = field(default_factory=dict)
    stop: bool = False
    last_eval: EvalReport | None = None
    """the newest evaluation of this session (None before the first)"""

    @property
    def restarts(self) -> int:
        """Restarts of every role together."""
        return sum(r.restarts for r in self.roles.values())

    def role(self, name: str) -> RoleState:
        """The state of role ``name`` (an empty one before it registers)."""
        return self.roles.get(name, RoleState())
