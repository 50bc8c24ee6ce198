"""Redrive: what goes back onto a source topic, what is refused, and the transaction
that re-injects a batch of dead letters together with their markers, or nothing.

A run reads the markers only after ``init_transactions`` under a fixed transactional id
(:attr:`fleetctl.dlq.office.DeadLetterOffice.transactional_id`), which aborts whatever a
crashed or concurrent earlier run left open: each dead letter is redriven once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaException, Producer

from fleet.errors import BrokerError
from fleet.kafka import retry_transient
from fleetctl.dlq.letters import Entry, Headers, LetterId, Marker

log = structlog.get_logger()

REDRIVEN_FROM = "fleet-redriven-from"
# Headers the dead-letter writer adds: they describe the failure, not the record.
_DROPPED_HEADERS = ("fleet-error", "fleet-source-", REDRIVEN_FROM)


@dataclass
class RedriveReport:
    dry_run: bool
    redriven: list[Entry] = field(default_factory=list)
    already: list[Entry] = field(default_factory=list)
    refused: list[tuple[Entry, str]] = field(default_factory=list)


def redrive_headers(headers: Headers, letter_id: LetterId) -> Headers:
    """The original headers without the failure's, plus where the redrive came from."""
    kept = [(k, v) for k, v in headers if not k.startswith(_DROPPED_HEADERS)]
    return [*kept, (REDRIVEN_FROM, str(letter_id).encode())]


def refusal(entry: Entry, partitions: int | None, dead_letters_topic: str) -> str | None:
    """Why a dead letter cannot be re-injected as it is; None when it can."""
    letter = entry.letter
    if letter is None:
        return f"the dead letter itself does not decode: {entry.problem}"
    if letter.value_truncated:
        return (
            f"value kept only in part ({len(letter.value or b'')} of {letter.value_size} bytes); "
            f"the whole record is at {entry.source} until retention"
        )
    if letter.source_topic == dead_letters_topic:
        return "its source is the dead-letter topic itself"
    if partitions is None:
        return f"source topic {letter.source_topic} does not exist"
    return None


def transact(call: Callable[..., object], *args: float) -> None:
    """A transaction call, transient errors retried; a fatal one means a newer run
    fenced this one."""
    try:
        retry_transient(lambda: call(*args))
    except KafkaException as exc:
        error = exc.args[0]
        hint = " (another redrive took over)" if error.fatal() else ""
        raise BrokerError(f"redrive transaction failed{hint}: {error}") from exc


def commit_batch(
    producer: Producer,
    entries: list[Entry],
    partitions: Mapping[str, int | None],
    *,
    markers_topic: str,
    by: str,
) -> None:
    """One transaction: the re-injected records and their markers, or nothing."""
    now_ms = int(time.time() * 1000)
    transact(producer.begin_transaction)
    try:
        # In source order: dead letters of one partition may sit in several of ours.
        for entry in sorted(entries, key=lambda e: e.coordinates):
            letter = entry.letter
            assert letter is not None  # refusal() let only decoded letters through
            # The partition it came from, so its order with its neighbours is kept.
            inside = letter.source_partition < (partitions[letter.source_topic] or 0)
            producer.produce(
                letter.source_topic,
                value=letter.value,
                key=letter.key,
                partition=letter.source_partition if inside else -1,
                headers=list(redrive_headers([(h.key, h.value) for h in letter.headers], entry.id)),
            )
            marker = Marker(str(entry.id), now_ms, entry.source, by)
            producer.produce(
                markers_topic,
                key=marker.id.encode(),
                value=marker.encode(),
                headers=[("content-type", b"application/json")],
            )
            producer.poll(0)
        transact(producer.commit_transaction, 60)
    except (KafkaException, BufferError, BrokerError) as exc:
        try:
            producer.abort_transaction(30)
        except KafkaException:
            log.warning("abort failed; the next redrive run aborts the transaction")
        raise BrokerError(
            f"redrive of {len(entries)} dead letter(s) may not be committed ({exc}); run "
            "the command again: what was committed is skipped, the rest is redriven"
        ) from exc
    log.info("redriven", count=len(entries), first=str(entries[0].id), last=str(entries[-1].id))
