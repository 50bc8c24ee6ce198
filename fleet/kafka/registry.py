"""Reading the agents' topics back: the registry's cards and the heartbeats' liveness view.

Both topics are compacted and small (a record per agent and capability, a heartbeat per
agent), so a reader takes every partition to its end, like a global table, and keeps the
latest record per key; a tombstone deletes its key. That is all a restarted reader needs
to rebuild :class:`~fleet.liveness.AgentView` (``fleet agents`` does it on every call; an
orchestrator can do it at start and then follow the topic).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from fleet.codec import Codec, M, SchemaStore
from fleet.errors import DecodeError
from fleet.kafka.clients import KafkaClients
from fleet.kafka.readback import ReadBack, partitions_of
from fleet.liveness import AgentView
from fleet.messages import AgentCard, AgentHeartbeat
from fleet.topology import Topics

log = structlog.get_logger()

READ_S = 30.0


class AgentRegistry:
    """Reads the agents' cards and heartbeats; close it (or use ``with``) when done."""

    def __init__(self, clients: KafkaClients, *, strict: bool = True) -> None:
        self.clients = clients
        settings = clients.settings
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self._reader = ReadBack(clients, "agents", strict=strict)

    def __enter__(self) -> AgentRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def _latest(self, topic: str, cls: type[M], timeout_s: float) -> list[M]:
        partitions = partitions_of(self.clients, topic)
        latest = self._reader.latest(topic, partitions, time.monotonic() + timeout_s)
        decoded = []
        for key, record in latest.items():
            try:
                decoded.append(self.codec.decode(record.value, cls))
            except DecodeError as exc:
                log.warning("skipping an undecodable record", topic=topic, key=key, error=str(exc))
        return decoded

    def view(self, timeout_s: float = READ_S) -> AgentView:
        """The liveness view as the heartbeats topic holds it now."""
        view = AgentView()
        for heartbeat in self._latest(self.topics.agent_heartbeats, AgentHeartbeat, timeout_s):
            view.apply(heartbeat)
        return view

    def cards(
        self, timeout_s: float = READ_S, keep: Callable[[AgentCard], bool] | None = None
    ) -> list[AgentCard]:
        """Every card in the registry (those ``keep`` accepts), by agent and capability."""
        cards = self._latest(self.topics.agent_registry, AgentCard, timeout_s)
        return sorted((c for c in cards if keep is None or keep(c)), key=lambda c: c.key)
