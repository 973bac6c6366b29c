"""Prometheus metrics of a run, served by the driver of ``distdrq launch``.

The driver reads the coordinator, shards and rate limiter once a second and publishes what
they report under the names listed in ``deploy/metrics.txt`` (every series carries the label
``run``). Env actors additionally export their own frame counters through ``ray.util.metrics``
so Ray's dashboard and Ray's Prometheus service discovery show them too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:  # the metrics module is imported without Ray (distdrq train)
    from distdrq.distributed.messages import RunSnapshot

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RunMetrics:
    """The run's Prometheus series (own registry, so several runs never collide in tests)."""

    def __init__(self, run: str, registry: CollectorRegistry | None = None) -> None:
        self.run = run
        self.registry = registry or CollectorRegistry()
        r, lab = self.registry, ["run"]

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, [*lab, *labels], registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*lab, *labels], registry=r)

        self.frames = counter("distdrq_env_frames", "env frames over all actors")
        self.episodes = counter("distdrq_env_episodes", "completed training episodes")
        self.fps = gauge("distdrq_env_frames_per_second", "env frames per second")
        self.updates = counter("distdrq_learner_updates", "learner updates")
        self.ups = gauge("distdrq_learner_updates_per_second", "learner updates per second")
        self.critic_loss = gauge("distdrq_learner_critic_loss", "last critic loss")
        self.actor_loss = gauge("distdrq_learner_actor_loss", "last actor loss")
        self.q_value = gauge("distdrq_learner_q_value", "mean Q1 of the last batch")
        self.transitions = gauge("distdrq_replay_transitions", "stored transitions", ("shard",))
        self.stored_bytes = gauge("distdrq_replay_stored_bytes", "replay bytes", ("shard",))
        self.ratio = gauge(
            "distdrq_replay_compression_ratio", "DrQ-v2 layout bytes / stored bytes", ("shard",)
        )
        self.rejected = counter(
            "distdrq_replay_rejected_chunks", "chunks replay refused", ("shard", "reason")
        )
        self.damaged = counter(
            "distdrq_replay_snapshots_damaged", "damaged snapshots set aside", ("shard",)
        )
        self.lost = counter(
            "distdrq_replay_transitions_lost",
            "transitions lost to damaged snapshots on restore",
            ("shard",),
        )
        self.nonfinite = counter(
            "distdrq_learner_nonfinite_batches", "sampled batches with non-finite values, skipped"
        )
        self.checkpoints_damaged = counter(
            "distdrq_checkpoints_damaged", "damaged checkpoints set aside on resume or restart"
        )
        self.latency = Histogram(
            "distdrq_replay_sample_latency_seconds",
            "time the learner waited for a sampled batch",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.blocked = counter(
            "distdrq_rate_limiter_blocked_seconds", "time waiting on the rate limiter", ("side",)
        )
        self.spi = gauge("distdrq_rate_limiter_samples_per_insert", "measured samples per insert")
        self.lag = gauge("distdrq_policy_lag", "mean policy lag of recent batches (versions)")
        self.lag_max = gauge("distdrq_policy_lag_max", "max policy lag of recent batches")
        self.train_return = gauge("distdrq_train_return", "last training episode return")
        self.eval_return = gauge("distdrq_eval_return", "last evaluation mean return")
        self.restarts = counter("distdrq_actor_restarts", "actor restarts", ("role",))
        self.gpu_memory = gauge("distdrq_learner_gpu_memory_bytes", "peak learner GPU memory")
        self.batch_bytes = gauge(
            "distdrq_replay_batch_bytes",
            "bytes a batch brought from the shards to the learner (mean since the last reading)",
        )
        self.frame_cache = gauge(
            "distdrq_learner_frame_cache_bytes",
            "coded frames the learner keeps (replay.learner_cache_mb)",
        )
        self.version = gauge("distdrq_weight_version", "newest published weight version")
        self.sigma = gauge("distdrq_sdpg_policy_std", "SDPG: mean policy std of the last iteration")
        self.temperature = gauge("distdrq_sdpg_temperature", "SDPG: entropy temperature")
        self.iteration = gauge("distdrq_sdpg_iteration_seconds", "SDPG: last iteration's seconds")
        for zero_until_it_happens in (self.nonfinite, self.checkpoints_damaged):
            zero_until_it_happens.labels(run)  # served as 0, so alerts can watch it
        self._seen: dict[tuple[str, ...], float] = {}
        self._incarnations: dict[tuple[str, ...], tuple[Any, float]] = {}

    def _advance(self, counter: Counter, value: float, *labels: str) -> None:
        """Move a counter up to ``value`` (counters only ever increase)."""
        key = (str(id(counter)), *labels)
        delta = value - self._seen.get(key, 0.0)
        if delta > 0:
            counter.labels(self.run, *labels).inc(delta)
            self._seen[key] = value

    def _accumulate(self, counter: Counter, value: float, incarnation: Any, *labels: str) -> None:
        """Add a per-process count that restarts with its process (a restarted shard's
        rejections): the first reading of a new ``incarnation`` counts whole."""
        key = (str(id(counter)), *labels)
        seen_incarnation, last = self._incarnations.get(key, (None, 0.0))
        delta = value if incarnation != seen_incarnation else value - last
        if delta > 0:
            counter.labels(self.run, *labels).inc(delta)
        self._incarnations[key] = (incarnation, value)

    def count_damaged_checkpoint(self) -> None:
        """A checkpoint was set aside as damaged."""
        self.checkpoints_damaged.labels(self.run).inc()

    def update(
        self,
        snapshot: RunSnapshot,
        learner: dict[str, float],
        rates: dict[str, float],
        shards: list[dict[str, Any]],
        limiter: dict[str, float] | None,
        latencies: list[float],
    ) -> None:
        """Publish one reading of the run: the coordinator's snapshot, the learner's latest
        metrics and batch waits, shard and limiter stats."""
        run = self.run
        c = snapshot.counters
        self._advance(self.frames, c.frames)
        self._advance(self.episodes, c.episodes)
        self._advance(self.updates, c.updates)
        self.fps.labels(run).set(rates.get("frames_per_second", 0.0))
        self.ups.labels(run).set(rates.get("updates_per_second", 0.0))
        self.version.labels(run).set(c.weight_version)
        for gauge, value in (
            (self.train_return, c.last_train_return),
            (self.eval_return, c.last_eval_return),
            (self.critic_loss, learner.get("critic_loss")),
            (self.actor_loss, learner.get("actor_loss")),
            (self.q_value, learner.get("critic_q1")),
            (self.lag, learner.get("policy_lag_mean")),
            (self.lag_max, learner.get("policy_lag_max")),
            (self.gpu_memory, learner.get("gpu_memory_bytes")),
            (self.batch_bytes, learner.get("replay_bytes_per_batch")),
            (self.frame_cache, learner.get("frame_cache_bytes")),
            (self.sigma, learner.get("sigma")),
            (self.temperature, learner.get("temperature")),
            (self.iteration, learner.get("iteration_s")),
        ):
            if value is not None and math.isfinite(value):
                gauge.labels(run).set(value)
        self._advance(self.nonfinite, learner.get("nonfinite_batches", 0.0))
        for role, info in snapshot.roles.items():
            self._advance(self.restarts, info.restarts, role)
        for stats in shards:
            shard = str(stats["shard"])
            self.transitions.labels(run, shard).set(stats["transitions"])
            self.stored_bytes.labels(run, shard).set(stats["stored_bytes"])
            if stats.get("ratio_vs_drqv2"):
                self.ratio.labels(run, shard).set(stats["ratio_vs_drqv2"])
            life = stats.get("pid")  # counts below restart with the shard's process
            for key, value in stats.items():  # ReplayShard.stats: rejected_chunks_<reason>
                if key.startswith("rejected_chunks_"):
                    reason = key[len("rejected_chunks_") :]
                    self._accumulate(self.rejected, value, life, shard, reason)
            self._accumulate(self.damaged, stats.get("snapshots_damaged", 0), life, shard)
            self._accumulate(self.lost, stats.get("transitions_lost", 0), life, shard)
        if limiter is not None:
            self._advance(self.blocked, limiter["insert_blocked_seconds"], "insert")
            self._advance(self.blocked, limiter["sample_blocked_seconds"], "sample")
            self.spi.labels(run).set(limiter["measured_samples_per_insert"])
        for seconds in latencies:
            self.latency.labels(run).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (a free port if ``port`` is taken); returns it."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError:
            server, _ = start_http_server(0, addr=host, registry=self.registry)
        return int(server.server_port)
