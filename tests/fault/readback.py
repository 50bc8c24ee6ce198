"""Reading the topics back: every committed record, up to the high watermark."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from fleet.kafka import KafkaClients, watermarks


@dataclass(frozen=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None


def read_topic(clients: KafkaClients, topic: str, timeout_s: float) -> tuple[list[RawRecord], bool]:
    """Every committed record of ``topic`` up to its high watermark at the start.

    The end is the high watermark (asked read_uncommitted), not what a read_committed
    consumer reports: that is the last stable offset, which stops short of an open
    transaction (a killed orchestrator's stays open until transaction.timeout.ms) and of
    everything committed after it. Reading read_committed up to the high watermark waits
    until every such transaction is decided. Returns the records and whether the end was
    reached before the deadline.
    """
    probe = clients.consumer(
        f"fault-probe-{uuid.uuid4().hex}", **{"isolation.level": "read_uncommitted"}
    )
    try:
        meta = probe.list_topics(topic, timeout=30).topics[topic]
        ends: dict[int, int] = {}
        for p in sorted(meta.partitions):
            low, high = watermarks(probe, topic, p)
            if high > low:
                ends[p] = high
    finally:
        probe.close()
    records: list[RawRecord] = []
    if not ends:
        return records, True
    consumer = clients.consumer(f"fault-reader-{uuid.uuid4().hex}")  # read_committed
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for record in consumer.consume(1000, timeout=0.2):
                if record.error() is None:
                    records.append(
                        RawRecord(record.partition() or 0, record.offset() or 0, record.value())
                    )
            # Aborted records and transaction markers are never delivered: the position
            # tells how far the read got.
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends.get(tp.partition, 0):
                    ends.pop(tp.partition, None)
        return records, not ends
    finally:
        consumer.close()
