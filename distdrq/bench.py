"""``distdrq bench memory``: where the learner's memory goes, for a config.

Builds the configured agent (``agent.algo``, ``agent.encoder``, precision, checkpointing) on a
device, runs learner updates on a random batch of ``agent.batch_size`` and reports:

- parameters: count and bytes per network (targets included);
- gradients and optimizer state: bytes held between updates (Adam: two moments per parameter);
- activations: on CUDA, ``torch.cuda.max_memory_allocated`` during one update minus what was
  allocated before it (parameters, gradients, optimizer state); on CPU, an estimate: the bytes
  of the distinct tensors autograd saves for backward during one update
  (``torch.autograd.graph.saved_tensors_hooks``, parameters excluded; the peak over the update
  of those alive at once), which leaves out transient buffers and the segments a checkpointed
  encoder recomputes in backward;
- replay: host memory for ``replay.capacity`` transitions, frames stored once, without
  compression (measured on a :class:`~distdrq.replay.ReplayShard` holding one synthetic episode;
  the compressed size of the configured codec depends on the frames),
  next to DrQ-v2's layout (one stacked observation per transition);
- on CUDA the measured peak of the update. ``--gpu-memory-gb 6`` caps this process's CUDA
  allocator at 6 GB (``torch.cuda.set_per_process_memory_fraction``) to emulate a 6 GB card.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distdrq.config import Config, ConfigError, load_config
from distdrq.types import Batch

if TYPE_CHECKING:  # imported where used: the CLI registers this parser for every command
    import torch

_GIB = 1024**3
_MIB = 1024**2


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` (with its ``memory`` subcommand) on the CLI's subparsers."""
    bench = subparsers.add_parser("bench", help="measure the learner (memory)")
    kinds = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    memory = kinds.add_parser(
        "memory", help="parameter, optimizer, activation and replay memory of the learner"
    )
    memory.add_argument("--config", metavar="FILE", help="YAML file with config sections")
    memory.add_argument("--task", help="task name (default: the config's, else walker_walk)")
    memory.add_argument("--batch-size", type=int, help="learner batch size (agent.batch_size)")
    memory.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="learner device"
    )
    memory.add_argument(
        "--gpu-memory-gb",
        type=float,
        metavar="GB",
        help="cap this process's GPU memory (e.g. 6 to emulate a 6 GB card)",
    )
    memory.add_argument("--updates", type=int, default=2, help="warm-up updates before measuring")
    memory.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    memory.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return bench


