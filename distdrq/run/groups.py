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
No Ray and no learning here: ``distdrq train`` calls a runner in process, and ``distdrq
launch``'s group actors (:mod:`distdrq.distributed.group_actor`) call runners remotely and
hand the results to the same learner step (:meth:`distdrq.agent.sdpg.SDPGAgent.learn`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from distdrq.agent.sdpg_networks import SDPGPolicy
from distdrq.config import EnvConfig, SDPGConfig
from distdrq.envs.clones import NominalEnv, PhysicsState, StepResult, TaskPhysics
from distdrq.types import TimeStep

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
    ``seed + group id``) and ``cfg.clones`` physics clones of each; acts with an
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
        self.clones: list[list[TaskPhysics]] = [
            [nominal.make_clone() for _ in range(cfg.clones)] for nominal in self.nominals
        ]
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

    @property
    def state_dim(self) -> int:
        """d: the critic's input size"""
        return self.nominals[0].state_dim

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Act with these weights (:meth:`~distdrq.agent.sdpg.SDPGAgent.policy_state_dict`)."""
        self.policy.load(state, version)

    def run_window(self) -> WindowResult:
        """Run one window with the current weights (see the module docstring)."""
        self._seconds = dict.fromkeys(self._seconds, 0.0)
        for nominal in self.nominals:
            nominal.render_seconds = 0.0
        first_stack = self._stacks() if self.pixels else None
        win = self._start_window()
        for t in range(self.horizon):
            means, log_std = self._act(win, t)
            for g in range(len(self.nominals)):
                self._step_group(win, g, t, means[g], log_std)
        return self._result(win, first_stack, log_std)

    # -- one window ---------------------------------------------------------------------------

    def _start_window(self) -> _Window:
        g_count, p, h = len(self.nominals), self.cfg.clones, self.horizon
        d, a = self.state_dim, self.nominals[0].action_dim
        frames = None
        if self.pixels:
            frames = np.empty((g_count, h, *self.nominals[0].frame_shape), np.uint8)
        win = _Window(
            states=np.empty((g_count, p + 1, h + 1, d), np.float32),
            rewards=np.zeros((g_count, p + 1, h), np.float32),
            terminated=np.zeros((g_count, p + 1, h), bool),
            dones=np.zeros((g_count, p + 1, h), bool),
            means=np.empty((g_count, h, a), np.float32),
            noise=np.empty((g_count, p, h, a), np.float32),
            frames=frames,
        )
        start = time.perf_counter()
        for g, nominal in enumerate(self.nominals):
            state = nominal.capture()
            for clone in self.clones[g]:
                clone.restore(state)
            win.states[g, :, 0] = nominal.state()
        self._seconds["physics"] += time.perf_counter() - start
        return win

    def _act(self, win: _Window, t: int) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        means, log_std = self.policy.means(np.stack(self._obs))
        win.means[:, t] = means
        win.noise[:, :, t] = self.rng.standard_normal(win.noise[:, :, t].shape, np.float32)
        self._seconds["policy"] += time.perf_counter() - start
        return means, log_std

    def _step_group(
        self, win: _Window, g: int, t: int, mean: np.ndarray, log_std: np.ndarray
    ) -> None:
        start = time.perf_counter()
        nominal, clones = self.nominals[g], self.clones[g]
        bound = self.cfg.mean_bound
        actions = np.clip(mean + win.noise[g, :, t] * np.exp(log_std), -bound, bound)
        ts = nominal.step(np.tanh(mean))
        results = [nominal.last_result] + [
            c.step(np.tanh(u)) for c, u in zip(clones, actions, strict=True)
        ]
        for m, result in enumerate(results):
            win.rewards[g, m, t] = result.reward
            win.terminated[g, m, t] = result.terminated
        after = nominal.state() if not results[0].terminated else None
        self._episode_return[g] += results[0].reward
        self._episode_length[g] += 1
        if results[0].done:
            ts = self._reset_group(win, g, t, results, after)
        else:
            self._resync_clones(win, g, t, results, after)
        self._obs[g] = ts.observation
        if win.frames is not None:
            win.frames[g, t] = ts.frame
        self._seconds["physics"] += time.perf_counter() - start

    def _pre_reset_state(
        self, g: int, m: int, result: StepResult, after: np.ndarray | None
    ) -> np.ndarray:
        if result.terminated:
            return np.zeros(self.state_dim, np.float32)
        return after if m == 0 else self.clones[g][m - 1].observation()  # type: ignore[return-value]

    def _reset_group(
        self,
        win: _Window,
        g: int,
        t: int,
        results: list[StepResult],
        after: np.ndarray | None,
    ) -> TimeStep:
        """The nominal's episode ended: record it, reset it, and every clone becomes it."""
        for m, result in enumerate(results):
            win.resets.append((g, m, t, self._pre_reset_state(g, m, result, after)))
        win.dones[g, :, t] = True
        win.returns.append(float(self._episode_return[g]))
        win.lengths.append(int(self._episode_length[g]))
        self._episode_return[g], self._episode_length[g] = 0.0, 0
        ts = self.nominals[g].reset()
        state = self.nominals[g].capture()
        for clone in self.clones[g]:
            clone.restore(state)
        win.states[g, :, t + 1] = self.nominals[g].state()
        return ts

    def _resync_clones(
        self, win: _Window, g: int, t: int, results: list[StepResult], after: np.ndarray
    ) -> None:
        """The nominal goes on; a clone whose episode ended becomes the nominal's state."""
        win.states[g, 0, t + 1] = after
        state: PhysicsState | None = None
        for m, result in enumerate(results[1:], start=1):
            if not result.done:
                win.states[g, m, t + 1] = self.clones[g][m - 1].observation()
                continue
            win.resets.append((g, m, t, self._pre_reset_state(g, m, result, after)))
            win.dones[g, m, t] = True
            if state is None:
                state = self.nominals[g].capture()
            self.clones[g][m - 1].restore(state)
            win.states[g, m, t + 1] = after

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
