"""Env actors and the evaluator: CPU processes that render DMC pixels with a copy of the policy.

An env actor steps its env with the newest weights it has, cuts the episode into chunks
(``distributed.chunk_length`` transitions) and sends each to its replay shard; it waits for a
chunk's insert to be acknowledged before sending the next, which is how the shard's rate
limiter holds it back. Each chunk is followed by one report to the coordinator, whose reply
carries the global frame count (for the exploration schedule), the newest weight version
(weights are fetched only when newer) and the stop flag.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from distdrq.config import Config
from distdrq.distributed import crash_tracebacks
from distdrq.distributed.messages import EvalReport, SendResult
from distdrq.distributed.replay_actor import ReplayClient
from distdrq.envs import make_env
from distdrq.numpy_policy import limit_blas_threads, make_acting_policy, numpy_acting
from distdrq.replay import EpisodeWriter
from distdrq.run.evaluation import EvaluationCancelled, evaluate_and_record
from distdrq.types import Chunk

# Episode keys are writer_id << 32 | episode; writer ids must never repeat within a run, across
# actor restarts and resumed sessions alike, because replay snapshots outlive both.
_INDEX_BITS = 10
_START_BITS = 10


def writer_id(session: int, starts: int, index: int) -> int:
    """A writer id unique per (launch session, actor start, actor index)."""
    return (session << (_INDEX_BITS + _START_BITS)) | ((starts - 1) << _INDEX_BITS) | index


def lookup(run_name: str, num_shards: int) -> tuple[Any, list[Any], Any | None]:
    """The coordinator, replay shards and global rate limiter (None if unlimited) of a run.

    Actors find each other by their Ray actor names rather than receiving handles as
    constructor arguments, so a restarted actor always reaches its peers' current incarnation.
    """
    coordinator = ray.get_actor(f"{run_name}-coordinator")
    shards = [ray.get_actor(f"{run_name}-replay-{i}") for i in range(num_shards)]
    try:
        limiter = ray.get_actor(f"{run_name}-ratelimiter")
    except ValueError:
        limiter = None
    return coordinator, shards, limiter


def _numpy_evaluation(cfg: Config, seed: int) -> tuple[Any, Any]:
    """The replay flow's evaluation env and policy, without torch (roles.py's
    ``_replay_evaluation`` with :class:`~distdrq.numpy_policy.NumpyPolicy`)."""
    env = make_env(cfg.env, seed)
    limit_blas_threads(1)  # dm_control loaded SciPy's own OpenBLAS after pin_threads ran
    return env, make_acting_policy(env.obs_shape, env.action_dim, cfg.agent)


def pin_threads() -> None:
    """One thread each for torch (if loaded), NumPy's BLAS, OpenMP and Mesa in an env
    process; native crashes print Python stacks (:func:`crash_tracebacks`)."""
    crash_tracebacks()
    torch = sys.modules.get("torch")  # env actors of the replay flow never import it
    if torch is not None:
        torch.set_num_threads(1)
    limit_blas_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # an OpenBLAS loaded later (SciPy's)
    # Mesa's software rasteriser (llvmpipe) renders with extra threads unless told otherwise;
    # read when the GL context is created, so this must run before the env is made
    os.environ.setdefault("LP_NUM_THREADS", "1")


class _PolicyFollower:
    """Keeps a CPU policy at the coordinator's newest weight version."""

    def __init__(self, policy: Any, coord: Any) -> None:
        """``policy``: anything with ``version`` and ``load_policy_state_dict(state, version)``."""
        self.policy = policy
        self._coord = coord

    def refresh(self, newest: int) -> None:
        if newest <= self.policy.version:
            return
        found = ray.get(self._coord.weights_since.remote(self.policy.version))
        if found is None:
            return
        version, (ref,) = found
        # if the learner that owned these weights died, skip them: the next version will come
        with contextlib.suppress(ray.exceptions.RayError):
            self.policy.load_policy_state_dict(ray.get(ref), version)


