"""The orchestrator's state changelog: a compacted topic co-partitioned with its inputs.

Partition p of ``orchestrator.state`` holds the latest state of every workflow whose
requests and results arrive on partition p. It is written in the same transaction as the
effects and input offsets it belongs to, so after any crash the committed changelog and
the committed offsets agree; a new owner rebuilds exactly that state before it processes.
Records are JSON (versioned inside), private to the orchestrator: no other process reads
them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from pydantic import JsonValue

from fleet.errors import BrokerError
from fleet.kafka import KafkaClients, watermarks

log = structlog.get_logger()


def encode(record: JsonValue | None) -> bytes | None:
    """None is a tombstone: compaction then forgets the workflow."""
    return None if record is None else json.dumps(record, separators=(",", ":")).encode()


def read_partitions(
    clients: KafkaClients, topic: str, partitions: Iterable[int], timeout_s: float = 120.0
) -> dict[str, tuple[int, JsonValue]]:
    """The latest committed record per workflow in ``partitions``: {workflow_id: (p, record)}.

    Reads each partition from its start to the high watermark seen when restore begins,
    as read_committed: an open transaction of the previous owner holds the read back
    until it commits or aborts, so a restore never sees half of a batch.

    The end must be the high watermark, asked read_uncommitted. A read_committed consumer
    reports the last stable offset instead, which stops short of a killed owner's open
    transaction *and of everything committed after it*: the restore would silently drop
    newer state (found by the fault runs: one attempt dispatched five times). Waiting for
    the open transaction costs at most the orchestrator's transaction.timeout.ms.
    """
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    started = time.monotonic()
    ends = _high_watermarks(clients, topic, wanted)
    latest: dict[str, tuple[int, JsonValue]] = {}
    consumer = clients.consumer(f"{topic}.restore-{uuid.uuid4().hex}")  # read_committed
    try:
        if ends:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            _read_until(consumer, ends, latest, started + timeout_s)
    finally:
        consumer.close()
    log.info(
        "state restored from the changelog",
        partitions=wanted,
        workflows=len(latest),
        seconds=round(time.monotonic() - started, 3),
    )
    return latest


def _high_watermarks(clients: KafkaClients, topic: str, partitions: list[int]) -> dict[int, int]:
    """{partition: high watermark} of the non-empty ``partitions``, open transactions included."""
    probe = clients.consumer(
        f"{topic}.restore-probe-{uuid.uuid4().hex}", **{"isolation.level": "read_uncommitted"}
    )
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = watermarks(probe, topic, p)
            if high > low:
                ends[p] = high
        return ends
    finally:
        probe.close()


def _read_until(
    consumer: Consumer,
    ends: dict[int, int],
    latest: dict[str, tuple[int, JsonValue]],
    deadline: float,
) -> None:
    pending = dict(ends)
    while pending:
        if time.monotonic() > deadline:
            raise BrokerError(
                f"changelog restore did not reach the end of partitions {sorted(pending)}"
            )
        for record in consumer.consume(1000, timeout=0.2):
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("changelog read error; retrying", error=str(error))
                continue
            key = record.key()
            workflow_id = key.decode() if isinstance(key, bytes) else str(key)
            value = record.value()
            if value is None:
                latest.pop(workflow_id, None)
            else:
                latest[workflow_id] = (record.partition() or 0, json.loads(value))
        # Transaction markers are not delivered as records: positions tell the progress.
        for tp in consumer.position(consumer.assignment()):
            if tp.partition in pending and tp.offset >= pending[tp.partition]:
                del pending[tp.partition]
