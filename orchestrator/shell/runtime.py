"""The orchestrator process: wiring, signals, topics, metrics server and exit status around
the :class:`~orchestrator.shell.loop.Orchestrator` loop."""

from __future__ import annotations

import signal
import threading

import structlog
from prometheus_client import CollectorRegistry

from fleet.errors import FleetError
from fleet.kafka import KafkaClients, retry_transient
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.metrics import serve_metrics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from orchestrator.market.policy import MarketPolicy
from orchestrator.shell.agents import LiveAgents
from orchestrator.shell.breakers import Breakers, Gate
from orchestrator.shell.loop import Orchestrator
from orchestrator.shell.metrics import OrchestratorMetrics
from orchestrator.waiting import EVERY_CAPABILITY

log = structlog.get_logger()


def run(
    settings: Settings,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    batch_size: int = 500,
    stop: threading.Event | None = None,
) -> int:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    clients = KafkaClients(settings, settings.require_bootstrap(), role="orchestrator")
    admin = clients.ready_admin()
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    wanted = desired_topics(topology, topics, [])
    # Started while a broker is down (a restart, a node lost), the admin calls time out
    # for a while: wait that out here rather than exit and be restarted in a loop.
    retry_transient(lambda: apply_topics(admin, topology, wanted), timeout_s=120)
    registry = CollectorRegistry()
    serve_metrics(registry, metrics_port, metrics_host)
    policy = MarketPolicy.load(settings.market_file)
    orchestrator = Orchestrator(
        settings, clients, OrchestratorMetrics(registry), batch_size, policy=policy
    )
    agents = LiveAgents.of(clients) if settings.route_live_only else None
    breakers = Breakers.of(settings, clients) if settings.breakers else None
    # The engine asks the view, and looks at its waiting tasks again whenever the view's
    # generation moves (it reports them due), so the loop needs no hook.
    if breakers is not None:
        orchestrator.engine.route_by(Gate(agents or EVERY_CAPABILITY, breakers))
    elif agents is not None:
        orchestrator.engine.route_by(agents)
    for follower in (agents, breakers):
        if follower is not None:
            follower.start()
    try:
        orchestrator.run(stop)
    except FleetError as exc:
        log.error("orchestrator stopping", error=str(exc))
        return 1
    finally:
        for follower in (agents, breakers):
            if follower is not None:
                follower.stop()
    log.info("orchestrator stopped")
    return 0
