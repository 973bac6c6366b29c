"""SDPG's rollout unit: a :class:`GroupRunner` owns whole groups (a nominal and its clones),
takes policy weights, runs one window and returns a :class:`WindowResult`.

One window of H agent steps (shared/reference/SDPG.md section 2.11, steps 1-2):

1. every clone becomes its nominal (:meth:`~distdrq.envs.clones.TaskPhysics.restore`);
2. per step t: the policy gives the nominals' bounded means mu [G, A] and log std [A] (from
   the nominals' frame stacks, or their states normalised with the statistics that came with
   the weights); clone k of group g acts with tanh(clamp(mu_g + eps * sigma, +-bound)), the
   nominal with tanh(mu_g); every env steps (:class:`~distdrq.envs.clones.TaskPhysics`);
3. a nominal whose episode ended is reset and all its clones become its new state (marked
   done); a clone that terminated on its own (a physics error) becomes its nominal's current
   state (marked done).

Nominal episodes continue across windows; clones restart from their nominal at every window.

A window runs in two phases, so that clone work can be spread over processes:
:meth:`GroupRunner.run_nominals` steps the nominals alone (policy, rendering) and records
what the clones need (:class:`CloneJob`: the window's start state, the nominal's state after
every step, its resets, means and noise); :func:`run_clone_job` steps clones from such a job
on any runner's worker physics (clones are open-loop: they only follow the nominal's means),
and :func:`merge_clones` puts the pieces together. The result is bit for bit the window of
stepping everything in lockstep, as :meth:`GroupRunner.run_window` does in one process.
No Ray and no learning here: ``distdrq train`` calls a runner in process, and ``distdrq
launch``'s group actors (:mod:`distdrq.distributed.group_actor`) call runners remotely and
hand the results to the same learner step (:meth:`distdrq.agent.sdpg.SDPGAgent.learn`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from distdrq.agent.sdpg_networks import SDPGPolicy
from distdrq.config import EnvConfig, SDPGConfig
from distdrq.envs.clones import NominalEnv, PhysicsState, StepResult, TaskPhysics

if TYPE_CHECKING:
    from distdrq.replay.codec import EncodedFrames


def window_length(cfg: SDPGConfig, agent_step_seconds: float) -> int:
    """H in agent steps: ``horizon``, or ``horizon_seconds`` of simulated time when > 0."""
    if cfg.horizon_seconds > 0:
        return max(1, round(cfg.horizon_seconds / agent_step_seconds))
    return cfg.horizon


@dataclass
class WindowResult:
    """What a runner's window gives the learner (G groups, M = P + 1 envs a group with index 0
    the nominal, H steps, d state dims, A action dims)."""

    group_ids: np.ndarray
    """int64 [G]: which groups (global indices) these are"""
    weight_version: int
    """the policy weights the window ran with"""
    states: np.ndarray
    """float32 [G, M, H + 1, d]: raw (unnormalised) state vectors; [:, :, t] for t < H is
    the state step t acted in, [:, :, t + 1] the state after step t and any reset it caused"""
    rewards: np.ndarray
    """float32 [G, M, H]"""
    terminated: np.ndarray
    """bool [G, M, H]: the step ended its env's episode without bootstrapping"""
    dones: np.ndarray
    """bool [G, M, H]: the env was reset or re-synced after the step (not set just because
    the window ends there)"""
    reset_index: np.ndarray
    """int64 [K, 3]: (g, m, t) of every done env step"""
    reset_states: np.ndarray
    """float32 [K, d]: the post-step, pre-reset state at those steps (zeros if terminated)"""
    means: np.ndarray
    """float32 [G, H, A]: the nominals' bounded pre-tanh means"""
    log_std: np.ndarray
    """float32 [A]: the bounded log std the window ran with"""
    noise: np.ndarray
    """float32 [G, P, H, A]: the clones' epsilon"""
    first_stack: np.ndarray | None = None
    """pixels: uint8 [G, S, C, h, w], the nominals' frame stacks at the window's start"""
    frames: np.ndarray | None = None
    """pixels: uint8 [G, H, C, h, w], each nominal's new frame after step t (its reset frame
    when it was reset)"""
    coded_frames: list[EncodedFrames] | None = None
    """pixels, in transit (:meth:`coded`): per group, the replay codec's bytes of its
    ``S + H`` frames, ``first_stack`` then ``frames``; the two arrays are None meanwhile"""
    episode_returns: list[float] = field(default_factory=list)
    """returns of the nominal episodes that ended in this window"""
    episode_lengths: list[int] = field(default_factory=list)
    """their lengths in agent steps"""
    seconds: dict[str, float] = field(default_factory=dict)
    """time split: physics (nominals and clones), render, policy"""

    @property
    def horizon(self) -> int:
        """H"""
        return self.rewards.shape[2]

    def next_states(self) -> np.ndarray:
        """float32 [G, M, H, d]: the post-step, pre-reset state of every step (for V(s'))."""
        nxt = self.states[:, :, 1:].copy()
        g, m, t = self.reset_index.T
        nxt[g, m, t] = self.reset_states
        return nxt

    def actor_observations(self) -> np.ndarray:
        """pixels: uint8 [G, H, S * C, h, w], the frame stack each nominal acted on at step t,
        rebuilt from :attr:`first_stack` and :attr:`frames` (a reset fills the stack)."""
        if self.first_stack is None or self.frames is None:
            raise ValueError("this window holds no frames (a state-actor run)")
        stack = self.first_stack.copy()
        g_count, depth = stack.shape[:2]
        out = np.empty((g_count, self.horizon, *stack.shape[1:]), np.uint8)
        for t in range(self.horizon):
            out[:, t] = stack
            reset = self.dones[:, 0, t]
            stack[~reset] = np.concatenate([stack[~reset, 1:], self.frames[~reset, t, None]], 1)
            stack[reset] = self.frames[reset, t, None].repeat(depth, axis=1)
        return out.reshape(g_count, self.horizon, -1, *out.shape[-2:])

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays and coded frames (about what a transfer carries)."""
        arrays = [getattr(self, name) for name in _ARRAYS]
        coded = sum(len(enc.payload) + enc.sizes.nbytes for enc in self.coded_frames or ())
        return sum(a.nbytes for a in arrays if a is not None) + coded

    def coded(self, codec: str) -> WindowResult:
        """This window with each nominal's frames (its first stack, then its new frames) coded
        by the replay codec ``codec`` for the trip to the learner: the same lossless,
        checksummed chunks an env actor sends to replay, about a tenth of the raw bytes for
        the default codec. Every window starts a new code (no state carried between windows:
        a restarted actor or a re-run window needs nothing from before). State-actor windows
        are returned as they are."""
        from distdrq.replay.codec import FrameEncoder

        if self.frames is None or self.first_stack is None:
            return self
        coded = []
        for stack, frames in zip(self.first_stack, self.frames, strict=True):
            encoder = FrameEncoder(codec, tuple(frames.shape[1:]))
            coded.append(encoder.encode(np.concatenate([stack, frames])))
        return replace(self, first_stack=None, frames=None, coded_frames=coded)

    def decoded(self) -> WindowResult:
        """Inverse of :meth:`coded` (bit-exact); ValueError (one line) for damaged frames."""
        from distdrq.replay.codec import EpisodeFrames, payload_checksum

        if self.coded_frames is None:
            return self
        stacks, frames = [], []
        for g, enc in enumerate(self.coded_frames):
            if enc.checksum != payload_checksum(enc.payload, enc.sizes):
                raise ValueError(f"the coded frames of group {g} of this window are damaged")
            episode = EpisodeFrames(enc.codec, enc.frame_shape)
            episode.append(enc)
            window = episode.decode(np.arange(len(enc)))
            depth = len(enc) - self.horizon
            stacks.append(window[:depth])
            frames.append(window[depth:])
        return replace(
            self, first_stack=np.stack(stacks), frames=np.stack(frames), coded_frames=None
        )


_ARRAYS = (
    "group_ids",
    "states",
    "rewards",
    "terminated",
    "dones",
    "reset_index",
    "reset_states",
    "means",
    "log_std",
    "noise",
    "first_stack",
    "frames",
)


@dataclass
class CloneJob:
    """What stepping clones ``first .. first + n - 1`` of one group over a window needs."""

    group: int
    """the group's index in its window (0 .. G - 1)"""
    first: int
    """index of the first of these clones among the group's P clones"""
    start: PhysicsState
    """the nominal at the window's start"""
    after: list[PhysicsState]
    """[H]: the nominal after step t (after its reset, if the step ended its episode)"""
    nominal_done: np.ndarray
    """bool [H]: the nominal's episode ended at step t (every clone becomes its new state)"""
    nominal_states: np.ndarray
    """float32 [H + 1, d]: the nominal's state vectors (states[g, 0])"""
    means: np.ndarray
    """float32 [H, A]"""
    noise: np.ndarray
    """float32 [n, H, A]: these clones' epsilon"""
    log_std: np.ndarray
    """float32 [A]"""
    mean_bound: float

    @property
    def clones(self) -> int:
        """n"""
        return len(self.noise)

    def split(self, size: int) -> list[CloneJob]:
        """This job as jobs of at most ``size`` clones each."""
        size = max(1, size)
        return [
            replace(self, first=self.first + k, noise=self.noise[k : k + size])
            for k in range(0, self.clones, size)
        ]


