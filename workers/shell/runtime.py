"""Running a worker pool process: start-up checks, signals, metrics, then the Kafka loop.

Before consuming, ``run`` waits for the broker and creates the topics the worker needs;
then it serves the metrics and runs a :class:`~workers.shell.worker.Worker` until SIGTERM or
SIGINT, and drains it. A second signal stops waiting for the tasks in flight.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from types import FrameType

import structlog
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from fleet.app import App
from fleet.errors import ConfigError, FleetError
from fleet.kafka import KafkaClients
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.metrics import serve_metrics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from workers.shell.metrics import WorkerMetrics
from workers.shell.worker import Worker

log = structlog.get_logger()


def ensure_topics(settings: Settings, admin: AdminClient, app: App) -> None:
    """Create missing topics this worker reads or writes; drift is logged, not fatal."""
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    # Results and dead letters too: a first produce would otherwise let the broker
    # auto-create them with its default partition count, breaking co-partitioning.
    ours = {topics.results, topics.dead_letters, topics.cancellations}
    wanted = desired_topics(topology, topics, app.capabilities)
    apply_topics(
        admin,
        topology,
        {n: spec for n, spec in wanted.items() if topics.capability_of(n) or n in ours},
    )


def run(
    settings: Settings,
    app: App,
    *,
    concurrency: int = 8,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    grace_s: float = 30.0,
    worker_id: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run a worker pool process for ``app`` until SIGTERM/SIGINT or ``stop``; the exit code."""
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
    stop = stop or threading.Event()
    force = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            force.set()  # a second signal: stop waiting for in-flight tasks
        log.info("signal received; draining", signal=signal.Signals(signum).name)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        clients = KafkaClients(settings, settings.require_bootstrap(), role="worker")
        admin = clients.ready_admin()
        ensure_topics(settings, admin, app)
        registry = CollectorRegistry()
        serve_metrics(registry, metrics_port, metrics_host)
        worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        worker = Worker(
            settings,
            app,
            clients,
            WorkerMetrics(registry),
            concurrency=concurrency,
            grace_s=grace_s,
            worker_id=worker_id,
        )
        try:
            worker.run(stop, force)
        except FleetError as exc:
            log.error("worker stopping; uncommitted records will be redelivered", error=str(exc))
            return 1
        log.info("worker stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
