"""Single-process DrQ-v2 training (``distdrq train``): one env, one replay shard, one agent.

The loop is DrQ-v2's: seed frames of uniform actions, then an update every
``agent.update_every_steps`` agent steps; evaluation with the mean action every
``train.eval_every_frames``; checkpoints at episode boundaries (and on exit), so that
``--resume`` continues from the exact frame, episode, replay contents and optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distdrq.agent import make_agent
from distdrq.agent.transfer import DeviceFeed
from distdrq.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_latest,
    load_part,
    save_checkpoint,
)
from distdrq.config import Config, to_dict
from distdrq.envs import make_env
from distdrq.progress import CsvLog, ProgressDisplay
from distdrq.replay import ChunkRejected, EpisodeWriter, ReplayShard
from distdrq.replay.decoding import DecoderPool
from distdrq.replay.shard import disk_state
from distdrq.run.counters import Counters
from distdrq.run.evaluation import evaluate_and_record, shown_on
from distdrq.run.rundir import (
    reuse_source,
    rollback_records,
    save_run_config,
)
from distdrq.run.session import finite, target_message, target_reached, training_session
from distdrq.tblog import open_events


class Trainer:
    """Owns the env, replay, agent, logs and counters of one single-process run."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.counters = Counters()
        seed = cfg.train.seed
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.env = make_env(cfg.env, seed)
        self.eval_env = make_env(cfg.env, seed + 10_000)
        self.agent = make_agent(self.env.obs_shape, self.env.action_dim, cfg.agent)
        self.replay = ReplayShard(
            capacity=cfg.replay.capacity,
            nstep=cfg.replay.nstep,
            discount=cfg.replay.discount,
            frame_stack=cfg.env.frame_stack,
            seed=seed,
            codec=cfg.replay.codec,
        )
        self.sample_rng = np.random.default_rng(seed + 1)
        self.decoder = (
            DecoderPool(cfg.replay.decode_threads) if cfg.replay.learner_decodes() else None
        )
        # batches are sampled into its host buffers (pinned on a GPU) and copied asynchronously
        self.feed = DeviceFeed(
            self.agent,
            self.env.obs_shape,
            self.env.action_dim,
            cfg.agent.batch_size,
            cfg.agent.metrics_every,
        )
        self.writer = EpisodeWriter(writer_id=0, chunk_length=1, codec=cfg.replay.codec)
        self.resumed_from: Path | None = None
        self.rejected_chunks = 0
        self._messages: list[str] = []
        if resume:
            self._restore()
        else:
            self.counters.next_checkpoint_frame = cfg.train.checkpoint_every_frames
            self.env.check_rendering()  # a run that cannot render leaves no run directory
            save_run_config(self.run_dir, cfg)
        self.events = open_events(self.run_dir, cfg.train.tensorboard, resume)
        self.train_log = CsvLog(self.run_dir / "train.csv", self.events)
        self.eval_log = CsvLog(self.run_dir / "eval.csv", self.events)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, quick: bool = False) -> Path:
        """Checkpoint agent, optimizers, counters, RNG states and the replay contents. ``quick``
        (Ctrl-C): episodes that the newest checkpoint does not hold keep the replay codec's bytes
        instead of being coded for disk (:func:`~distdrq.replay.shard.disk_state`)."""
        state = {
            "counters": self.counters.to_dict(),
            "config": to_dict(self.cfg),
            "agent": self.agent.state_dict(),
            "sample_rng": self.sample_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "writer": {"episodes_started": self.writer.episodes_started},
        }
        previous = reuse_source(  # the newest checkpoint's replay: its coded episodes are reused
            self.cfg.replay.disk_codec,
            list_checkpoints(self.run_dir),
            lambda path: load_part(path, "replay"),
            (CheckpointError,),
        )
        replay = disk_state(
            self.replay.state_dict(), self.cfg.replay.disk_codec, previous, code_new=not quick
        )
        parts = {"replay": replay}
        return save_checkpoint(self.run_dir, self.counters.frames, state, parts)

    def _restore(self) -> None:
        def restore(state: dict[str, Any], parts: dict[str, dict[str, Any]]) -> None:
            self.replay.load_state_dict(parts["replay"])  # ValueError: damaged replay frames
            self.agent.load_state_dict(state["agent"])

        path, state, parts = load_latest(self.run_dir, warn=self._messages.append, restore=restore)
        self.counters = Counters.from_dict(state["counters"])
        self.sample_rng.bit_generator.state = state["sample_rng"]
        torch.set_rng_state(torch.as_tensor(state["torch_rng"]))
        self.writer.episodes_started = int(state["writer"]["episodes_started"])
        self.resumed_from = path
        c = self.counters
        self._messages.extend(rollback_records(self.run_dir, c.frames, c.last_eval_frame))

    # -- loop -------------------------------------------------------------------------------

    def _eval_due(self) -> bool:
        return self.counters.frames >= self.counters.next_eval_frame

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
                train.video_every_evals,
                self.run_dir / "videos",
                on_step=shown_on(progress, train.eval_episodes),
            )
        finally:
            progress.activity(None)
        c.evaluations += 1
        c.last_eval_return = metrics["eval_return"]
        c.last_eval_frame = c.frames
        c.next_eval_frame = c.frames + self.cfg.train.eval_every_frames
        self.eval_log.write(
            {"frame": c.frames, "step": c.steps, "episode": c.episodes, "wall_time": c.wall_time}
            | metrics
        )
        progress.message(
            f"eval at frame {c.frames:,}: return {metrics['eval_return']:.1f} "
            f"± {metrics['eval_return_std']:.1f} over {metrics['eval_episodes']} episodes"
        )
        # the panel (and the final line) shows this evaluation, also the last one of the run
        progress.update(c.frames, c.updates, eval_return=finite(c.last_eval_return))

    def train(self, progress: ProgressDisplay | None = None) -> Counters:
        """Train until ``train.frames``; checkpoint and return the counters on exit or Ctrl-C."""
        cfg, c = self.cfg, self.counters
        progress = progress or ProgressDisplay(cfg.env.task, cfg.train.frames)
        seed_steps = cfg.train.seed_frames // cfg.env.action_repeat
        with progress, training_session(c, self.run_dir, self.save, progress) as clock:
            for text in self._messages:
                progress.message(text)
            if self.resumed_from is not None:
                progress.message(
                    f"resumed from {self.resumed_from} at frame {c.frames:,}, episode {c.episodes}"
                )
            progress.message(
                f"learner on {self.agent.device} ({precision_label(self.agent)}); "
                f"run dir {self.run_dir}"
            )
            ts = self.env.reset()
            self.writer.begin(ts.frame)
            episode_return = 0.0
            last_log_frame = c.frames
            metrics: dict[str, float] = {}
            stop_at = cfg.train.stop_at_return
            while c.frames < cfg.train.frames and not target_reached(c, stop_at):
                if self._eval_due():
                    self._run_eval(progress)
                    if target_reached(c, stop_at):
                        break
                # act
                with torch.no_grad():
                    action = self.agent.act(ts.observation, c.steps, eval_mode=False)
                # update
                update_due = c.steps >= seed_steps and c.steps % cfg.agent.update_every_steps == 0
                if update_due and self.replay.num_sampleable > 0:
                    metrics = self._update(c.steps) or metrics
                    c.updates += 1
                # step
                ts = self.env.step(action)
                episode_return += ts.reward
                chunk = self.writer.append(action, ts.reward, ts.discount, ts.frame, ts.last)
                if chunk is not None:
                    self._insert(chunk, progress)
                c.steps += 1
                c.frames += cfg.env.action_repeat
                clock.tick()
                if ts.last:
                    c.episodes += 1
                    c.last_train_return = episode_return
                    episode_return = 0.0
                    if c.frames >= c.next_checkpoint_frame and c.frames < cfg.train.frames:
                        self.save()
                        c.next_checkpoint_frame = c.frames + cfg.train.checkpoint_every_frames
                    ts = self.env.reset()
                    self.writer.begin(ts.frame)
                if c.frames - last_log_frame >= cfg.train.log_every_frames or ts.first:
                    last_log_frame = c.frames
                    self._log_train(metrics)
                progress.update(
                    c.frames,
                    c.updates,
                    episode=c.episodes,
                    train_return=finite(c.last_train_return),
                    eval_return=finite(c.last_eval_return),
                )
            if target_reached(c, stop_at):
                progress.message(target_message(c, stop_at))  # type: ignore[arg-type]
            elif c.last_eval_frame != c.frames:  # always end with an evaluation
                self._run_eval(progress)
        return c  # also after Ctrl-C, which the session turns into a checkpoint

    def _update(self, step: int) -> dict[str, float] | None:
        """Sample a batch into a host buffer, stage it and update on it at once (sampling sees
        every transition inserted so far, as in DrQ-v2); the metrics when read back.

        Frames are decoded on this thread, or (decode_on=learner) planned here and decoded on
        the decoder pool's threads straight from replay's memory: the same batch either way."""
        host = self.feed.host_buffer()
        self.replay.sample(self.cfg.agent.batch_size, self.sample_rng, host, self.decoder)
        self.feed.stage(host)
        return self.feed.update(step)

    def _insert(self, chunk: Any, progress: ProgressDisplay) -> None:
        """Store a transition; replay refuses non-finite values (a broken env or reward): the
        rest of that episode is then dropped, said in one line, and training goes on."""
        try:
            self.replay.insert(chunk)
        except ChunkRejected as exc:
            self.writer.abandon_episode()
            self.rejected_chunks += 1
            progress.message(f"replay refused a transition ({exc}); dropping the episode's rest")

    def _log_train(self, metrics: dict[str, float]) -> None:
        c = self.counters
        self.train_log.write(
            {
                "frame": c.frames,
                "step": c.steps,
                "episode": c.episodes,
                "updates": c.updates,
                "wall_time": round(c.wall_time, 3),
                "train_return": c.last_train_return,
                "replay_transitions": len(self.replay),
                "stddev": self.cfg.agent.stddev_schedule(c.steps),
            }
            | {k: metrics.get(k, float("nan")) for k in _TRAIN_METRICS}
        )

    def close(self) -> None:
        """Release the envs and the decoding threads; flush the TensorBoard events."""
        self.env.close()
        self.eval_env.close()
        if self.events is not None:
            self.events.close()
        if self.decoder is not None:
            self.decoder.close()


_TRAIN_METRICS = (
    "critic_loss",
    "critic_q1",
    "critic_q2",
    "critic_target_q",
    "actor_loss",
    "actor_ent",
    "batch_reward",
    "alpha",
    "alpha_loss",
)


def precision_label(agent: Any) -> str:
    """``bf16``, ``fp16 + grad scaler`` or ``fp32``: what the agent's updates run in."""
    dtype = getattr(agent, "amp_dtype", None)
    if dtype is None:
        return "fp32"
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    scaler = getattr(agent, "critic_scaler", None)
    return f"{name} + grad scaler" if scaler is not None and scaler.is_enabled() else name
