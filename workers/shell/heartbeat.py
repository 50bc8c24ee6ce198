"""An agent's presence on Kafka: its cards in the registry and its heartbeats.

At start the agent publishes one A2A card per capability (:mod:`fleet.cards`) to the
compacted ``agents.registry`` and waits until they are durable, so an agent that
heartbeats is always one whose cards can be read. Then a thread of its own heartbeats
every ``heartbeat_s`` to ``agents.heartbeats``: status, in-flight and capacity, counts
and latency percentiles (:mod:`workers.stats`). It runs beside the Kafka loop, not in it,
so a handler that holds the loop's thread up (or a long drain) never looks like a dead
agent; a killed process stops heartbeating, and readers (:mod:`fleet.liveness`) see it go
stale, then dead. A clean stop tombstones the cards and the heartbeat: the agent is gone,
not dead. Its own producer: the heartbeat's delivery never waits behind results.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import structlog
from confluent_kafka import KafkaError, Message, Producer

from fleet.agent_messages import (
    AgentCard,
    AgentHeartbeat,
    AgentStatus,
    CapabilityVersion,
    registry_key,
)
from fleet.app import App
from fleet.cards import AgentPlace, agent_card
from fleet.codec import Codec, SchemaStore
from fleet.errors import BrokerError
from fleet.kafka import KafkaClients, produce
from fleet.settings import Settings
from fleet.topology import Topics
from workers.stats import HandlerStats

log = structlog.get_logger()

FLUSH_S = 5.0  # a clean stop's tombstones: as long as the worker's own last flush


def _now_ms() -> int:
    return int(time.time() * 1000)


class AgentPresence:
    """Cards and heartbeats of one agent process; ``start``, then ``stop`` once."""

    def __init__(
        self,
        settings: Settings,
        clients: KafkaClients,
        app: App,
        *,
        agent_id: str,
        worker_id: str,
        concurrency: int,
        stats: HandlerStats,
        in_flight: Callable[[], int],
        status: Callable[[], AgentStatus],
    ) -> None:
        self.settings, self.app, self.stats = settings, app, stats
        self.agent_id, self.worker_id, self.concurrency = agent_id, worker_id, concurrency
        self._in_flight, self._status = in_flight, status
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.place = AgentPlace(agent_id, settings.region, concurrency, clients.bootstrap)
        self._producer: Producer = clients.producer()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="agent-heartbeat", daemon=True)
        self._started_at_ms = _now_ms()
        self._seq = 0
        self._failures = 0

    # -- what is published ----------------------------------------------------------------

    def _served(self) -> list[tuple[str, str]]:
        return [(name, self.topics.tasks(name)) for name in self.app.capabilities]

    def cards(self) -> list[AgentCard]:
        """One registry record per capability this agent serves."""
        now = _now_ms()
        return [
            AgentCard(
                agent_id=self.agent_id,
                capability=name,
                version=self.app.get(name).info.version,
                region=self.settings.region,
                card=agent_card([(self.app.get(name), topic)], self.place),
                published_at_ms=now,
            )
            for name, topic in self._served()
        ]

    def card_json(self) -> bytes:
        """The whole agent's card, as ``/.well-known/agent-card.json`` serves it."""
        served = [(self.app.get(name), topic) for name, topic in self._served()]
        return json.dumps(agent_card(served, self.place), indent=2).encode()

    def heartbeat(self) -> AgentHeartbeat:
        snapshot = self.stats.snapshot()
        self._seq += 1
        return AgentHeartbeat(
            agent_id=self.agent_id,
            worker_id=self.worker_id,
            status=self._status().value,
            capabilities=[
                CapabilityVersion(capability=n, version=self.app.get(n).info.version)
                for n in self.app.capabilities
            ],
            region=self.settings.region,
            in_flight=self._in_flight(),
            capacity=self.concurrency,
            completed=snapshot.completed,
            failed=snapshot.failed,
            window_completed=snapshot.window_completed,
            window_failed=snapshot.window_failed,
            p50_ms=snapshot.p50_ms,
            p95_ms=snapshot.p95_ms,
            window_s=snapshot.window_s,
            heartbeat_s=self.settings.heartbeat_s,
            seq=self._seq,
            started_at_ms=self._started_at_ms,
            at_ms=_now_ms(),
            usage=snapshot.usage,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Publish the cards, then heartbeat until :meth:`stop`. Waits for the cards up to
        the connect timeout; past it, or on an error, says so and goes on: a registry the
        broker is slow to take must not keep a pool from its tasks (the cards stay queued)."""
        for card in self.cards():
            self._send(self.topics.agent_registry, card.key, self.codec.encode(card))
        self._send(self.topics.agent_heartbeats, self.agent_id, self.codec.encode(self.heartbeat()))
        try:
            self._flush("publishing the agent's cards", self.settings.connect_timeout_s)
            log.info(
                "agent registered",
                agent_id=self.agent_id,
                capabilities=self.app.capabilities,
                heartbeat_s=self.settings.heartbeat_s,
            )
        except BrokerError as exc:
            log.warning("agent not registered yet; serving anyway", error=str(exc))
        self._thread.start()

    def stop(self, *, clean: bool) -> None:
        """Stop heartbeating; ``clean``: tombstone the cards and the heartbeat as well."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.heartbeat_s + FLUSH_S)
        if clean:
            for name, _ in self._served():
                self._send(self.topics.agent_registry, registry_key(self.agent_id, name), None)
            self._send(self.topics.agent_heartbeats, self.agent_id, None)
            try:
                self._flush("tombstoning the agent's cards", FLUSH_S)
                log.info("agent deregistered", agent_id=self.agent_id)
            except BrokerError as exc:
                log.warning("agent not deregistered; it will show as dead", error=str(exc))
        else:
            self._producer.flush(FLUSH_S)

    def _beat(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_s):
            try:
                beat = self.heartbeat()
                self._send(self.topics.agent_heartbeats, self.agent_id, self.codec.encode(beat))
                self._producer.poll(0)
            except Exception as exc:  # noqa: BLE001 - a dead heartbeat thread fakes a dead agent
                log.warning("heartbeat not sent; retrying next interval", error=str(exc))

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, topic: str, key: str, value: bytes | None) -> None:
        produce(
            self._producer,
            topic,
            value,  # type: ignore[arg-type]  # None is a tombstone
            key=key,
            on_delivery=self._delivered,
        )

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failures += 1
            log.warning("agent record not delivered", error=str(err))

    def _flush(self, doing: str, timeout_s: float) -> None:
        failures = self._failures
        if self._producer.flush(timeout_s) > 0 or self._failures > failures:
            raise BrokerError(f"{doing} failed: the broker did not take them in {timeout_s:.0f} s")
