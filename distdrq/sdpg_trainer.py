"""Single-process SDPG (``distdrq train --algo sdpg``): one :class:`~distdrq.run.groups.GroupRunner`
owning every group, one :class:`~distdrq.agent.sdpg.SDPGAgent`, on the run core.

An iteration: publish the policy weights to the runner, run one window, one learner step
(:meth:`~distdrq.agent.sdpg.SDPGAgent.learn`). Counters are DrQ-v2's, so runs compare in
``distdrq plot``: ``frames`` counts the nominals' env frames (agent steps x action repeat, the
rendered frames of a pixel run), ``steps`` their agent steps, ``updates`` the iterations,
``episodes`` the finished nominal episodes; train.csv adds the simulated agent steps counting
clones (``sim_steps``) and SDPG's own quantities. Evaluation is DrQ-v2's (mean-action episodes
on a separate env, :mod:`distdrq.run.evaluation`); the nominals' own episodes, which also act
with the mean, are ``train_return`` (the mean of the last N). Checkpoints are written between
iterations; ``--resume`` continues the iteration count, networks, optimizers, temperature,
observation statistics and random generators (the nominals start fresh episodes). A Ctrl-C
or SIGTERM during a learner step lets the step finish, so a checkpoint never holds half an
iteration. State-actor runs record no evaluation videos (nothing is rendered).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdrq.agent import make_agent
from distdrq.checkpoint import load_latest, save_checkpoint
from distdrq.config import Config, to_dict
from distdrq.envs.clones import NominalEnv
from distdrq.progress import CsvLog, ProgressDisplay
from distdrq.run.counters import Counters
from distdrq.run.evaluation import evaluate_and_record, shown_on
from distdrq.run.groups import GroupRunner, WindowResult
from distdrq.run.rundir import rollback_records, save_run_config
from distdrq.run.session import (
    STOP_SIGNALS,
    finite,
    target_message,
    target_reached,
    training_session,
)
from distdrq.tblog import open_events

_SHOWN = (("sigma", "policy std"), ("temperature", "temperature"), ("iteration_s", "s/iteration"))


class SDPGTrainer:
    """Owns the runner, agent, eval env, logs and counters of one single-process SDPG run."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.counters = Counters()
        seed = cfg.train.seed
        np.random.seed(seed)
        torch.manual_seed(seed)
        pixels = cfg.sdpg.obs == "pixels"
        self.runner = _make_runner(cfg, seed)
        first = self.runner.nominals[0]
        self.agent: Any = make_agent(
            first.obs_shape,
            first.action_dim,
            cfg.agent,
            sdpg=cfg.sdpg,
            state_dim=self.runner.state_dim,
        )
        self.eval_env = NominalEnv(cfg.env, seed + 10_000, pixels)
        self.recent_returns: deque[float] = deque(maxlen=cfg.sdpg.nominals)
        self.sim_steps = 0
        self.resumed_from: Path | None = None
        self._messages: list[str] = []
        if resume:
            self._restore()
        else:
            self.counters.next_checkpoint_frame = cfg.train.checkpoint_every_frames
            save_run_config(self.run_dir, cfg)
        self.events = open_events(self.run_dir, cfg.train.tensorboard, resume)
        self.train_log = CsvLog(self.run_dir / "train.csv", self.events)
        self.eval_log = CsvLog(self.run_dir / "eval.csv", self.events)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, quick: bool = False) -> Path:
        """Checkpoint agent (networks, optimizers, temperature, statistics), counters and RNGs
        (``quick`` is the same: SDPG keeps no replay)."""
        state = {
            "counters": self.counters.to_dict(),
            "config": to_dict(self.cfg),
            "agent": self.agent.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "noise_rng": self.runner.rng.bit_generator.state,
            "sdpg": {"sim_steps": self.sim_steps, "recent_returns": list(self.recent_returns)},
        }
        return save_checkpoint(self.run_dir, self.counters.frames, state)

    def _restore(self) -> None:
        def restore(state: dict[str, Any], parts: dict[str, Any]) -> None:
            self.agent.load_state_dict(state["agent"])

        path, state, _ = load_latest(self.run_dir, warn=self._messages.append, restore=restore)
        self.counters = Counters.from_dict(state["counters"])
        torch.set_rng_state(torch.as_tensor(state["torch_rng"]))
        self.runner.rng.bit_generator.state = state["noise_rng"]
        self.sim_steps = int(state["sdpg"]["sim_steps"])
        self.recent_returns.extend(float(r) for r in state["sdpg"]["recent_returns"])
        self.resumed_from = path
        c = self.counters
        self._messages.extend(rollback_records(self.run_dir, c.frames, c.last_eval_frame))

    # -- loop -------------------------------------------------------------------------------

    def train(self, progress: ProgressDisplay | None = None) -> Counters:
        """Train until ``train.frames``; checkpoint and return the counters on exit or Ctrl-C."""
        cfg, c = self.cfg, self.counters
        progress = progress or ProgressDisplay(cfg.env.task, cfg.train.frames)
        progress.extra = list(_SHOWN)
        units = ("iterations", "nominal episodes")
        with progress, training_session(c, self.run_dir, self.save, progress, units) as clock:
            self._greet(progress)
            stop_at = cfg.train.stop_at_return
            while c.frames < cfg.train.frames and not target_reached(c, stop_at):
                if c.frames >= c.next_eval_frame:
                    self._run_eval(progress)
                    if target_reached(c, stop_at):
                        break
                metrics = self.iteration()
                clock.tick()
                self._log_train(metrics)
                if c.next_checkpoint_frame <= c.frames < cfg.train.frames:
                    self.save()
                    c.next_checkpoint_frame = c.frames + cfg.train.checkpoint_every_frames
                self._show(progress, metrics)
            if target_reached(c, stop_at):
                progress.message(target_message(c, stop_at))  # type: ignore[arg-type]
            elif c.last_eval_frame != c.frames:  # always end with an evaluation
                self._run_eval(progress)
        return c  # also after Ctrl-C, which the session turns into a checkpoint

    def iteration(self) -> dict[str, float]:
        """One SDPG iteration: weights to the runner, a window, a learner step; its metrics."""
        start = time.perf_counter()
        self.runner.set_weights(self.agent.policy_state_dict(), self.counters.updates)
        result = self.runner.run_window()
        learn_start = time.perf_counter()
        with _interrupts_deferred():
            metrics = self.agent.learn([result])
            self._count(result)
        now = time.perf_counter()
        seconds = {f"{k}_s": v for k, v in result.seconds.items()}
        return (
            metrics
            | seconds
            | {
                "learner_s": now - learn_start,
                "iteration_s": now - start,
                "window_bytes": float(result.nbytes),
            }
        )

    def _count(self, result: WindowResult) -> None:
        c, nominals = self.counters, len(result.group_ids)
        c.updates += 1
        c.weight_version = c.updates
        c.steps += nominals * result.horizon
        c.frames += nominals * result.horizon * self.cfg.env.action_repeat
        c.episodes += len(result.episode_returns)
        self.sim_steps += result.rewards.size
        self.recent_returns.extend(result.episode_returns)
        if result.episode_returns:
            c.last_train_return = float(np.mean(self.recent_returns))

    def _greet(self, progress: ProgressDisplay) -> None:
        c = self.counters
        for text in self._messages:
            progress.message(text)
        if self.resumed_from is not None:
            progress.message(
                f"resumed from {self.resumed_from} at frame {c.frames:,}, iteration {c.updates}"
            )
        s = self.cfg.sdpg
        progress.message(
            f"sdpg: {s.nominals} nominals x {s.clones} clones, window {self.runner.horizon} "
            f"steps, {s.obs} actor; learner on {self.agent.device}; run dir {self.run_dir}"
        )

    def _run_eval(self, progress: ProgressDisplay) -> None:
        c, train = self.counters, self.cfg.train
        progress.message(  # an evaluation takes minutes on a CPU: say what is happening
            f"evaluating at frame {c.frames:,}: {train.eval_episodes} episodes, mean action"
        )
        try:
            metrics = evaluate_and_record(
                self.agent,
                self.eval_env,
                train.eval_episodes,
                c.steps,
                c.frames,
                c.evaluations,
                train.video_every_evals if self.eval_env.pixels else 0,
                self.run_dir / "videos",
                on_step=shown_on(progress, train.eval_episodes),
            )
        finally:
            progress.activity(None)
        c.evaluations += 1
        c.last_eval_return = metrics["eval_return"]
        c.last_eval_frame = c.frames
        c.next_eval_frame = c.frames + train.eval_every_frames
        self.eval_log.write(
            {"frame": c.frames, "step": c.steps, "episode": c.episodes, "wall_time": c.wall_time}
            | metrics
        )
        progress.message(
            f"eval at frame {c.frames:,}: return {metrics['eval_return']:.1f} "
            f"± {metrics['eval_return_std']:.1f} over {metrics['eval_episodes']} episodes"
        )

    def _log_train(self, metrics: dict[str, float]) -> None:
        c = self.counters
        row = {
            "frame": c.frames,
            "step": c.steps,
            "episode": c.episodes,
            "updates": c.updates,
            "wall_time": round(c.wall_time, 3),
            "train_return": c.last_train_return,
            "sim_steps": self.sim_steps,
        }
        self.train_log.write(row | {k: metrics.get(k, float("nan")) for k in TRAIN_METRICS})

    def _show(self, progress: ProgressDisplay, metrics: dict[str, float]) -> None:
        c = self.counters
        progress.update(
            c.frames,
            c.updates,
            episode=c.episodes,
            train_return=finite(c.last_train_return),
            eval_return=finite(c.last_eval_return),
            **{key: metrics.get(key) for key, _ in _SHOWN},
        )

    def close(self) -> None:
        """Release the envs; flush the TensorBoard events."""
        self.runner.close()
        self.eval_env.close()
        if self.events is not None:
            self.events.close()


TRAIN_METRICS = (
    "actor_loss",
    "critic_loss",
    "sigma",
    "temperature",
    "actor_lr",
    "actor_grad_norm",
    "critic_grad_norm",
    "return_diff_std",
    "dead_slots",
    "mean_step",
    "value",
    "return",
    "physics_s",
    "render_s",
    "policy_s",
    "learner_s",
    "iteration_s",
    "window_bytes",
)
"""SDPG's columns of train.csv after the counters."""


def _make_runner(cfg: Config, seed: int) -> GroupRunner:
    """All groups in one runner; a pixel run that cannot render says how to run without."""
    try:
        return GroupRunner(cfg.env, cfg.sdpg, range(cfg.sdpg.nominals), seed)
    except RuntimeError as exc:
        if type(exc).__name__ != "GLBackendError":
            raise
        raise type(exc)(
            f"{exc}; or train SDPG's state actor, which renders nothing: sdpg.obs=state"
        ) from None


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then interrupt (KeyboardInterrupt); a
    signal that is ignored stays ignored."""
    caught: list[int] = []
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in handlers.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt
