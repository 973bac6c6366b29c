"""Command line: ``distdrq train | tasks | config``.

Every user error (unknown task, config key or value, unreadable checkpoint, missing GL backend)
ends in one ``error: ...`` line that names the problem and the fix, and exit status 2 (usage) or
1 (runtime).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from distdrq.config import (
    Config,
    ConfigError,
    field_docs,
    load_config,
    to_dict,
)
from distdrq.run.rundir import removed_if_unstarted

_TRAIN_EXAMPLES = """\
examples:
  distdrq train                                  # walker_walk, DrQ-v2 defaults
  distdrq train --task cheetah_run --frames 1000000 --run-dir runs/cheetah
  distdrq train --resume runs/cheetah            # continue where it stopped
  distdrq train --task cartpole_swingup agent.lr=3e-4 env.fast_render=true
  distdrq train --algo sdpg --task cheetah_run    # SDPG: nominals + physics clones
  distdrq train --algo sdpg --task cheetah_run sdpg.obs=state sdpg.nominals=8 sdpg.clones=15

config keys (set any as KEY=VALUE; defaults shown before algorithm and task presets):
"""

_LAUNCH_EXAMPLES = """\
examples:
  distdrq launch --actors 8                       # local single-node Ray, walker_walk
  distdrq launch --task cheetah_run --actors 14 --shards 4 --run-dir runs/cheetah
  distdrq launch --address 10.0.0.5:6379 --actors 32   # join a cluster (`ray start --head`)
  distdrq launch --resume runs/cheetah            # continue: counters, replay, weights
  distdrq launch distributed.samples_per_insert=32 # change the replay ratio
  distdrq launch --algo sdpg --task cheetah_run --actors 4 sdpg.obs=state  # SDPG iterations

