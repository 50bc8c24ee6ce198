"""How the orchestrator's work since the last commit becomes durable: one interface, two
guarantees, chosen once per instance (``orchestrator_guarantee``).

:class:`ExactlyOnce` produces the batch's effects, the changed workflows' state (to the
changelog) and the input offsets in ONE Kafka transaction. Readers are read_committed, so
a crash anywhere leaves either all of a batch or none of it; a zombie instance is fenced
by its stale group generation, which every transaction carries (one that consumed nothing
carries the positions it already committed).

:class:`AtLeastOnce` drops the transaction: effects and state are produced by an
idempotent producer, flushed, and only then are the input offsets committed. What it
gives up: after a crash between the flush and the offset commit (or in the middle of the
flush), the inputs since the last commit are consumed again, so a task can be dispatched
twice and a workflow event (even a terminal one) emitted twice. The engine ignores a
repeated result and a repeated submission of a known workflow, but it cannot take back an
event or a task already produced. Readers see effects at once instead of at the commit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from fleet.errors import BrokerError
from fleet.kafka import KafkaClients
from fleet.settings import Settings

log = structlog.get_logger()

TRANSACTION_SLICE_S = 2.0  # one transaction call; stop is re-checked between calls
TRANSACTION_WAIT_S = 30.0  # then the outcome is left to the coordinator and the process exits
ABORT_WAIT_S = 30.0


class Committer(Protocol):
    """The commit side of the loop: it owns the producer every output goes through."""

    guarantee: str  # the setting's value, for the logs
    producer: Producer

    def start(self, stop: threading.Event) -> None:
        """Once, before the first batch; ``stop`` cuts retries short."""

    def begin(self) -> None:
        """Open the unit of work the next outputs belong to."""

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Make everything produced since :meth:`begin` durable, then ``offsets``.

        A KafkaException is left to the loop, which calls :meth:`abort` with it."""

    def abort(self, exc: KafkaException) -> None:
        """After ``exc`` broke the open work: void it, so the loop can rebuild from what is
        committed and consume again; raise BrokerError where it cannot be voided."""

    def discard(self) -> bool:
        """Drop the open work of partitions that were lost (another member may own them
        already, so nothing may be committed). True if that voided the work in memory too,
        so the owned partitions must be rebuilt."""


def committer_for(settings: Settings, clients: KafkaClients, consumer: Consumer) -> Committer:
    if settings.orchestrator_guarantee == "exactly_once":
        return ExactlyOnce(settings, clients, consumer)
    return AtLeastOnce(clients, consumer)


