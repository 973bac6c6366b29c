"""Typed configuration: one dataclass per component, YAML presets, command-line overrides.

Every field carries a one-line docstring (the string literal below it). A preset is a YAML file
with one mapping per section (``env``, ``agent``, ``replay``, ``train``) and an optional
``extends`` naming another preset (for example a difficulty group) whose values it overrides.
The dataclass defaults are DrQ-v2's; another algorithm's published defaults are a preset of
their own (``configs/algos/<algo>.yaml``), applied under the task preset when ``agent.algo``
names it.
Overrides on the command line use dotted keys: ``agent.lr=3e-4``.

Every rule (choices, ranges, cross-field rules) is checked in one place, :func:`validate`
(:func:`validate_agent` for the agent section alone, which the agents call); errors are one line
and name the key and the fix (:class:`ConfigError`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distdrq.replay.registry import CODECS as REPLAY_CODECS  # standard library only


class ConfigError(ValueError):
    """A configuration problem, described in one line that names the key and the fix."""


@dataclass
class LinearSchedule:
    """Linear interpolation from ``initial`` to ``final`` over ``duration`` agent steps."""

    initial: float = 1.0
    """value at agent step 0"""
    final: float = 0.1
    """value from ``duration`` agent steps on"""
    duration: int = 500_000
    """number of agent steps (env steps / action repeat) of the ramp"""

    def __call__(self, step: int) -> float:
        mix = min(max(step / max(self.duration, 1), 0.0), 1.0)
        return (1.0 - mix) * self.initial + mix * self.final


@dataclass
class EnvConfig:
    """DeepMind Control Suite pixel environment."""

    task: str = "walker_walk"
    """DrQ-v2 task name, e.g. walker_walk, cheetah_run, cup_catch (see `distdrq tasks`)"""
    image_size: int = 84
    """height and width of rendered frames in pixels"""
    action_repeat: int = 2
    """physics steps per agent step; rewards are summed"""
    frame_stack: int = 3
    """frames stacked along channels into one observation"""
    camera_id: int = -1
    """camera to render; -1 picks the DrQ-v2 default (2 for quadruped, else 0)"""
    fast_render: bool = False
    """turn off shadows and reflections (about 6x faster on CPU; scores not comparable)"""
    grayscale: bool = False
    """render one luminance channel instead of RGB (the compression paper's setting)"""
    black_floor: bool = False
    """replace the floor texture by black (the compression paper's setting)"""
    gl_backend: str = "egl"
    """MuJoCo rendering backend for MUJOCO_GL: egl, osmesa or glfw"""


@dataclass
class DrQConfig:
    """DrQ's own keys (``agent.drq.*``, used when ``agent.algo=drq``); defaults as published."""

    init_temperature: float = 0.1
    """initial SAC temperature alpha (learned against target entropy -|A|)"""
    actor_update_every: int = 2
    """critic updates between actor and temperature updates"""
    target_update_every: int = 2
    """critic updates between soft target updates"""
    encoder_tau: float = 0.01
    """soft update rate of the target encoder (published DrQ: the critic's 0.01, as its target
    critic holds the encoder; SAC-AE and CURL: 0.05)"""
    log_std_min: float = -10.0
    """lower bound of the actor's log std"""
    log_std_max: float = 2.0
    """upper bound of the actor's log std"""
    target_augs: int = 2
    """K: augmented copies of next_obs per critic target, their targets averaged (published: 2)"""
    critic_augs: int = 2
    """M: augmented copies of obs in the critic loss, their losses summed (published: 2)"""


@dataclass
class AgentConfig:
    """Learner hyperparameters: defaults are DrQ-v2's as published for easy and medium tasks;
    ``algo: drq`` layers DrQ's published values (``configs/algos/drq.yaml``) under the presets.

    Every key here serves both algorithms except DrQ-v2's exploration noise (``stddev_schedule``,
    ``stddev_clip``), kept at ``agent.*`` where presets and saved runs name it; DrQ's own keys
    are a section of their own (``agent.drq``), which DrQ-v2 ignores."""

    algo: str = "drqv2"
    """learning algorithm (distdrq.agent.ALGORITHMS): drqv2 (DDPG, Yarats et al. 2021) or drq
    (SAC, Kostrikov et al. 2020; selects DrQ's published defaults, configs/algos/drq.yaml)"""
    lr: float = 1e-4
    """Adam learning rate for encoder, actor and critic"""
    feature_dim: int = 50
    """trunk output size (humanoid: 100)"""
    hidden_dim: int = 1024
    """width of the actor and critic MLP heads"""
    encoder: str = "drqv2"
    """image encoder: drqv2 (4 convs, 32 channels) or nano (3 strided convs to a 256-d latent)"""
    critic_tau: float = 0.01
    """soft target update rate"""
    batch_size: int = 256
    """transitions per learner update (walker tasks: 512)"""
    update_every_steps: int = 2
    """agent steps between learner updates in single-process training"""
    num_expl_steps: int = 2000
    """agent steps of uniform random actions at the start"""
    stddev_schedule: LinearSchedule = field(default_factory=LinearSchedule)
    """drqv2 only: exploration std over agent steps (easy 100k, medium 500k, hard 2M)"""
    stddev_clip: float = 0.3
    """drqv2 only: clip of the target policy smoothing noise"""
    precision: str = "auto"
    """autocast dtype: auto (bf16 on a GPU that supports it, else fp16; fp32 on CPU), bf16, fp16, fp32"""
    channels_last: bool = True
    """use channels_last memory format for the encoder on GPU"""
    compile: bool = False
    """torch.compile the update step"""
    device: str = "auto"
    """torch device for learning: auto (cuda if available), cpu, cuda, cuda:N"""
    grad_checkpointing: bool = False
    """recompute the encoder's conv activations in backward instead of storing them"""
    metrics_every: int = 10
    """updates between read-backs of the loss metrics (their mean): the only point at which the
    learner's loop waits for the device"""
    drq: DrQConfig = field(default_factory=DrQConfig)
    """drq only: SAC temperature, update cadence, target encoder, log std bounds, K and M"""


@dataclass
class SDPGConfig:
    """SDPG's own keys (``sdpg.*``, used when ``agent.algo=sdpg``); defaults as the published
    walker/hopper configs (HaoxiangYou/SDPG ``cfgs/agent/sdpg/mujoco_walker*.yaml``). The DMC
    adaptations (shared/reference/SDPG.md section 5) are ``horizon_seconds``,
    ``delta_j_floor`` and ``env.action_repeat`` (``configs/algos/sdpg.yaml``); clones copy task
    state kept outside ``mjData`` and never step through ``Environment.step``
    (:mod:`distdrq.envs.clones`)."""

    obs: str = "pixels"
    """actor input: pixels (84x84 frame stack of the nominals, DrQ-v2 encoder) or state (the
    task's observation vector); the critic always sees the state"""
    nominals: int = 64
    """N: nominal envs (the only ones rendered), each with its own clones"""
    clones: int = 63
    """P: physics-only clones per nominal (actions: the nominal's mean plus Gaussian noise)"""
    horizon: int = 32
    """H: agent steps per window (clones restart from their nominal at every window)"""
    horizon_seconds: float = 0.0
    """DMC adaptation: if > 0, H = round(horizon_seconds / agent step duration) instead of
    ``horizon``, since DMC's control steps are 0.01-0.025 s and action repeat multiplies them
    (published: 32 steps of 0.01 s = 0.32 s)"""
    gamma: float = 0.99
    """discount per agent step"""
    lam: float = 0.95
    """TD(lambda) weight of the returns"""
    reward_scale: float = 1.0
    """rewards are multiplied by this"""
    delta_j_floor: float = 1e-3
    """DMC adaptation: a (nominal, step) slot whose return differences have a std below
    delta_j_floor * (|J_nominal| + 1) gives no ascent direction (motionless states, where
    dividing by std + 1e-6 turns round-off into unit noise); 0: the published rule"""
    actor_lr: float = 2e-3
    """actor Adam learning rate after warm-up"""
    actor_lr_min: float = 1e-5
    """actor learning rate at the end of the cosine decay (and after it)"""
    warmup_iterations: int = 100
    """iterations of linear learning-rate warm-up from 0"""
    lr_decay_iterations: int = 20000
    """iteration at which the cosine decay reaches actor_lr_min (published: max_epochs)"""
    critic_lr: float = 2e-4
    """critic Adam learning rate (constant)"""
    critic_minibatch: int = 4096
    """critic minibatch size"""
    critic_passes: int = 2
    """passes over the iteration's (state, return) pairs per critic update"""
    critic_on_clones: bool = True
    """train the critic on clone states too (published: use_auxiliary_envs_for_critic)"""
    target_critic_alpha: float = 0.01
    """target <- alpha * target + (1 - alpha) * critic after each iteration"""
    grad_clip: float = 1.0
    """gradient-norm clip of the actor and critic steps"""
    init_temperature: float = 0.01
    """initial entropy temperature alpha"""
    target_std: float = 0.15
    """the temperature is tuned to keep the mean policy std at this value"""
    temperature_lr: float = 1e-3
    """Adam learning rate of log alpha"""
    mean_bound: float = 2.0
    """pre-tanh action means and actions are clamped to [-mean_bound, mean_bound]"""
    log_std_min: float = -5.0
    """lower bound of the policy's log std"""
    log_std_max: float = 2.0
    """upper bound of the policy's log std"""
    log_std_init: float = 0.0
    """initial log std (one learned vector, not state-dependent)"""


@dataclass
class ReplayConfig:
    """Replay buffer; frames stored once, stacks and n-step targets rebuilt at sample time."""

    capacity: int = 1_000_000
    """maximum number of transitions kept (FIFO eviction of whole episodes)"""
    nstep: int = 3
    """n-step return horizon (walker tasks: 1)"""
    discount: float = 0.99
    """agent discount factor gamma"""
    codec: str = "lz4d-star32"
    """frame codec: lz4d-star32 (lossless, ~12-20x smaller than DrQ-v2), lz4-key16 (faster
    sampling, ~8-16x), raw (fastest sampling), ... (distdrq.replay.codec.CODECS)"""
    disk_codec: str = "cm"
    """frames in replay snapshots and checkpoints: cm (context-modelling coder, ~2x smaller than
    the replay codec; ~1 ms per new frame to write, 1-1.5 ms per frame to restore) or stored
    (the replay's bytes as they are: fastest)"""
    decode_on: str = "learner"
    """where sampled frames are decoded: learner (shards send the coded bytes of the frames a
    batch needs, the learner's decode_threads decode them) or shard (on the shard's one core,
    which then sends the decoded batch); raw frames are always gathered on the shard"""
    decode_threads: int = 2
    """threads decoding replay frames in the learner's process (decode_on=learner; also in
    distdrq train); give it the cores the shards no longer spend on decoding"""
    learner_cache_mb: int = 4096
    """coded frames the learner keeps (decode_on=learner, distdrq launch), so that a frame's
    bytes cross from its shard once, not each time it is drawn: MB of learner memory, split
    over the shards; hits are about this size over the replay's coded size (walker_walk: about
    5 GB per million transitions); 0: every batch brings all its frames' bytes"""

    def learner_decodes(self) -> bool:
        """Whether batches travel coded and are decoded on the learner's side."""
        return self.decode_on == "learner" and self.codec != "raw"


@dataclass
class TrainConfig:
    """Single-process training loop (``distdrq train``)."""

    frames: int = 1_100_000
    """env frames (physics steps, counting action repeat) to train for"""
    seed_frames: int = 4000
    """frames collected before the first update"""
    eval_every_frames: int = 10_000
    """frames between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation, acting with the mean action"""
    stop_at_return: float | None = None
    """end the run at the first evaluation whose mean return reaches this, before
    ``train.frames`` (null: always train to ``train.frames``)"""
    video_every_evals: int = 5
    """record the first episode of the first and every K-th evaluation as RUN_DIR/videos/*.gif
    (0: never)"""
    checkpoint_every_frames: int = 50_000
    """frames between checkpoints (one more is written at the end)"""
    log_every_frames: int = 1000
    """frames between CSV log rows of training metrics"""
    tensorboard: bool = True
    """also write the train.csv/eval.csv scalars and eval videos as TensorBoard event files in
    the run directory (``tensorboard --logdir runs``)"""
    seed: int = 1
    """random seed for env, networks and sampling"""


@dataclass
class DistributedConfig:
    """Ray runtime (``distdrq launch``): topology, rate limiting, weight sync, snapshots."""

    actors: int = 8
    """env actor processes (one CPU each); seeds are train.seed + index"""
    shards: int = 2
    """replay shard actors; episodes are spread over them"""
    samples_per_insert: float = 128.0
    """sampled per inserted transitions (DrQ-v2: batch 256 every 2 steps = 128); 0 = no limit"""
    chunk_length: int = 50
    """transitions per chunk an env actor sends to replay"""
    weight_sync_every: int = 10
    """learner updates between weight broadcasts"""
    prefetch: int = 4
    """sampled batches the learner keeps in flight"""
    snapshot_every_inserts: int = 0
    """transitions between automatic shard snapshots (0: only with checkpoints)"""
    evaluator: bool = True
    """run an evaluator actor (mean-action episodes every train.eval_every_frames)"""
    dashboard: bool = True
    """start Ray's dashboard with the local Ray instance (launch without --address); false
    spares its dozen processes (about 5 CPU-seconds at start); `distdrq status` still works"""
    learner_gpus: float = -1.0
    """GPUs for the learner: -1 = one if the cluster has any, else 0 (CPU, with a notice)"""
    learner_threads: int = 1
    """torch threads of a learner on CPU (0 = every core of its node); the learner still reserves
    one Ray CPU. On a small machine whose actors are rate-limited (2 cores, 2 actors) 2 threads
    use the core the actors leave idle; a GPU learner needs only 1"""
    restart_backoff_s: float = 1.0
    """wait before restarting a role whose loop failed; doubles with each failure in a row"""
    restart_backoff_max_s: float = 30.0
    """longest wait between restarts of one role"""
    max_failures: int = 6
    """a role that fails this many times in a row without progress (the learner without an
    update, an env actor without a frame, others within a minute) ends the run with a
    checkpoint; 0 = restart forever"""


@dataclass
class Config:
    """The whole run."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sdpg: SDPGConfig = field(default_factory=SDPGConfig)


# ---------------------------------------------------------------------------------------------
# validation

# choices; agent.algo and agent.encoder are the names the agent registries hold (_registered)
_CHOICES: dict[str, tuple[str, ...]] = {
    "agent.precision": ("auto", "bf16", "fp16", "fp32"),
    "env.gl_backend": ("egl", "osmesa", "glfw"),
    "replay.disk_codec": ("cm", "stored"),
    "replay.codec": REPLAY_CODECS,
    "sdpg.obs": ("pixels", "state"),
    "replay.decode_on": ("learner", "shard"),
}

_POSITIVE = (
    "env.image_size",
    "env.action_repeat",
    "env.frame_stack",
    "agent.lr",
    "agent.feature_dim",
    "agent.hidden_dim",
    "agent.batch_size",
    "agent.update_every_steps",
    "agent.metrics_every",
    "agent.stddev_schedule.duration",
    "replay.capacity",
    "replay.nstep",
    "replay.decode_threads",
    "train.frames",
    "train.eval_every_frames",
    "train.checkpoint_every_frames",
    "train.log_every_frames",
    "agent.drq.init_temperature",
    "agent.drq.actor_update_every",
    "agent.drq.target_update_every",
    "agent.drq.target_augs",
    "agent.drq.critic_augs",
    "distributed.actors",
    "distributed.shards",
    "distributed.chunk_length",
    "distributed.weight_sync_every",
    "distributed.prefetch",
    "sdpg.nominals",
    "sdpg.clones",
    "sdpg.horizon",
    "sdpg.reward_scale",
    "sdpg.actor_lr",
    "sdpg.lr_decay_iterations",
    "sdpg.critic_lr",
    "sdpg.critic_minibatch",
    "sdpg.critic_passes",
    "sdpg.grad_clip",
    "sdpg.init_temperature",
    "sdpg.target_std",
    "sdpg.temperature_lr",
    "sdpg.mean_bound",
)


_UNIT_INTERVAL = (  # (0, 1]
    "replay.discount",
    "agent.critic_tau",
    "agent.drq.encoder_tau",
    "sdpg.gamma",
    "sdpg.lam",
)

_ORDERED = (  # the first < the second
    ("agent.drq.log_std_min", "agent.drq.log_std_max"),
    ("sdpg.log_std_min", "sdpg.log_std_max"),
    ("sdpg.warmup_iterations", "sdpg.lr_decay_iterations"),
    ("sdpg.actor_lr_min", "sdpg.actor_lr"),
)

_HALF_OPEN = ("sdpg.target_critic_alpha",)  # [0, 1)

_NON_NEGATIVE = (
    "replay.learner_cache_mb",
    "agent.num_expl_steps",
    "agent.stddev_clip",
    "agent.stddev_schedule.initial",
    "agent.stddev_schedule.final",
    "train.seed_frames",
    "train.eval_episodes",
    "train.video_every_evals",
    "distributed.samples_per_insert",
    "distributed.snapshot_every_inserts",
    "distributed.restart_backoff_s",
    "distributed.restart_backoff_max_s",
    "distributed.max_failures",
    "sdpg.horizon_seconds",
    "sdpg.delta_j_floor",
    "sdpg.actor_lr_min",
    "sdpg.warmup_iterations",
)


def field_docs(cls: type) -> dict[str, str]:
    """Map field name to the docstring literal that follows it in the class body."""
    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def unknown_task(name: str) -> ConfigError:
    """The one-line error for a task name that is not known, with close matches."""
    from distdrq.envs.tasks import known_tasks

    tasks = list(known_tasks())
    close = difflib.get_close_matches(name, tasks, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(
        f"unknown task {name!r}{hint}; run `distdrq tasks` to list the {len(tasks)} tasks"
    )


def validate(cfg: Config) -> Config:
    """Check every rule (choices, ranges, cross-field rules, the task name); raise a one-line
    :class:`ConfigError` on the first problem. The one place a config is checked: the CLI,
    the trainer and the agents (:func:`validate_agent`) rely on it."""
    from distdrq.envs.tasks import known_tasks

    _check_tables(cfg, "")
    _check_device(cfg.agent.device)
    if cfg.env.task not in known_tasks():
        raise unknown_task(cfg.env.task)
    if cfg.env.image_size < 16:  # both encoders need 15 pixels for a 1x1 conv output
        raise ConfigError(f"env.image_size={cfg.env.image_size} is too small; use 16 or more")
    if cfg.env.camera_id < -1:
        raise ConfigError(
            f"env.camera_id={cfg.env.camera_id} must be -1 (the task's default camera) or >= 0"
        )
    if cfg.agent.algo == "sdpg":
        _check_sdpg(cfg)
    if cfg.distributed.learner_threads < 0:
        raise ConfigError(
            f"distributed.learner_threads={cfg.distributed.learner_threads} must be >= 1, "
            "or 0 for every core of the learner's node"
        )
    if cfg.distributed.learner_gpus < 0 and cfg.distributed.learner_gpus != -1:
        raise ConfigError(
            f"distributed.learner_gpus={cfg.distributed.learner_gpus} must be -1 (one GPU if "
            "the cluster has any) or >= 0"
        )
    return cfg


def _check_sdpg(cfg: Config) -> None:
    """SDPG's cross-field rules: a task whose physics clones faithfully, a log std init inside
    its bounds."""
    from distdrq.envs.clones import check_clonable  # imported late: it imports this module

    check_clonable(cfg.env.task)
    sdpg = cfg.sdpg
    if not sdpg.log_std_min <= sdpg.log_std_init <= sdpg.log_std_max:
        raise ConfigError(
            f"sdpg.log_std_init={sdpg.log_std_init!r} must lie in [sdpg.log_std_min, "
            f"sdpg.log_std_max] = [{sdpg.log_std_min}, {sdpg.log_std_max}]"
        )


def validate_agent(cfg: AgentConfig) -> AgentConfig:
    """Check the ``agent`` section alone by :func:`validate`'s rules (for agents built from an
    :class:`AgentConfig` directly); raise a one-line :class:`ConfigError` on the first problem."""
    _check_tables(cfg, "agent")
    _check_device(cfg.device)
    return cfg


def _registered() -> dict[str, tuple[str, ...]]:
    """The choices the agent registries hold: algorithms and encoders."""
    from distdrq.agent.networks import ENCODERS  # imported late: the agents import this module
    from distdrq.agent.registry import ALGORITHMS

    return {"agent.algo": tuple(ALGORITHMS), "agent.encoder": tuple(ENCODERS)}


def _check_tables(obj: Any, section: str) -> None:
    """The table rules on keys under ``section`` ("": every key); ``obj`` is that section."""

    def mine(key: str) -> bool:
        return not section or key.startswith(f"{section}.")

    def value(key: str) -> Any:
        return get_key(obj, key[len(section) + 1 :] if section else key)

    for key, allowed in {**_registered(), **_CHOICES}.items():
        if mine(key) and value(key) not in allowed:
            raise ConfigError(
                f"{key}={value(key)!r} is not allowed; choose one of: {', '.join(allowed)}"
            )
    for key in filter(mine, _POSITIVE):
        if value(key) <= 0:
            raise ConfigError(f"{key}={value(key)!r} must be > 0")
    for key in filter(mine, _UNIT_INTERVAL):
        if not 0.0 < value(key) <= 1.0:
            raise ConfigError(f"{key}={value(key)!r} must be in (0, 1]")
    for low, high in _ORDERED:
        if mine(low) and not value(low) < value(high):
            raise ConfigError(f"{low}={value(low)!r} must be < {high}={value(high)!r}")
    for key in filter(mine, _NON_NEGATIVE):
        if value(key) < 0:
            raise ConfigError(f"{key}={value(key)!r} must be >= 0")
    for key in filter(mine, _HALF_OPEN):
        if not 0.0 <= value(key) < 1.0:
            raise ConfigError(f"{key}={value(key)!r} must be in [0, 1)")


def _check_device(device: str) -> None:
    if device == "auto":
        return
    import torch  # imported late: reading a config needs no torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"agent.device={device!r} is not a torch device; use auto, cpu, cuda or cuda:N"
        ) from None


# ---------------------------------------------------------------------------------------------
# dotted keys and type coercion


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def get_key(cfg: Any, key: str) -> Any:
    """Value at a dotted key, e.g. ``get_key(cfg, "agent.lr")``."""
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value.replace("_", ""))
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
        raise ConfigError(f"{key}={value!r} is not an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is not a number")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} is not a string")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {', '.join(_field_types(tp))}")
        obj = tp()
        _apply_mapping(obj, value, key)
        return obj
    raise ConfigError(f"{key}: unsupported field type {tp}")


# keys that moved to a section of their own: an old config or override names the new key
_MOVED = {
    f"agent.{name}": f"agent.drq.{name}"
    for name in (
        "init_temperature",
        "actor_update_every",
        "target_update_every",
        "encoder_tau",
        "log_std_min",
        "log_std_max",
    )
}


def migrate_saved(data: Any) -> Any:
    """A run directory's saved config as this version reads it: keys an older distdrq wrote in
    their old place (``_MOVED``) are moved, so old runs still resume. Overrides and presets
    get no such help: for them the old key is an error naming the new one."""
    if not isinstance(data, dict) or not isinstance(data.get("agent"), dict):
        return data
    agent = dict(data["agent"])
    moved = {}
    for old, new in _MOVED.items():
        name = old.split(".", 1)[1]
        if name in agent:
            moved[new.rsplit(".", 1)[1]] = agent.pop(name)
    if moved:
        agent["drq"] = {**moved, **(agent.get("drq") or {})}
    return {**data, "agent": agent}


def _unknown(key: str, name: str, choices: list[str]) -> ConfigError:
    where = f"{key}." if key else ""
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if f"{where}{name}" in _MOVED:
        hint = f" (moved to {_MOVED[where + name]})"
    return ConfigError(
        f"unknown config key '{where}{name}'{hint}; allowed: {', '.join(sorted(choices))}"
    )


def _apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str) -> None:
    types_ = _field_types(type(obj))
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in types_:
            raise _unknown(prefix, str(name), list(types_))
        tp = types_[name]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            _apply_mapping(getattr(obj, name), value, key)
        else:
            setattr(obj, name, _coerce(value, tp, key))


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key from a Python value or a command-line string (YAML scalar syntax)."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts[:-1]):
        types_ = _field_types(type(obj))
        if part not in types_ or not _is_dataclass_type(types_[part]):
            raise _unknown(".".join(parts[:i]), part, list(types_))
        obj = getattr(obj, part)
    types_ = _field_types(type(obj))
    name = parts[-1]
    if name not in types_:
        raise _unknown(".".join(parts[:-1]), name, list(types_))
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            parsed = value
        value = value if (types_[name] is str and not isinstance(parsed, dict)) else parsed
    setattr(obj, name, _coerce(value, types_[name], key))


def parse_override(text: str) -> tuple[str, str]:
    """Split ``section.key=value``; raise :class:`ConfigError` if it is not of that form."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} is not of the form section.key=value, e.g. agent.lr=3e-4"
        )
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