@dataclass
class CloneResult:
    """Clones ``first ..`` of group ``group`` over one window (see :class:`WindowResult`)."""

    group: int
    first: int
    states: np.ndarray
    """float32 [n, H + 1, d]"""
    rewards: np.ndarray
    """float32 [n, H]"""
    terminated: np.ndarray
    """bool [n, H]"""
    dones: np.ndarray
    """bool [n, H]"""
    resets: list[tuple[int, int, np.ndarray]]
    """(clone k of these, step t, post-step pre-reset state) of every done step"""
    seconds: float = 0.0
    """physics time"""


def run_clone_job(
    job: CloneJob,
    physics: TaskPhysics,
    step: Callable[[TaskPhysics, CloneJob, int, int, np.ndarray], StepResult] | None = None,
) -> CloneResult:
    """Step the job's clones one after another on ``physics`` (a clone that shares no model
    with a nominal: restoring writes the task's model fields). A clone acts with
    tanh(clamp(mu_t + eps_t * sigma, +-bound)); when the nominal's episode ended at t, or the
    clone's own did (a physics error), the clone becomes the nominal's state after t. ``step``
    (tests) replaces ``physics.step`` as ``step(physics, job, k, t, action)``."""
    start = time.perf_counter()
    n, h = job.clones, len(job.means)
    d = job.nominal_states.shape[1]
    out = CloneResult(
        job.group,
        job.first,
        states=np.empty((n, h + 1, d), np.float32),
        rewards=np.zeros((n, h), np.float32),
        terminated=np.zeros((n, h), bool),
        dones=np.zeros((n, h), bool),
        resets=[],
    )
    sigma = np.exp(job.log_std)
    bound = job.mean_bound
    for k in range(n):
        physics.restore(job.start)
        out.states[k, 0] = job.nominal_states[0]
        for t in range(h):
            action = np.tanh(np.clip(job.means[t] + job.noise[k, t] * sigma, -bound, bound))
            result = physics.step(action) if step is None else step(physics, job, k, t, action)
            out.rewards[k, t] = result.reward
            out.terminated[k, t] = result.terminated
            if job.nominal_done[t] or result.done:
                pre = np.zeros(d, np.float32) if result.terminated else physics.observation()
                out.resets.append((k, t, pre))
                out.dones[k, t] = True
                physics.restore(job.after[t])
                out.states[k, t + 1] = job.nominal_states[t + 1]
            else:
                out.states[k, t + 1] = physics.observation()
    out.seconds = time.perf_counter() - start
    return out


