"""Reading the topics back: every committed record, up to the high watermark."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fleet.kafka import KafkaClients
from fleet.kafka.readback import ReadIncomplete, partitions_of, records_to_end


@dataclass(frozen=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None


def read_topic(clients: KafkaClients, topic: str, timeout_s: float) -> tuple[list[RawRecord], bool]:
    """Every committed record of ``topic`` up to its high watermark at the start
    (fleet.kafka.readback), and whether the end was reached before the deadline."""
    records: list[RawRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        for record in records_to_end(clients, topic, partitions_of(clients, topic), deadline):
            records.append(RawRecord(record.partition() or 0, record.offset() or 0, record.value()))
    except ReadIncomplete:
        return records, False
    return records, True
