"""Command line: ``distdrq train | tasks | config``.

Every user error (unknown task, config key or value, unreadable checkpoint, missing GL backend)
ends in one ``error: ...`` line that names the problem and the fix, and exit status 2 (usage) or
1 (runtime).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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

_TRAIN_EXAMPLES = """\
examples:
  distdrq train                                  # walker_walk, DrQ-v2 defaults
  distdrq train --task cheetah_run --frames 1000000 --run-dir runs/cheetah
  distdrq train --resume runs/cheetah            # continue where it stopped
  distdrq train --task cartpole_swingup agent.lr=3e-4 env.fast_render=true

config keys (set any as KEY=VALUE; defaults shown before task presets):
"""


def _config_reference() -> str:
    lines = []
    cfg = Config()
    for section in dataclasses.fields(Config):
        sub = getattr(cfg, section.name)
        docs = field_docs(type(sub))
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if dataclasses.is_dataclass(value):
                value = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(value).items())
                key = f"{section.name}.{f.name}.{{initial,final,duration}}"
            else:
                key = f"{section.name}.{f.name}"
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
    train.add_argument("--task", help="task name (default walker_walk; see `distdrq tasks`)")
    train.add_argument("--frames", type=int, help="env frames to train for (train.frames)")
    train.add_argument("--run-dir", help="where logs and checkpoints go (default runs/TASK-TIME)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--config", metavar="FILE", help="YAML file with config sections")
    train.add_argument("--seed", type=int, help="random seed (train.seed)")
    train.add_argument("--device", help="learner device: auto, cpu, cuda (agent.device)")
    train.add_argument(
        "--plain", action="store_true", help="plain log lines instead of the live display"
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    tasks = sub.add_parser("tasks", help="list the available tasks")
    tasks.add_argument("--difficulty", choices=("easy", "medium", "hard", "toy"))

    config = sub.add_parser("config", help="print the resolved config of a task as YAML")
    config.add_argument("--task")
    config.add_argument("--config", metavar="FILE")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser


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
    if args.frames is not None:
        overrides.append(f"train.frames={args.frames}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.device is not None:
        overrides.append(f"agent.device={args.device}")
    return overrides + list(args.overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from distdrq.progress import ProgressDisplay
    from distdrq.trainer import CONFIG_FILE, Trainer, load_run_config

    if args.resume:
        if args.task or args.config or args.run_dir:
            raise ConfigError(
                "--resume takes the task, config and run dir from the run; "
                "drop --task/--config/--run-dir (KEY=VALUE overrides such as --frames are allowed)"
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
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume))
    live = False if args.plain else None
    try:
        trainer.train(ProgressDisplay(cfg.env.task, cfg.train.frames, live=live))
    finally:
        trainer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distdrq`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from distdrq.checkpoint import CheckpointError

    handlers = {"train": _cmd_train, "tasks": _cmd_tasks, "config": _cmd_config}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if type(exc).__name__ != "GLBackendError":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.exit(main())