def merge_clones(part: WindowResult, clones: Sequence[CloneResult], count: int) -> WindowResult:
    """The whole window: ``part`` (the nominals' window of :meth:`GroupRunner.run_nominals`,
    M = 1) with the results of every clone of its groups (``count`` per group) filled in;
    ValueError if a clone is missing or given twice."""
    g_count, _, h1, d = part.states.shape
    m = count + 1
    states = np.empty((g_count, m, h1, d), np.float32)
    rewards = np.zeros((g_count, m, h1 - 1), np.float32)
    terminated = np.zeros((g_count, m, h1 - 1), bool)
    dones = np.zeros((g_count, m, h1 - 1), bool)
    seen = np.zeros((g_count, m), bool)
    seen[:, 0] = True
    for array, source in ((states, part.states), (rewards, part.rewards)):
        array[:, :1] = source
    terminated[:, :1], dones[:, :1] = part.terminated, part.dones
    resets = [
        (*map(int, index), state)
        for index, state in zip(part.reset_index, part.reset_states, strict=True)
    ]
    physics = 0.0
    for c in clones:
        rows = slice(1 + c.first, 1 + c.first + len(c.states))
        if seen[c.group, rows].any() or rows.stop > m:
            raise ValueError(f"clones {rows.start - 1}.. of group {c.group} given twice or unknown")
        seen[c.group, rows] = True
        states[c.group, rows] = c.states
        rewards[c.group, rows] = c.rewards
        terminated[c.group, rows] = c.terminated
        dones[c.group, rows] = c.dones
        resets.extend((c.group, 1 + c.first + k, t, state) for k, t, state in c.resets)
        physics += c.seconds
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} clones of this window have no result")
    resets.sort(key=lambda r: (r[2], r[0], r[1]))  # the order stepping in lockstep gives
    seconds = dict(part.seconds)
    seconds["physics"] = seconds.get("physics", 0.0) + physics
    return replace(
        part,
        states=states,
        rewards=rewards,
        terminated=terminated,
        dones=dones,
        reset_index=np.array([r[:3] for r in resets], np.int64).reshape(-1, 3),
        reset_states=np.array([r[3] for r in resets], np.float32).reshape(-1, d),
        seconds=seconds,
    )


