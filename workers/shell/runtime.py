"""Running a worker pool process: start-up checks, signals, metrics, then the Kafka loop.

Before consuming, ``run`` waits for the broker and creates the topics the worker needs;
then it serves the metrics (and the agent's card), registers the agent and starts its
heartbeats (:mod:`workers.shell.heartbeat`), and runs a
:class:`~workers.shell.worker.Worker` until SIGTERM or SIGINT, and drains it (heartbeating
``draining``). A second signal stops waiting for the tasks in flight. A clean stop
deregisters the agent; a failed one leaves it to go stale, then dead.
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

from fleet.agent_messages import AgentStatus
from fleet.app import App
from fleet.errors import ConfigError, FleetError
from fleet.kafka import KafkaClients
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.metrics import serve_metrics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from workers.identity import claim
from workers.shell.heartbeat import AgentPresence
from workers.shell.metrics import WorkerMetrics
from workers.shell.worker import Worker
from workers.stats import HandlerStats

log = structlog.get_logger()

AGENT_CARD_PATH = "/.well-known/agent-card.json"  # where A2A clients look for a card


def ensure_topics(settings: Settings, admin: AdminClient, app: App) -> None:
    """Create missing topics this worker reads or writes; drift is logged, not fatal."""
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    # Results and dead letters too: a first produce would otherwise let the broker
    # auto-create them with its default partition count, breaking co-partitioning.
    ours = {topics.results, topics.dead_letters, topics.cancellations}
    ours |= {topics.agent_registry, topics.agent_heartbeats}
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
    agent_id: str | None = None,
    agent_name: str = "worker",
    stop: threading.Event | None = None,
) -> int:
    """Run a worker pool process for ``app`` until SIGTERM/SIGINT or ``stop``; the exit code.

    ``agent_id`` names the agent; without it one is claimed from ``agent_name`` (or
    FLEET_AGENT_NAME) and the host (:mod:`workers.identity`)."""
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
        identity = claim(agent_id, settings.agent_name or agent_name, settings.agent_state_dir)
        registry = CollectorRegistry()
        stats = HandlerStats(settings.stats_window_s)
        worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        running: list[Worker] = []  # the worker, once built: after the agent registered
        presence = AgentPresence(
            settings,
            clients,
            app,
            agent_id=identity.agent_id,
            worker_id=worker_id,
            concurrency=concurrency,
            stats=stats,
            in_flight=lambda: running[0].in_flight if running else 0,
            status=lambda: AgentStatus.DRAINING if stop.is_set() else AgentStatus.SERVING,
        )
        card = ("application/json", presence.card_json())
        serve_metrics(registry, metrics_port, metrics_host, routes={AGENT_CARD_PATH: lambda: card})
        # Registered before the Worker consumes: an agent's cards are out before its tasks.
        presence.start()
        worker = Worker(
            settings,
            app,
            clients,
            WorkerMetrics(registry, stats),
            concurrency=concurrency,
            grace_s=grace_s,
            worker_id=worker_id,
        )
        running.append(worker)
        clean = False
        try:
            worker.run(stop, force)
            clean = True
        except FleetError as exc:
            log.error("worker stopping; uncommitted records will be redelivered", error=str(exc))
            return 1
        finally:
            presence.stop(clean=clean)
            identity.release()
        log.info("worker stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