config keys (set any as KEY=VALUE; defaults shown before algorithm and task presets):
"""


def _config_reference() -> str:
    lines = []
    cfg = Config()
    for section in dataclasses.fields(Config):
        sub = getattr(cfg, section.name)
        docs = field_docs(type(sub))
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            key = f"{section.name}.{f.name}"
            if dataclasses.is_dataclass(value) and f.name != "stddev_schedule":
                inner = field_docs(type(value))  # a subsection (agent.drq): one line per key
                for g in dataclasses.fields(value):
                    line = f"  {key + '.' + g.name:<36} {getattr(value, g.name)!s:<10}"
                    lines.append(f"{line} {inner.get(g.name, '')}")
                continue
            if dataclasses.is_dataclass(value):
                value = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(value).items())
                key = f"{section.name}.{f.name}.{{initial,final,duration}}"
            lines.append(f"  {key:<36} {value!s:<10} {docs.get(f.name, '')}")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distdrq",
        description="Distributed DrQ-v2 from pixels on the DeepMind Control Suite.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train in one process (no Ray)",
        description="Train DrQ-v2 in one process: one env, one replay, one learner.",
        epilog=_TRAIN_EXAMPLES + _config_reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(train)

    launch = sub.add_parser(
        "launch",
        help="train with Ray: N env actors, sharded replay, one learner",
        description=(
            "Train DrQ-v2 with Ray: env actors render and push chunks to replay shards, one "
            "learner (GPU if the cluster has one) samples, updates and broadcasts weights. "
            "Without --address (or RAY_ADDRESS) it starts a local single-node Ray instance."
        ),
        epilog=_LAUNCH_EXAMPLES + _config_reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launch.add_argument("--actors", type=int, help="env actors (distributed.actors, default 8)")
    launch.add_argument("--shards", type=int, help="replay shards (distributed.shards)")
    launch.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)"
    )
    launch.add_argument(
        "--metrics-port", type=int, default=9464, help="Prometheus /metrics port (0: off)"
    )
    launch.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds to (0.0.0.0 to let other hosts scrape)",
    )
    _add_run_arguments(launch)

    status = sub.add_parser(
        "status",
        help="live state of the runs on a Ray cluster",
        description="Actors alive, restarts, frames, updates and returns of every distdrq run.",
    )
    status.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, else the local cluster)"
    )

    plot = sub.add_parser(
        "plot",
        help="PNG learning curves of runs",
        description="Eval return against env frames and against wall-clock time, as PNG.",
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", help="PNG to write (default: RUN_DIR/curves.png of the first)")
    plot.add_argument(
        "--reference",
        metavar="CSV",
        help="reference curves (DrQ-v2's released layout: frame, episode_reward, hour, ...)",
    )
    plot.add_argument(
        "--full-reference",
        action="store_true",
        help="draw the reference over all its frames (default: up to the runs' last frame)",
    )

    from distdrq.bench import add_bench_parser

    add_bench_parser(sub)

    tasks = sub.add_parser("tasks", help="list the available tasks")
    tasks.add_argument("--difficulty", choices=("easy", "medium", "hard", "toy"))

    config = sub.add_parser("config", help="print the resolved config of a task as YAML")
    config.add_argument("--task")
    config.add_argument("--config", metavar="FILE")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="task name (default walker_walk; see `distdrq tasks`)")
    parser.add_argument(
        "--algo", help="learning algorithm: drqv2 (default), drq, sdpg (agent.algo)"
    )
    parser.add_argument("--frames", type=int, help="env frames to train for (train.frames)")
    parser.add_argument("--run-dir", help="where logs and checkpoints go (default runs/TASK-TIME)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--config", metavar="FILE", help="YAML file with config sections")
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument("--device", help="learner device: auto, cpu, cuda (agent.device)")
    parser.add_argument(
        "--plain", action="store_true", help="plain log lines instead of the live display"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from distdrq.envs.tasks import known_tasks

    print(f"{'task':<26} {'difficulty':<10} {'dm_control':<34} camera")
    for spec in known_tasks().values():
        if args.difficulty and spec.difficulty != args.difficulty:
            continue
        source = f"{spec.domain}/{spec.task}"
        print(f"{spec.name:<26} {spec.difficulty:<10} {source:<34} {spec.camera_id}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.task, args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if getattr(args, "algo", None) is not None:
        overrides.append(f"agent.algo={args.algo}")
    if args.frames is not None:
        overrides.append(f"train.frames={args.frames}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.device is not None:
        overrides.append(f"agent.device={args.device}")
    for flag, key in (("actors", "distributed.actors"), ("shards", "distributed.shards")):
        value = getattr(args, flag, None)
        if value is not None:
            if value < 1:
                raise ConfigError(f"--{flag} {value}: must be at least 1")
            overrides.append(f"{key}={value}")
    return overrides + list(args.overrides)


def _resolve_run(args: argparse.Namespace) -> tuple[Config, Path]:
    """Config and run directory of a new run, or of the run given to --resume."""
    from distdrq.run.rundir import CONFIG_FILE, load_run_config

    if args.resume:
        if args.task or args.config or args.run_dir or args.algo:
            raise ConfigError(
                "--resume takes the task, algorithm, config and run dir from the run; drop "
                "--task/--algo/--config/--run-dir (KEY=VALUE overrides such as --frames are allowed)"
            )
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run directory")
        cfg = load_run_config(run_dir, _train_overrides(args))
    else:
        cfg = load_config(args.task, args.config, _train_overrides(args))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or f"runs/{cfg.env.task}-{stamp}")
        if (run_dir / CONFIG_FILE).exists():
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --run-dir"
            )
    return cfg, run_dir


def _cmd_train(args: argparse.Namespace) -> int:
    from distdrq.progress import ProgressDisplay

    cfg, run_dir = _resolve_run(args)
    progress = ProgressDisplay(cfg.env.task, cfg.train.frames, live=False if args.plain else None)
    # importing torch and building the envs (the first render) take 10-20 s on a small CPU
    # machine, restoring a checkpoint's replay minutes: say so before the first panel line
    if args.resume:
        progress.message(f"resuming {run_dir}: restoring its newest checkpoint (replay, agent)")
    else:
        progress.message(
            f"starting {cfg.agent.algo} on {cfg.env.task}: building the envs and agent"
        )
    if cfg.agent.algo == "sdpg":
        from distdrq.sdpg_trainer import SDPGTrainer as Trainer
    else:
        from distdrq.trainer import Trainer  # type: ignore[assignment]
    with removed_if_unstarted(run_dir, fresh=not args.resume):
        trainer = Trainer(cfg, run_dir, resume=bool(args.resume))
        try:
            trainer.train(progress)
        finally:
            trainer.close()
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    from distdrq.progress import ProgressDisplay

    cfg, run_dir = _resolve_run(args)  # a config error is reported before Ray is imported (4 s)
    from distdrq.distributed.launch import launch

    live = False if args.plain else None
    progress = ProgressDisplay(cfg.env.task, cfg.train.frames, live=live)
    with removed_if_unstarted(run_dir, fresh=not args.resume):
        result = launch(
            cfg,
            run_dir,
            bool(args.resume),
            args.address,
            progress,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
        )
    return 0 if result["reason"] in ("done", "target", "interrupted") else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from distdrq.status import print_status

    return print_status(args.address)


def _cmd_bench(args: argparse.Namespace) -> int:
    from distdrq.bench import run_bench

    return run_bench(args)


def _cmd_plot(args: argparse.Namespace) -> int:
    from distdrq.plot import plot_runs

    run_dirs = [Path(p) for p in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: no such run directory")
    out = Path(args.out) if args.out else run_dirs[0] / "curves.png"
    reference = Path(args.reference) if args.reference else None

    def warn(text: str) -> None:
        print(f"warning: {text}", file=sys.stderr)

    print(f"wrote {plot_runs(run_dirs, out, reference, warn, args.full_reference)}")
    return 0


_USER_ERRORS = ("CheckpointError", "LaunchError", "GLBackendError", "StatusError")
"""distdrq's runtime errors that end a command in one ``error:`` line. Matched by name, so
that the CLI need not import their modules (torch, Ray) for commands that never raise them:
``distdrq status`` and ``distdrq tasks`` answer fast."""


def _is_user_error(exc: BaseException) -> bool:
    kind = type(exc)
    return kind.__name__ in _USER_ERRORS and kind.__module__.startswith("distdrq.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distdrq`` console script."""
    parser = _build_parser()
    # KEY=VALUE overrides may stand anywhere, also after options (argparse alone would stop
    # collecting them at the first option)
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {
        "train": _cmd_train,
        "launch": _cmd_launch,
        "status": _cmd_status,
        "plot": _cmd_plot,
        "bench": _cmd_bench,
        "tasks": _cmd_tasks,
        "config": _cmd_config,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # MUJOCO_GL: from the environment, else env.gl_backend (dmc.py)
    sys.exit(main())