class EnvActor:
    """One env process: act, step, chunk, insert, report; restartable (state lives elsewhere)."""

    def __init__(self, index: int, cfg: Config, run_name: str, session: int) -> None:
        pin_threads()
        coordinator, shards, limiter = lookup(run_name, cfg.distributed.shards)
        self.index = index
        self.cfg = cfg
        self.role = f"env-{index}"
        self._coord = coordinator
        self.starts = ray.get(coordinator.register.remote(self.role))
        seed = cfg.train.seed + index + 100_003 * (self.starts - 1 + 64 * session)
        self.env = make_env(cfg.env, seed)
        limit_blas_threads(1)  # dm_control loaded SciPy's own OpenBLAS after pin_threads ran
        policy = make_acting_policy(self.env.obs_shape, self.env.action_dim, cfg.agent)
        self.follower = _PolicyFollower(policy, coordinator)
        self.client = ReplayClient(shards, seed=seed, limiter=limiter)
        self.writer = EpisodeWriter(
            writer_id(session, self.starts, index),
            chunk_length=cfg.distributed.chunk_length,
            codec=cfg.replay.codec,
        )
        self.global_frames = 0
        self.stopped = False
        self._stop_now = threading.Event()  # set by stop(): checked every step
        self.lost_chunks = 0
        # also through Ray's own metrics: Ray's dashboard and service discovery show these
        from ray.util.metrics import Counter as RayCounter

        tags = {"run": run_name, "actor": str(index)}
        self._ray_frames = RayCounter(
            "distdrq_actor_env_frames", "env frames of one actor", tag_keys=("run", "actor")
        )
        self._ray_episodes = RayCounter(
            "distdrq_actor_env_episodes", "episodes of one actor", tag_keys=("run", "actor")
        )
        self._ray_frames.set_default_tags(tags)
        self._ray_episodes.set_default_tags(tags)

    def _send(self, chunk: Chunk) -> SendResult:
        """Insert ``chunk``, retrying while the rate limiter declines or a shard restarts."""
        while True:
            try:
                if ray.get(self.client.insert(chunk, timeout=2.0)):
                    return SendResult.SENT
            except ray.exceptions.RayTaskError as exc:
                # the shard refused it (damaged, non-finite, or its episode's start was lost in
                # a shard restart): nothing was stored; say so and go on with a new episode
                self.lost_chunks += 1
                reason = str(exc.cause if exc.cause is not None else exc).strip().splitlines()
                print(
                    f"{self.role}: chunk of episode {chunk.episode_key:#x} refused by replay "
                    f"({reason[0][:200] if reason else 'no reason'}); starting a new episode",
                    flush=True,
                )
                return SendResult.REFUSED
            except ray.exceptions.RayActorError:
                time.sleep(0.5)  # the shard or limiter is restarting: same chunk again
            if self._stop_now.is_set() or ray.get(self._coord.should_stop.remote()):
                return SendResult.STOPPED

    def _report(self, frames: int, returns: list[float]) -> None:
        if frames:
            self._ray_frames.inc(frames)
        if returns:
            self._ray_episodes.inc(len(returns))
        reply = ray.get(
            self._coord.report_env.remote(self.role, frames, returns, self.follower.policy.version)
        )
        self.global_frames = reply.frames
        self.stopped = reply.stop
        self.follower.refresh(reply.weight_version)

    def run(self) -> int:
        """Step until the coordinator says stop; returns the frames this call produced."""
        cfg = self.cfg
        repeat = cfg.env.action_repeat
        self._report(0, [])
        produced = unreported = 0
        returns: list[float] = []
        ts = self.env.reset()
        self.writer.begin(ts.frame)
        episode_return = 0.0
        while not (self.stopped or self._stop_now.is_set()):
            step = (self.global_frames + unreported) // repeat
            action = self.follower.policy.act(ts.observation, step, eval_mode=False)
            ts = self.env.step(action)
            episode_return += ts.reward
            unreported += repeat
            produced += repeat
            chunk = self.writer.append(
                action, ts.reward, ts.discount, ts.frame, ts.last, self.follower.policy.version
            )
            if ts.last:
                returns.append(episode_return)
                episode_return = 0.0
                ts = self.env.reset()
                self.writer.begin(ts.frame)
            if chunk is not None:
                outcome = self._send(chunk)
                if outcome is SendResult.STOPPED:
                    break
                if (
                    outcome is SendResult.REFUSED and not ts.first
                ):  # drop the episode, start a fresh one
                    ts = self.env.reset()
                    self.writer.begin(ts.frame)
                    episode_return = 0.0
                self._report(unreported, returns)
                unreported, returns = 0, []
        pending = self.writer.flush()  # keep the partial episode: nothing rendered is lost
        if pending is not None:
            self._send(pending)
        if unreported or returns:
            self._report(unreported, returns)
        return produced

    def ping(self) -> int:
        """Liveness check."""
        return self.index

    def stop(self) -> None:
        """Finish the current step, send what was rendered, and return from :meth:`run`
        (answered on the actor's second thread while run() holds the first)."""
        self._stop_now.set()

    def pid(self) -> int:
        """This actor's process id."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        return ray.get_runtime_context().get_node_id()


class Evaluator:
    """Runs mean-action episodes every ``train.eval_every_frames`` global frames."""

    def __init__(
        self, cfg: Config, run_name: str, next_eval_frame: int = 0, video_dir: str | None = None
    ) -> None:
        """``video_dir``: where evaluation GIFs go (a path every node can write, as for
        replay snapshots)."""
        pin_threads()
        self.video_dir = video_dir
        self.evaluations = 0
        self._stop_now = threading.Event()
        coordinator, _, _ = lookup(run_name, 0)
        self.cfg = cfg
        self._coord = coordinator
        self.starts = ray.get(coordinator.register.remote("evaluator"))
        # the env lives on one thread of its own: a GL context is current on the thread that
        # made it, while run() and the final evaluate() may come on different Ray threads
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluation")
        make = _numpy_evaluation
        if not numpy_acting(cfg.agent):
            # the run's data flow gives the env and policy (SDPG's nominal and its policy);
            # late: roles imports this module (and torch)
            from distdrq.distributed.roles import roles_for

            make = roles_for(cfg).evaluation
        self.env, policy = self._thread.submit(make, cfg, cfg.train.seed + 10_000).result()
        self.follower = _PolicyFollower(policy, coordinator)
        # Ray restarts this actor with its first arguments: continue the run's evaluation grid
        counters = ray.get(coordinator.snapshot.remote()).counters
        if counters.last_eval_frame >= 0:
            next_eval_frame = max(
                next_eval_frame, counters.last_eval_frame + cfg.train.eval_every_frames
            )
            self.evaluations = counters.evaluations
        self.next_eval_frame = next_eval_frame

    def ping(self) -> int:
        """Liveness check."""
        return self.starts

    def pid(self) -> int:
        """This actor's process id."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        return ray.get_runtime_context().get_node_id()

    def stop(self) -> None:
        """Cancel the evaluation :meth:`run` is doing and return from it (a stopping run does
        not wait for its episodes; the final evaluation is a separate :meth:`evaluate` call)."""
        self._stop_now.set()

    def evaluate(self, frame: int, cancellable: bool = False) -> float:
        """Evaluate the newest weights now; reports and returns the mean return. A
        ``cancellable`` one raises EvaluationCancelled once :meth:`stop` is called."""
        snap = ray.get(self._coord.snapshot.remote())
        self.follower.refresh(snap.counters.weight_version)
        step = frame // self.cfg.env.action_repeat
        train = self.cfg.train
        result = self._thread.submit(
            evaluate_and_record,
            self.follower.policy,
            self.env,
            train.eval_episodes,
            step,
            frame,
            self.evaluations,
            train.video_every_evals if getattr(self.env, "pixels", True) else 0,
            self.video_dir,
            self._stop_now.is_set if cancellable else None,
        ).result()
        self.evaluations += 1
        report = EvalReport(
            frame,
            result["eval_return"],
            result["eval_return_std"],
            result["eval_episodes"],
            self.follower.policy.version,
        )
        # waited for: the driver's final snapshot, taken right after the final evaluation,
        # must show its return (not the one before)
        ray.get(self._coord.report_eval.remote(report))
        return report.mean_return

    def run(self) -> int:
        """Evaluate whenever the global frame count passes the next evaluation point."""
        done = 0
        while True:
            snap = ray.get(self._coord.snapshot.remote())
            if snap.stop or self._stop_now.is_set():
                return done
            frames = snap.counters.frames
            if frames >= self.next_eval_frame:
                try:
                    self.evaluate(frames, cancellable=True)
                except EvaluationCancelled:
                    return done
                done += 1
                self.next_eval_frame = frames + self.cfg.train.eval_every_frames
            else:
                time.sleep(0.5)