class ExactlyOnce:
    """Effects, changelog and input offsets in one transaction."""

    guarantee = "exactly_once"

    def __init__(self, settings: Settings, clients: KafkaClients, consumer: Consumer) -> None:
        self.consumer = consumer
        # No delivery callbacks: commit_transaction fails if any record failed.
        # A stable instance's replacement fences its predecessor here, at
        # init_transactions: the coordinator aborts the dead instance's open transaction
        # at once. A random id leaves it open until transaction.timeout.ms. Zombies are
        # fenced either way: by the producer epoch, and by the group generation that
        # send_offsets_to_transaction carries (KIP-447).
        member = settings.orchestrator_member()
        self.producer = clients.transactional_producer(
            member or f"{settings.topic_prefix}orchestrator-{uuid.uuid4().hex}"
        )
        self.stop = threading.Event()  # the run's, once it runs

    def start(self, stop: threading.Event) -> None:
        self.stop = stop
        self.producer.init_transactions(60)

    def begin(self) -> None:
        self.producer.begin_transaction()

    def commit(self, offsets: list[TopicPartition]) -> None:
        # The group generation that fences a zombie travels only with the offsets
        # (KIP-447: the coordinator checks it on TxnOffsetCommit; EndTxn checks the
        # producer epoch alone, which a different instance's id never bumps). Work that
        # consumed no input (a retry's or a deadline's timer, an auction round) would
        # commit unfenced, so a paused instance waking after its partitions moved would
        # dispatch its due retries beside its successor's (seen in CI's short fault run;
        # tests/integration/test_recovery.py reproduces it). Such work carries the owned
        # partitions' positions instead: an offset that does not move, and the fence.
        offsets = offsets or self._positions()
        if offsets:
            group = self.consumer.consumer_group_metadata()
            self._retrying(
                "sending the input offsets",
                lambda: self.producer.send_offsets_to_transaction(
                    offsets, group, TRANSACTION_SLICE_S
                ),
            )
        self._retrying(
            "committing the transaction",
            lambda: self.producer.commit_transaction(TRANSACTION_SLICE_S),
        )

    def _positions(self) -> list[TopicPartition]:
        """The next offset to consume of each owned partition that has one: with no input
        consumed since the last commit, exactly what is committed already."""
        owned = self.consumer.assignment()
        if not owned:
            return []
        known = [tp for tp in self.consumer.position(owned) if tp.offset >= 0]
        if known:
            return known
        # Nothing fetched yet since the assignment (a restored timer due at once): the
        # committed offsets are the positions. A group that never committed has none to
        # send, and no timers either: they come from inputs consumed, which have positions.
        committed = self.consumer.committed(owned, timeout=TRANSACTION_WAIT_S)
        return [tp for tp in committed if tp.offset >= 0]

    def _retrying(self, what: str, call: Callable[[], None]) -> None:
        """Run a transaction call again while it fails retriably, in short slices so
        SIGTERM is honoured, for at most TRANSACTION_WAIT_S.

        Retriable errors (a timeout, the coordinator's connection lost while the broker
        restarts) leave the transaction intact: librdkafka says to call again. Past the
        wait, or on stop, the error goes to abort (by way of the loop), which exits: the
        coordinator decides the outcome, and a fresh instance restores whichever it was
        from the changelog.
        """
        deadline = time.monotonic() + TRANSACTION_WAIT_S
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                waiting = error is not None and error.retriable() and not error.txn_requires_abort()
                if not waiting or self.stop.is_set() or time.monotonic() > deadline:
                    raise
                log.warning(f"{what}: retriable error; trying again", error=str(error))
                time.sleep(0.2)

    def abort(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        if error is None or not error.txn_requires_abort():
            # Fenced (a newer owner took over), fatal, or a commit whose outcome is
            # unknown: exit and let the supervisor start a fresh instance, which
            # restores the committed state.
            raise BrokerError(f"transaction failed for good: {exc}") from exc
        log.warning("transaction aborted; rebuilding state from the changelog", error=str(error))
        self.producer.abort_transaction(ABORT_WAIT_S)

    def discard(self) -> bool:
        # The transaction would be fenced anyway; abort it rather than leave it open.
        try:
            self.producer.abort_transaction(ABORT_WAIT_S)
        except KafkaException as exc:
            raise BrokerError(f"abort after losing partitions failed: {exc}") from exc
        return True


class AtLeastOnce:
    """Effects and changelog flushed by an idempotent producer, then the input offsets."""

    guarantee = "at_least_once"

    def __init__(self, clients: KafkaClients, consumer: Consumer) -> None:
        self.consumer = consumer
        # No commit_transaction to fail for us: a record that could not be delivered
        # is reported here, and the next commit refuses to move the offsets past it.
        self.producer = clients.reporting_producer(self._delivered)
        self.undelivered: list[str] = []  # delivery errors since the commit

    def start(self, stop: threading.Event) -> None:
        pass  # nothing to initialise, nothing that waits on the stop

    def begin(self) -> None:
        pass  # the outputs are produced at once; the offsets alone wait for the commit

    def commit(self, offsets: list[TopicPartition]) -> None:
        self._flush()
        self._commit_offsets(offsets)

    def _flush(self) -> None:
        """Every effect and state record acknowledged, or no offset moves.

        Exiting leaves the inputs uncommitted: a fresh owner restores the state and
        consumes them again (the duplicates at_least_once allows)."""
        remaining = self.producer.flush(TRANSACTION_WAIT_S)
        if remaining or self.undelivered:
            first = self.undelivered[0] if self.undelivered else "timed out"
            raise BrokerError(
                f"{remaining + len(self.undelivered)} records not delivered ({first}); "
                "leaving their inputs uncommitted"
            )

    def _commit_offsets(self, offsets: list[TopicPartition]) -> None:
        """The inputs' offsets, once what they caused is durable."""
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Everything is durable; the uncommitted inputs are consumed again by their
            # owner (this instance or, after a rebalance, the next): that is the
            # at_least_once contract, not a reason to stop.
            log.warning("offset commit failed; these inputs will be replayed", error=str(exc))

    def _delivered(self, error: KafkaError | None, _record: Message) -> None:
        if error is not None:
            self.undelivered.append(str(error))

    def abort(self, exc: KafkaException) -> None:
        # No transaction to abort: what was produced may be out already, so only a fresh
        # instance, restoring the committed state, consumes the inputs again.
        raise BrokerError(f"transaction failed for good: {exc}") from exc

    def discard(self) -> bool:
        # What was produced stays produced; the offsets are not committed, so the next
        # owner consumes those inputs again. Nothing in memory is void.
        return False
