"""The worker's Prometheus metrics: what a pool process counts about the tasks it runs,
and the same finished tasks handed to the agent's heartbeat figures (``workers.stats``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet.metrics import LATENCY_BUCKETS
from workers.execute import Outcome
from workers.stats import HandlerStats


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, stats: HandlerStats | None = None) -> None:
        self.stats = stats or HandlerStats()

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"fleet_worker_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"fleet_worker_{name}", doc, registry=registry)

        cap = "capability"
        self.started = counter("tasks_started", "Tasks handed to a handler", cap)
        self.succeeded = counter("tasks_succeeded", "Tasks whose handler succeeded", cap)
        self.failed = counter("tasks_failed", "Tasks that failed", cap, "retryable")
        self.timeouts = counter("task_timeouts", "Tasks past their deadline", cap)
        self.abandoned = counter("abandoned_threads", "Sync handlers left running late", cap)
        self.dead_letters = counter("dead_letters", "Task records dead-lettered", cap)
        # when: "running" (the handler was stopped or asked to stop) or "before_start"
        # (cancelled while its record waited). Their results are not produced.
        self.cancelled = counter("tasks_cancelled", "Task attempts cancelled", cap, "when")
        self.in_flight = gauge("tasks_in_flight", "Handlers running (their slots are taken)")
        self.abandoned_running = gauge(
            "abandoned_threads_running", "Abandoned sync handlers still holding a pool thread"
        )
        self.duration = Histogram(
            "fleet_worker_handler_duration_seconds",
            "Handler duration per capability",
            [cap],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def record(self, capability: str, outcome: Outcome) -> None:
        result = outcome.result
        self.duration.labels(capability).observe(result.duration_ms / 1000)
        if outcome.thread_abandoned:
            self.abandoned.labels(capability).inc()
        self.stats.add_usage(result.usage)
        if outcome.cancelled:
            self.cancelled.labels(capability, "running").inc()
            return  # neither succeeded nor failed: its result is not produced
        self.stats.record(result.duration_ms, failed=result.error is not None)
        if result.error is None:
            self.succeeded.labels(capability).inc()
        else:
            self.failed.labels(capability, str(result.error.retryable).lower()).inc()
        if outcome.timed_out:
            self.timeouts.labels(capability).inc()