# ---------------------------------------------------------------------------------------------
# presets


def configs_dir() -> Path:
    """Directory of the YAML presets: the installed copy, else the repository's ``configs/``."""
    installed = Path(__file__).parent / "_configs"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "configs"


def preset_path(name: str) -> Path | None:
    """Path of a preset by task or preset name (``cheetah_run``, ``difficulty/easy``)."""
    root = configs_dir()
    for candidate in (root / f"{name}.yaml", root / "tasks" / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"preset {path} extends itself through {' -> '.join(map(str, seen))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (
        (path.parent / f"{parent}.yaml")
        if not str(parent).endswith(".yaml")
        else path.parent / parent
    )
    if not parent_path.is_file():
        found = preset_path(str(parent))
        if found is None:
            raise ConfigError(
                f"{path}: extends {parent!r}, which is not a preset under {configs_dir()}"
            )
        parent_path = found
    return _merge(_read_yaml(parent_path, (*seen, path)), data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested mappings, rejecting unknown keys."""
    cfg = Config()
    _apply_mapping(cfg, data, "")
    return cfg


def algo_preset(algo: str, task: str) -> dict[str, Any]:
    """The algorithm preset of ``algo`` for ``task``: ``configs/algos/<algo>/<task>.yaml`` if
    there is one (it extends ``algos/<algo>``), else ``configs/algos/<algo>.yaml``, else none
    (DrQ-v2's values are the dataclass defaults). It may not set ``agent.algo`` or ``env.task``.
    """
    if algo not in _registered()["agent.algo"]:
        return {}  # validate() names the allowed algorithms
    root = configs_dir() / "algos"
    for path in (root / algo / f"{task}.yaml", root / f"{algo}.yaml"):
        if path.is_file():
            data = _read_yaml(path)
            for section, key in (("agent", "algo"), ("env", "task")):
                if isinstance(data.get(section), dict) and key in data[section]:
                    raise ConfigError(f"algorithm preset {path} may not set {section}.{key}")
            return data
    return {}


def _build(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> Config:
    cfg = from_dict(data)
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value)
    return cfg


def load_config(
    task: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Defaults, then the algorithm preset (:func:`algo_preset` of the resolved ``agent.algo``),
    then the task preset, then a YAML file, then ``key=value`` overrides; validated.

    ``agent.algo`` may come from any layer above the algorithm preset (a preset, the file or an
    override), so the config is resolved once without it to learn the algorithm and the task.
    Raises :class:`ConfigError` (one line) on an unknown task, key or bad value.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        data = _read_yaml(Path(config_file))
    file_task = (data.get("env") or {}).get("task") if isinstance(data.get("env"), dict) else None
    name = task or file_task
    if name is not None:
        preset = preset_path(str(name))
        if preset is None:
            from distdrq.envs.tasks import known_tasks

            if name not in known_tasks():
                raise unknown_task(str(name))
            base: dict[str, Any] = {"env": {"task": name}}
        else:
            base = _read_yaml(preset)
        data = _merge(base, data)
        if task is not None:
            data = _merge(data, {"env": {"task": task}})
    cfg = _build(data, overrides)
    algo_data = algo_preset(cfg.agent.algo, cfg.env.task)
    if algo_data:
        cfg = _build(_merge(algo_data, data), overrides)
    return validate(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON/msgpack-safe)."""
    return dataclasses.asdict(cfg)