def run_bench(args: argparse.Namespace) -> int:
    """Run the ``bench`` subcommand in ``args``; return the exit status."""
    if args.bench_command != "memory":
        raise ConfigError(f"unknown bench {args.bench_command!r}; choose: memory")
    overrides = list(args.overrides or [])
    if args.batch_size is not None:
        overrides.append(f"agent.batch_size={args.batch_size}")
    overrides.append(f"agent.device={args.device}")
    cfg = load_config(args.task, args.config, overrides)
    report = memory_report(cfg, gpu_memory_gb=args.gpu_memory_gb, warmup=args.updates)
    print(format_memory_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


# ---- measurement


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _saved_tensor_bytes(fn: Any, exclude: set[int]) -> tuple[Any, int]:
    """Run ``fn()``; the peak over time of the bytes of distinct live storages that autograd
    holds saved for backward (a storage is released when its graph is freed)."""
    import torch

    live: dict[int, list[int]] = {}  # storage pointer -> [bytes, saved tensors holding it]
    total, peak = 0, 0

    def release(ptr: int) -> None:
        nonlocal total
        entry = live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            total -= entry[0]
            del live[ptr]

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total, peak
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in exclude or ptr == 0:
            return t
        if ptr not in live:
            live[ptr] = [storage.nbytes(), 0]
            total += storage.nbytes()
            peak = max(peak, total)
        live[ptr][1] += 1
        weakref.finalize(t, release, ptr)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, peak


def replay_bytes_per_transition(
    cfg: Config, frame_shape: tuple[int, int, int], action_dim: int
) -> float:
    """Host bytes per stored transition, frames once and uncompressed (``codec=raw``), measured
    on a shard holding one full-length synthetic episode (1000 / action_repeat transitions)."""
    from distdrq.replay import EpisodeWriter, ReplayShard

    length = 1000 // cfg.env.action_repeat
    shard = ReplayShard(
        capacity=length, nstep=cfg.replay.nstep, discount=cfg.replay.discount,
        frame_stack=cfg.env.frame_stack, codec="raw",
    )  # fmt: skip
    writer = EpisodeWriter(writer_id=0, chunk_length=None, codec="raw")
    frame = np.zeros(frame_shape, np.uint8)
    action = np.zeros(action_dim, np.float32)
    writer.begin(frame)
    for t in range(length):
        chunk = writer.append(action, 0.0, 1.0, frame, t == length - 1)
        if chunk is not None:
            shard.insert(chunk)
    return shard.stats()["bytes_per_transition"]


def memory_report(
    cfg: Config, gpu_memory_gb: float | None = None, warmup: int = 2
) -> dict[str, Any]:
    """Measure the learner of ``cfg`` (on ``cfg.agent.device``); see the module docstring."""
    import torch

    from distdrq.agent import make_agent, resolve_device
    from distdrq.envs import make_env
    from distdrq.replay.shard import drqv2_bytes_per_transition
    from distdrq.trainer import precision_label

    device = resolve_device(cfg.agent.device)
    cuda = device.type == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        if gpu_memory_gb is not None:
            fraction = min(gpu_memory_gb * 1e9 / total, 1.0)
            torch.cuda.set_per_process_memory_fraction(fraction, device)
    elif gpu_memory_gb is not None:
        raise ConfigError("--gpu-memory-gb needs a CUDA device (--device cuda)")

    env = make_env(cfg.env, cfg.train.seed)  # builds the task (no rendering) for the shapes
    obs_shape, frame_shape, action_dim = env.obs_shape, env.frame_shape, env.action_dim
    env.close()
    torch.manual_seed(cfg.train.seed)
    agent = make_agent(obs_shape, action_dim, cfg.agent)
    batch = Batch.random(obs_shape, action_dim, cfg.agent.batch_size)

    networks = {
        name: (
            sum(p.numel() for p in module.parameters()),
            sum(_tensor_bytes(p) for p in module.parameters()),
        )
        for name, module in agent._named_modules()
    }
    for step in range(max(warmup, 1)):  # the first update creates the optimizer state
        agent.update(batch, step)
    optimizer_bytes = sum(
        _tensor_bytes(v)
        for _, opt in agent._named_optimizers()
        for state in opt.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )
    grad_bytes = sum(
        _tensor_bytes(p.grad)
        for _, module in agent._named_modules()
        for p in module.parameters()
        if p.grad is not None
    )
    batch_bytes = sum(
        _tensor_bytes(torch.as_tensor(getattr(batch, f.name)))
        for f in dataclasses.fields(batch)
        if f.name != "version"
    )

    params = {
        p.untyped_storage().data_ptr() for _, m in agent._named_modules() for p in m.parameters()
    }
    measured_peak = None
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        agent.update(batch, warmup)
        torch.cuda.synchronize(device)
        measured_peak = torch.cuda.max_memory_allocated(device)
        activation_bytes = measured_peak - before
        activation_method = "measured: max_memory_allocated during one update minus before it"
    else:
        _, activation_bytes = _saved_tensor_bytes(lambda: agent.update(batch, warmup), params)
        activation_method = "CPU estimate: peak of tensors saved for backward in one update"

    per_transition = replay_bytes_per_transition(cfg, frame_shape, action_dim)
    param_bytes = sum(b for _, b in networks.values())
    return {
        "task": cfg.env.task,
        "algo": cfg.agent.algo,
        "encoder": cfg.agent.encoder,
        "obs_shape": tuple(obs_shape),
        "action_dim": action_dim,
        "batch_size": cfg.agent.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "precision": precision_label(agent),
        "grad_checkpointing": cfg.agent.grad_checkpointing,
        "gpu_cap_bytes": int(gpu_memory_gb * 1e9) if gpu_memory_gb else None,
        "networks": networks,
        "param_bytes": param_bytes,
        "grad_bytes": grad_bytes,
        "optimizer_bytes": optimizer_bytes,
        "batch_bytes": batch_bytes,
        "activation_bytes": activation_bytes,
        "activation_method": activation_method,
        "learner_estimate_bytes": param_bytes + grad_bytes + optimizer_bytes + activation_bytes,
        "measured_peak_bytes": measured_peak,
        "replay_capacity": cfg.replay.capacity,
        "replay_codec": cfg.replay.codec,
        "replay_raw_bytes_per_transition": per_transition,
        "replay_raw_bytes": per_transition * cfg.replay.capacity,
        "replay_drqv2_bytes": drqv2_bytes_per_transition(frame_shape, cfg.env.frame_stack)
        * cfg.replay.capacity,
    }


def _size(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / _MIB:.1f} MiB"


def format_memory_report(r: dict[str, Any]) -> str:
    """The report of :func:`memory_report` as text."""
    lines = [
        f"learner memory: {r['task']}, algo {r['algo']}, encoder {r['encoder']}, "
        f"obs {'x'.join(map(str, r['obs_shape']))}, {r['action_dim']} actions, "
        f"batch {r['batch_size']}",
        f"device {r['device']} ({r['device_name']}), {r['precision']}, "
        f"gradient checkpointing {'on' if r['grad_checkpointing'] else 'off'}"
        + (f", GPU capped at {r['gpu_cap_bytes'] / 1e9:.1f} GB" if r["gpu_cap_bytes"] else ""),
        "parameters (fp32):",
    ]
    for name, (count, nbytes) in r["networks"].items():
        lines.append(f"  {name:<16} {count:>12,} params  {_size(nbytes):>11}")
    lines += [
        f"  {'total':<16} {sum(c for c, _ in r['networks'].values()):>12,} params  "
        f"{_size(r['param_bytes']):>11}",
        f"gradients           {_size(r['grad_bytes']):>11}",
        f"optimizer state     {_size(r['optimizer_bytes']):>11}  (Adam: 2 moments per parameter)",
        f"activations         {_size(r['activation_bytes']):>11}  ({r['activation_method']})",
        f"batch on device     {_size(r['batch_bytes']):>11}",
        f"learner total       {_size(r['learner_estimate_bytes']):>11}  "
        "(parameters + gradients + optimizer + activations)",
    ]
    if r["measured_peak_bytes"] is not None:
        lines.append(
            f"measured peak       {_size(r['measured_peak_bytes']):>11}  "
            "(torch.cuda.max_memory_allocated over one update)"
        )
    else:
        lines.append("measured peak       n/a (no CUDA device; the total above is an estimate)")
    lines += [
        f"replay (host RAM, {r['replay_capacity']:,} transitions):",
        f"  frames once, raw  {_size(r['replay_raw_bytes']):>11}  "
        f"({r['replay_raw_bytes_per_transition']:,.0f} B/transition incl. action, reward, "
        "discount, index)",
        f"  DrQ-v2 layout     {_size(r['replay_drqv2_bytes']):>11}  "
        "(one stacked observation per transition)",
        f"  codec {r['replay_codec']}: compressed size is content-dependent "
        "(see benchmarks/RESULTS.md, replay_codec)",
    ]
    return "\n".join(lines)