@dataclass
class _Window:
    """The arrays of the window being run."""

    states: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    dones: np.ndarray
    means: np.ndarray
    noise: np.ndarray
    frames: np.ndarray | None
    resets: list[tuple[int, int, int, np.ndarray]] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


class GroupRunner:
    """Owns G groups: G nominals (:class:`~distdrq.envs.clones.NominalEnv`, seeded
    ``seed + group id``); their ``cfg.clones`` clones each are stepped on one worker physics
    (:attr:`worker`, a copy of the task's physics with a model of its own), here or on another
    runner of the same task (:func:`run_clone_job`). Acts with an
    :class:`~distdrq.agent.sdpg_networks.SDPGPolicy` loaded by :meth:`set_weights`.

    Noise comes from a generator seeded with (``seed``, first group id), so a run is
    reproducible for a given split of groups over runners.
    """

    def __init__(
        self, env_cfg: EnvConfig, cfg: SDPGConfig, group_ids: Sequence[int], seed: int
    ) -> None:
        self.cfg = cfg
        self.group_ids = np.asarray(group_ids, np.int64)
        self.pixels = cfg.obs == "pixels"
        self.nominals = [NominalEnv(env_cfg, seed + int(g), self.pixels) for g in group_ids]
        first = self.nominals[0]
        self.horizon = window_length(cfg, first.agent_step_seconds)
        self.worker: TaskPhysics = first.make_clone(share_model=False)
        self.policy = SDPGPolicy(
            first.obs_shape,
            first.action_dim,
            self.pixels,
            cfg.mean_bound,
            (cfg.log_std_min, cfg.log_std_max),
        )
        self.rng = np.random.default_rng([seed, int(self.group_ids[0])])
        self._obs = [nominal.reset().observation for nominal in self.nominals]
        self._episode_return = np.zeros(len(self.nominals))
        self._episode_length = np.zeros(len(self.nominals), np.int64)
        self._seconds = {"physics": 0.0, "render": 0.0, "policy": 0.0}
        self.step_clone: Callable[..., StepResult] | None = None
        """tests: replaces the worker's step (see :func:`run_clone_job`)"""

    @property
    def state_dim(self) -> int:
        """d: the critic's input size"""
        return self.nominals[0].state_dim

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Act with these weights (:meth:`~distdrq.agent.sdpg.SDPGAgent.policy_state_dict`)."""
        self.policy.load(state, version)

    def run_window(self) -> WindowResult:
        """Run one window with the current weights, clones included (see the module
        docstring)."""
        part, jobs = self.run_nominals()
        return merge_clones(part, self.run_clones(jobs), self.cfg.clones)

    def run_clones(self, jobs: Sequence[CloneJob]) -> list[CloneResult]:
        """Step these clone jobs (this runner's or another's of the same task) on the worker."""
        return [run_clone_job(job, self.worker, self.step_clone) for job in jobs]

    def run_nominals(self) -> tuple[WindowResult, list[CloneJob]]:
        """Step the nominals through one window: their window (M = 1: the nominals' rows
        only) and one :class:`CloneJob` per group for all its clones."""
        self._seconds = dict.fromkeys(self._seconds, 0.0)
        for nominal in self.nominals:
            nominal.render_seconds = 0.0
        first_stack = self._stacks() if self.pixels else None
        win, starts = self._start_window()
        after: list[list[PhysicsState]] = [[] for _ in self.nominals]
        log_std = np.zeros(self.nominals[0].action_dim, np.float32)
        for t in range(self.horizon):
            means, log_std = self._act(win, t)
            for g in range(len(self.nominals)):
                after[g].append(self._step_nominal(win, g, t, means[g]))
        part = self._result(win, first_stack, log_std)
        jobs = [
            CloneJob(
                group=g,
                first=0,
                start=starts[g],
                after=after[g],
                nominal_done=win.dones[g, 0].copy(),
                nominal_states=win.states[g, 0].copy(),
                means=win.means[g],
                noise=win.noise[g],
                log_std=part.log_std,
                mean_bound=self.cfg.mean_bound,
            )
            for g in range(len(self.nominals))
        ]
        return part, jobs

    # -- one window ---------------------------------------------------------------------------

    def _start_window(self) -> tuple[_Window, list[PhysicsState]]:
        g_count, p, h = len(self.nominals), self.cfg.clones, self.horizon
        d, a = self.state_dim, self.nominals[0].action_dim
        frames = None
        if self.pixels:
            frames = np.empty((g_count, h, *self.nominals[0].frame_shape), np.uint8)
        win = _Window(
            states=np.empty((g_count, 1, h + 1, d), np.float32),
            rewards=np.zeros((g_count, 1, h), np.float32),
            terminated=np.zeros((g_count, 1, h), bool),
            dones=np.zeros((g_count, 1, h), bool),
            means=np.empty((g_count, h, a), np.float32),
            noise=np.empty((g_count, p, h, a), np.float32),
            frames=frames,
        )
        start = time.perf_counter()
        starts = []
        for g, nominal in enumerate(self.nominals):
            starts.append(nominal.capture())
            win.states[g, 0, 0] = nominal.state()
        self._seconds["physics"] += time.perf_counter() - start
        return win, starts

    def _act(self, win: _Window, t: int) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        means, log_std = self.policy.means(np.stack(self._obs))
        win.means[:, t] = means
        win.noise[:, :, t] = self.rng.standard_normal(win.noise[:, :, t].shape, np.float32)
        self._seconds["policy"] += time.perf_counter() - start
        return means, log_std

    def _step_nominal(self, win: _Window, g: int, t: int, mean: np.ndarray) -> PhysicsState:
        """Step nominal g with tanh(mean); its state after the step (after its reset if the
        step ended its episode), which clones that must follow it become."""
        start = time.perf_counter()
        nominal = self.nominals[g]
        ts = nominal.step(np.tanh(mean))
        result = nominal.last_result
        win.rewards[g, 0, t] = result.reward
        win.terminated[g, 0, t] = result.terminated
        self._episode_return[g] += result.reward
        self._episode_length[g] += 1
        if result.done:
            pre = np.zeros(self.state_dim, np.float32) if result.terminated else nominal.state()
            win.resets.append((g, 0, t, pre))
            win.dones[g, 0, t] = True
            win.returns.append(float(self._episode_return[g]))
            win.lengths.append(int(self._episode_length[g]))
            self._episode_return[g], self._episode_length[g] = 0.0, 0
            ts = nominal.reset()
        win.states[g, 0, t + 1] = nominal.state()
        state = nominal.capture()
        self._obs[g] = ts.observation
        if win.frames is not None:
            win.frames[g, t] = ts.frame
        self._seconds["physics"] += time.perf_counter() - start
        return state

    def _stacks(self) -> np.ndarray:
        frame_shape = self.nominals[0].frame_shape
        return np.stack([obs.reshape(-1, *frame_shape) for obs in self._obs])

    def _result(
        self, win: _Window, first_stack: np.ndarray | None, log_std: np.ndarray
    ) -> WindowResult:
        d = self.state_dim
        index = np.array([r[:3] for r in win.resets], np.int64).reshape(-1, 3)
        reset_states = np.array([r[3] for r in win.resets], np.float32).reshape(-1, d)
        render = sum(n.render_seconds for n in self.nominals)
        seconds = dict(self._seconds, render=self._seconds["render"] + render)
        seconds["physics"] -= render  # the nominals rendered inside the physics timer
        return WindowResult(
            group_ids=self.group_ids.copy(),
            weight_version=self.policy.version,
            states=win.states,
            rewards=win.rewards,
            terminated=win.terminated,
            dones=win.dones,
            reset_index=index,
            reset_states=reset_states,
            means=win.means,
            log_std=np.asarray(log_std, np.float32),
            noise=win.noise,
            first_stack=first_stack,
            frames=win.frames,
            episode_returns=win.returns,
            episode_lengths=win.lengths,
            seconds=seconds,
        )

    def close(self) -> None:
        """Free the envs."""
        for nominal in self.nominals:
            nominal.close()
        self.worker.physics.free()
