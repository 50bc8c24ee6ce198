"""Reading a topic back to its end: every committed record, none missed at the end.

The end is the high watermark asked read_uncommitted when the read starts. A
read_committed consumer reports the last stable offset instead, which stops short of an
open transaction (a killed orchestrator's stays open until transaction.timeout.ms) *and
of everything committed after it*: a read that ended there would silently drop newer
records (found by the fault runs: a changelog restore that lost state). Reading
read_committed up to the high watermark waits until every such transaction is decided;
aborted records and transaction markers are never delivered, so the consumer's position,
not the last record seen, says when a partition is done.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator

import structlog
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from fleet.errors import BrokerError
from fleet.kafka.clients import KafkaClients, watermarks

log = structlog.get_logger()


class ReadIncomplete(BrokerError):  # noqa: N818 - reads as what happened
    """The deadline passed before these partitions were read to their end."""

    def __init__(self, topic: str, partitions: Iterable[int]) -> None:
        self.partitions = sorted(partitions)
        super().__init__(f"reading {topic} did not reach the end of partitions {self.partitions}")


def end_offsets(clients: KafkaClients, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """{partition: high watermark} of the non-empty ``partitions``, open transactions
    included."""
    probe = clients.probe_consumer(f"{topic}.probe-{uuid.uuid4().hex}")
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = watermarks(probe, topic, p)
            if high > low:
                ends[p] = high
        return ends
    finally:
        probe.close()


def records_to_end(
    clients: KafkaClients, topic: str, partitions: Iterable[int], deadline: float
) -> Iterator[Message]:
    """Every committed record of ``partitions`` from their start to the end they had
    when the read began, in order per partition; :class:`ReadIncomplete` if the monotonic
    ``deadline`` passes first (the records before it have been yielded)."""
    ends = end_offsets(clients, topic, sorted(set(partitions)))
    if not ends:
        return
    consumer = clients.consumer(f"{topic}.read-{uuid.uuid4().hex}")  # read_committed
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = dict(ends)
        while pending:
            if time.monotonic() > deadline:
                raise ReadIncomplete(topic, pending)
            for record in consumer.consume(1000, timeout=0.2):
                error = record.error()
                if error is None:
                    yield record
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("read error; librdkafka retries", topic=topic, error=str(error))
            for tp in consumer.position(consumer.assignment()):
                if tp.partition in pending and tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]
    finally:
        consumer.close()


def partitions_of(clients: KafkaClients, topic: str) -> list[int]:
    """The topic's partition numbers, or a BrokerError saying how to create it."""
    admin = clients.admin()
    topics = admin.list_topics(topic=topic, timeout=30).topics
    if topic not in topics or topics[topic].error is not None:
        raise BrokerError(f"cannot read {topic}: no such topic; run `fleet topics apply`")
    return sorted(topics[topic].partitions)
