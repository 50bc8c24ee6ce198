"""What the topics hold about one workflow, read from the one partition its id maps to.

Every record of a workflow is keyed by its id, and our producers place keys with Kafka's
murmur2 partitioner (:mod:`fleet.kafka.partitioner`), so its events all sit in one
partition of ``workflow.events`` and its requests in one of ``workflow.requests``.
Reading that partition, records filtered by key before anything is decoded, costs a
sixth of the topic (six partitions) instead of all of it, and finds events written
before the reader started, which a reader that starts at the end never sees (``fleet
tail --workflow`` on a finished workflow waited forever that way).

Why not read every partition, filtered by key: it costs the whole topic for every
lookup, and finds nothing more, since no producer of these topics places keys otherwise
(a topic whose partition count changed would break the co-partitioning the orchestrator
relies on anyway).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from fleet.codec import Codec
from fleet.errors import BrokerError, DecodeError
from fleet.kafka.clients import KafkaClients, header, retry_transient
from fleet.kafka.follow import TopicReader
from fleet.kafka.partitioner import partition_for
from fleet.kafka.readback import ReadBack, ReadIncomplete
from fleet.messages import WorkflowEvent, WorkflowSubmitted
from fleet.topology import Topics


@dataclass(frozen=True)
class Sighting:
    """What the topics say of a workflow id, as far as they were read."""

    last_event: WorkflowEvent | None  # its latest event on workflow.events
    submitted: bool  # a submission of it is on workflow.requests (read only without events)
    complete: bool  # the partitions were read to their end within the time given

    @property
    def ended(self) -> bool:
        return self.last_event is not None and self.last_event.kind.terminal

    @property
    def known(self) -> bool:
        return self.last_event is not None or self.submitted


@dataclass(frozen=True)
class History:
    """Every event of one workflow the topics still hold, as far as they were read."""

    events: tuple[WorkflowEvent, ...]  # oldest first
    submitted: bool  # a submission of it is on workflow.requests (read only without events)
    complete: bool  # the partitions were read to their end within the time given


class WorkflowLog:
    """Reads one workflow's partition of the events and requests topics."""

    def __init__(
        self, clients: KafkaClients, admin: AdminClient, codec: Codec, topics: Topics
    ) -> None:
        self.clients = clients
        self.admin = admin
        self.codec = codec
        self.topics = topics

    def partition(self, topic: str, workflow_id: str) -> int:
        """The partition of ``topic`` that holds ``workflow_id``'s records."""
        try:
            found = self.admin.list_topics(topic=topic, timeout=10).topics[topic]
        except (KafkaException, KeyError) as exc:
            raise BrokerError(f"cannot read {topic}: {exc}; run `fleet topics apply`") from exc
        if found.error is not None or not found.partitions:
            raise BrokerError(f"cannot read {topic}: no such topic; run `fleet topics apply`")
        return partition_for(workflow_id, len(found.partitions))

    def follow(
        self,
        workflow_id: str,
        *,
        since_ms: int | None = None,
        on_caught_up: Callable[[], None] | None = None,
        timeout_s: float | None = None,
    ) -> Generator[WorkflowEvent]:
        """Every event of ``workflow_id`` from the start of its partition (or the first
        record at or after ``since_ms``), live after that, ending with its terminal event,
        however long ago that was. ``on_caught_up`` is called once the events that were
        there when this started have been read without finding the end (it still runs).
        With ``timeout_s``, it also ends (without a terminal event) once that has passed.

        Close the iterator (``contextlib.closing``) to let go of the reader early."""
        topic = self.topics.events
        partition = self.partition(topic, workflow_id)
        with ReadBack(self.clients, "fleet-follow") as probe:
            low, end = probe.bounds(topic, partition)
        start = (
            OFFSET_BEGINNING if since_ms is None else self._offset_at(topic, partition, since_ms)
        )
        caught_up = end <= (low if start == OFFSET_BEGINNING else max(low, start))
        if caught_up and on_caught_up is not None:
            on_caught_up()
        group = f"fleet-follow-{uuid.uuid4().hex}"
        reader = TopicReader(
            lambda: self.clients.consumer(group), self.clients.admin, topic, {partition: start}
        )
        key = workflow_id.encode()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while deadline is None or time.monotonic() < deadline:
                for record in reader.consume(500, timeout=0.2):
                    error = record.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise BrokerError(f"reading {topic} failed: {error}")
                        continue
                    if record.key() != key:
                        continue  # another workflow's: not even decoded
                    try:
                        event = self.codec.decode(record.value(), WorkflowEvent, record=record)
                    except DecodeError:
                        continue  # not ours to dead-letter: readers of events only skip
                    yield event
                    if event.kind.terminal:
                        return
                if not caught_up and reader.position(partition) >= end:
                    caught_up = True
                    if on_caught_up is not None:
                        on_caught_up()
        finally:
            reader.close()

    def _offset_at(self, topic: str, partition: int, at_ms: int) -> int:
        """The first offset with a timestamp at or after ``at_ms`` (the end if none)."""
        consumer = self.clients.probe_consumer(f"fleet-follow-{uuid.uuid4().hex}")
        try:
            (found,) = retry_transient(
                lambda: consumer.offsets_for_times(
                    [TopicPartition(topic, partition, at_ms)], timeout=10
                )
            )
            if found.offset >= 0:
                return int(found.offset)
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            return int(high)
        finally:
            consumer.close()

    def look_up(self, workflow_id: str, timeout_s: float) -> Sighting:
        """What the topics say of ``workflow_id``: its latest event; without one, whether a
        submission of it waits on the requests topic (submitted a moment ago, not yet
        accepted). Reads at most ``timeout_s``; ``complete`` says whether it got to the end."""
        found = self.history(workflow_id, timeout_s)
        last = found.events[-1] if found.events else None
        return Sighting(last, submitted=found.submitted, complete=found.complete)

    def history(self, workflow_id: str, timeout_s: float) -> History:
        """Every event of ``workflow_id`` still on its partition, oldest first, read to the
        partition's end as it was when this started; without any, whether a submission of
        it waits on the requests topic. Reads at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        key = workflow_id.encode()
        events: list[WorkflowEvent] = []
        with ReadBack(self.clients, "fleet-lookup", strict=True) as reader:
            try:
                for record in self._records(reader, self.topics.events, workflow_id, deadline):
                    if record.key() == key:
                        try:
                            events.append(
                                self.codec.decode(record.value(), WorkflowEvent, record=record)
                            )
                        except DecodeError:
                            continue
            except ReadIncomplete:
                return History(tuple(events), submitted=False, complete=False)
            if events:
                return History(tuple(events), submitted=False, complete=True)
            requests = self.topics.requests
            try:
                for record in self._records(reader, requests, workflow_id, deadline):
                    if record.key() == key:
                        try:  # Avro, or JSON from another language's producer
                            self.codec.decode_any(
                                record.value(),
                                (WorkflowSubmitted,),
                                record=record,
                                content_type=header(record, "content-type"),
                                accept_json=True,
                            )
                        except DecodeError:
                            continue  # a cancel or a top-up: not a submission
                        return History((), submitted=True, complete=True)
            except ReadIncomplete:
                return History((), submitted=False, complete=False)
        return History((), submitted=False, complete=True)

    def _records(
        self, reader: ReadBack, topic: str, workflow_id: str, deadline: float
    ) -> Iterator[Message]:
        partition = self.partition(topic, workflow_id)
        low, high = reader.bounds(topic, partition)
        yield from reader.in_range(topic, {partition: (low, high)}, deadline)
