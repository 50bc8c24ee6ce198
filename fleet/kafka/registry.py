"""Reading the agents' topics back: the registry's cards and the heartbeats' liveness view.

Both topics are compacted and small (a record per agent and capability, a heartbeat per
agent), so a reader takes every partition to its end, like a global table, and keeps the
latest record per key; a tombstone deletes its key. That is all a restarted reader needs
to rebuild :class:`~fleet.liveness.AgentView` (``fleet agents`` does it on every call).
A long-lived reader (an orchestrator routing to live agents) keeps one up to date with
:class:`AgentFeed`: every partition from its start, then whatever arrives, without a
consumer group (every reader needs every agent) and without waiting in ``poll``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from fleet.agent_messages import AgentCard, AgentHeartbeat
from fleet.codec import Codec, M, SchemaStore
from fleet.errors import DecodeError
from fleet.kafka.clients import KafkaClients
from fleet.kafka.follow import TopicReader
from fleet.kafka.readback import ReadBack, partitions_of
from fleet.liveness import AgentView
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


class AgentFeed:
    """A live :class:`AgentView`: read the heartbeats topic from its start, then follow it.

    ``poll`` applies what has arrived and returns at once; call it from a loop. The view
    right after the first polls that reach the end equals :meth:`AgentRegistry.view`."""

    BATCH = 500

    def __init__(self, clients: KafkaClients) -> None:
        settings = clients.settings
        topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.topic = topics.agent_heartbeats
        self.view = AgentView()
        # A group id the client needs, never joined: assign() only, no commits.
        group = f"{topics.prefix}agents.feed.{uuid.uuid4().hex}"
        self._open: Callable[[], Consumer] = lambda: clients.consumer(group)
        starts = dict.fromkeys(partitions_of(clients, self.topic), OFFSET_BEGINNING)
        self.reader = TopicReader(self._open, clients.admin, self.topic, starts)
        self._ends: dict[int, int] | None = None  # each partition's end when first asked
        self._caught_up = False

    def caught_up(self) -> bool:
        """Whether the view holds everything the topic held when first asked (then stays
        true): before that, an agent missing from the view may just not be read yet."""
        if self._caught_up:
            return True
        if self._ends is None:
            self._ends = self._end_offsets()
            if self._ends is None:
                return False
        self._caught_up = all(
            end <= 0 or self.reader.position(p) >= end for p, end in self._ends.items()
        )
        return self._caught_up

    def _end_offsets(self) -> dict[int, int] | None:
        consumer = self._open()
        try:
            ends = {}
            for p in self.reader.positions():
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)
                ends[p] = high if high > low else 0  # an empty partition has nothing to read
            return ends
        except KafkaException as exc:
            log.warning("agent feed: end offsets unknown yet", error=str(exc))
            return None
        finally:
            consumer.close()

    def poll(self, timeout_s: float = 0) -> int:
        """Apply the heartbeats and tombstones that arrived (waiting up to ``timeout_s`` for
        the first); how many records came."""
        # consume(BATCH, timeout) would hold a part-filled batch for its whole timeout:
        # wait for one record only, then take what is already fetched.
        records = self.reader.consume(1, timeout=timeout_s)
        if records:
            records += self.reader.consume(self.BATCH - 1, timeout=0)
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("agent feed error; librdkafka retries", error=str(error))
                continue
            key = record.key()
            if record.value() is None:
                if key is not None:
                    self.view.forget(key.decode(errors="replace"))
                continue
            try:
                self.view.apply(self.codec.decode(record.value(), AgentHeartbeat, record=record))
            except DecodeError as exc:
                log.warning("undecodable heartbeat skipped", reason=exc.reason)
        return len(records)

    def close(self) -> None:
        self.reader.close()
