"""Which partitions this orchestrator instance owns, and the workflows in them.

The consumer group's rebalance callbacks move ownership: an assigned partition is restored
from the changelog (:mod:`orchestrator.shell.changelog`) before it is consumed, a revoked
one has its open work committed and is forgotten, a lost one has its open work dropped.
After an abort the owned partitions are rebuilt from what is committed and consumed again
from their committed offsets. The changed workflows' state goes back to the changelog
partition of the inputs that named them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from fleet.errors import BrokerError, DecodeError
from fleet.kafka import KafkaClients
from fleet.topology import Topics
from orchestrator.engine import Engine
from orchestrator.shell import changelog
from orchestrator.shell.commit import TRANSACTION_SLICE_S
from orchestrator.shell.market import MarketShell
from orchestrator.shell.metrics import OrchestratorMetrics

log = structlog.get_logger()

# A previous owner's open transaction holds the committed offsets unstable for up to its
# transaction.timeout.ms (60 s) and the coordinator's abort interval (10 s) after that.
ASSIGN_WAIT_S = 120.0


class Ownership:
    def __init__(
        self,
        *,
        clients: KafkaClients,
        consumer: Consumer,
        producer: Producer,
        engine: Engine,
        market: MarketShell,
        topics: Topics,
        metrics: OrchestratorMetrics,
        commit_open: Callable[[], None],
        drop_open: Callable[[], bool],
    ) -> None:
        """``commit_open`` commits the loop's open work; ``drop_open`` drops it and says
        whether that voided the work in memory too (see Committer.discard)."""
        self.clients = clients
        self.consumer = consumer
        self.producer = producer
        self.engine = engine
        self.market = market
        self.topics = topics
        self.metrics = metrics
        self.commit_open = commit_open
        self.drop_open = drop_open
        self.owned: set[int] = set()  # partition numbers this instance owns
        self.partition_of: dict[str, int] = {}  # workflow_id -> its partition number
        self.touched: set[str] = set()  # workflows seen since the last commit

    def own(self, workflow_id: str, record: Message) -> None:
        self.partition_of.setdefault(workflow_id, record.partition() or 0)
        self.touched.add(workflow_id)

    def write_changes(self) -> None:
        """The changed books and workflows, each to its partition of its changelog."""
        self.market.write_changes()
        for workflow_id, record in self.engine.take_changes().items():
            partition = self.partition_of[workflow_id]
            if record is None:
                del self.partition_of[workflow_id]
            self.producer.produce(
                self.topics.state,
                key=workflow_id,
                value=changelog.encode(record),
                partition=partition,
            )
        # Inputs the engine dropped (a cancel or result for an unknown id) leave nothing
        # to own: forget their partition, so the map follows the engine, not the input.
        for workflow_id in self.touched:
            if self.engine.record_of(workflow_id) is None:
                self.partition_of.pop(workflow_id, None)
        self.touched.clear()

    # -- the rebalance callbacks ----------------------------------------------------------

    def on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gained = {p.partition for p in parts} - self.owned
        # The committed input offsets first: asked read_committed (require_stable), the
        # answer waits until a previous owner's transaction that carries offsets for these
        # partitions is decided. Only then is the changelog final for them. A previous
        # owner that sent its offsets before losing the partitions (stalled in a commit
        # across a broker restart, or paused) can still commit; a restore taken before
        # that would miss its state while the offsets moved past its inputs (soak run:
        # one workflow completed twice).
        positions = self._committed(parts)
        self._restore(gained)
        self.owned |= gained
        consumer.assign(positions)
        log.info("partitions assigned", partitions=sorted(self.owned))

    def on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        lost = {p.partition for p in parts}
        self.owned -= lost
        # Work consumed from these partitions may sit in the open transaction (commit
        # interval): commit it while they are ours, so their next owner restores it
        # instead of consuming it again. A failed commit aborts and rebuilds what stays.
        self.commit_open()
        self.engine.forget(lambda workflow_id: self.partition_of.get(workflow_id) in self.owned)
        self.market.forget(self.owned)
        self.partition_of = {w: p for w, p in self.partition_of.items() if p in self.owned}
        consumer.unassign()
        log.info("partitions revoked", partitions=sorted(lost))

    def on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already, so nothing open may be
        # committed (exactly_once: the transaction would be fenced anyway). Drop it.
        if self.drop_open():
            # The abort voids the work of the partitions kept, too (with the range
            # assignor none are: a lost assignment is the whole of it).
            self.owned -= {p.partition for p in parts}
            self.rebuild()
        self.on_revoke(consumer, parts)

    # -- restore --------------------------------------------------------------------------

    def rebuild(self) -> None:
        """After an abort: everything changed since the last commit is void in memory too,
        so rebuild the owned partitions from what is committed and consume again."""
        self.engine.forget(lambda _workflow_id: False)
        self.market.forget(set())
        self.partition_of.clear()
        self._restore(self.owned)
        if self.owned:
            self._rewind()

    def _committed(self, parts: list[TopicPartition]) -> list[TopicPartition]:
        """The committed offsets of ``parts`` (the beginning where none), once stable."""
        deadline = time.monotonic() + ASSIGN_WAIT_S
        while True:
            try:
                committed = self.consumer.committed(parts, timeout=TRANSACTION_SLICE_S * 5)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                # A local timeout is the normal answer while a previous owner's
                # transaction keeps the offsets unstable (librdkafka retries until then).
                waiting = error is not None and (
                    error.retriable() or error.code() == KafkaError._TIMED_OUT
                )
                if not waiting or time.monotonic() > deadline:
                    raise BrokerError(f"cannot read the committed offsets: {exc}") from exc
                log.warning("committed offsets not stable yet; waiting", error=str(error))
                continue
            return [
                TopicPartition(
                    tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                )
                for tp in committed
            ]

    def _restore(self, partitions: set[int]) -> None:
        self.market.restore(partitions)
        restored = changelog.read_partitions(self.clients, self.topics.state, partitions)
        # Bulk restore allocates many long-lived objects; the cyclic collector would
        # rescan them again and again (2-3x slower for 100k workflows).
        gc.disable()
        try:
            for workflow_id, (partition, record) in restored.items():
                try:
                    self.engine.restore(workflow_id, record)
                except DecodeError as exc:
                    # One unreadable state must not keep the partition from being served.
                    self.metrics.dead_letters.labels(self.topics.state).inc()
                    log.error(
                        "skipping an unreadable changelog record",
                        workflow_id=workflow_id,
                        error=str(exc),
                    )
                    continue
                self.partition_of[workflow_id] = partition
        finally:
            gc.enable()

    def _rewind(self) -> None:
        """Back to the committed offsets, so an aborted batch is consumed again."""
        for tp in self._committed(self.consumer.assignment()):
            self.consumer.seek(tp)
