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
from collections.abc import Iterable

import structlog
from pydantic import JsonValue

from fleet.kafka import KafkaClients
from fleet.kafka.readback import latest_per_key

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

    The end is the high watermark (fleet.kafka.readback): a restore that stopped at the last
    stable offset dropped newer state (found by the fault runs: one attempt dispatched
    five times). Waiting for the open transaction costs at most the orchestrator's
    transaction.timeout.ms; past ``timeout_s`` it raises ReadIncomplete (a BrokerError).
    """
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    started = time.monotonic()
    latest = {
        key.decode(): (found.partition, json.loads(found.value))
        for key, found in latest_per_key(clients, topic, wanted, started + timeout_s).items()
    }
    log.info(
        "state restored from the changelog",
        partitions=wanted,
        workflows=len(latest),
        seconds=round(time.monotonic() - started, 3),
    )
    return latest
