"""The orchestrator's loop around the pure :class:`~orchestrator.engine.Engine`.

One loop: consume a batch -> feed each record to the engine -> produce its effects, the
changed workflows' state (to the changelog) and the batch's input offsets, made durable
together by the instance's :class:`~orchestrator.shell.commit.Committer` (exactly_once:
in ONE Kafka transaction; at_least_once: flushed, then the offsets).

The commit interval (``orchestrator_commit_interval_ms``, like Kafka Streams'
``commit.interval.ms``) keeps one transaction open across consumed batches until it has
elapsed: fewer commits, but effects become visible to read_committed readers only at the
commit, and a killed instance's open transaction holds its partitions' readers until
transaction.timeout.ms aborts it. 0 commits after every batch.
"""

from __future__ import annotations

import faulthandler
import threading
import time

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from fleet.codec import Codec, SchemaStore
from fleet.kafka import KafkaClients, client_id
from fleet.kafka.topics import CapabilityCheck
from fleet.settings import Settings
from fleet.topology import Topics
from orchestrator.engine import Engine
from orchestrator.market.policy import MarketPolicy
from orchestrator.shell.breakers import BreakerTally
from orchestrator.shell.commit import committer_for
from orchestrator.shell.market import MarketShell
from orchestrator.shell.metrics import OrchestratorMetrics
from orchestrator.shell.ownership import Ownership
from orchestrator.shell.routing import Router

log = structlog.get_logger()

# Longer than any bounded wait of one batch (send offsets 30 s + commit 30 s + abort);
# only a call that ignores its own timeout reaches it.
TRANSACTION_WATCHDOG_S = 150.0


class Orchestrator:
    """Consume a batch -> engine -> effects, changelog and offsets, committed together."""

    def __init__(
        self,
        settings: Settings,
        clients: KafkaClients,
        metrics: OrchestratorMetrics,
        batch_size: int = 500,
        policy: MarketPolicy | None = None,
    ) -> None:
        self.clients = clients
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.metrics = metrics
        self.batch_size = batch_size
        self.commit_interval_s = settings.orchestrator_commit_interval_ms / 1000
        self.admin = clients.admin()
        self.consumer: Consumer = clients.co_partitioned_consumer(
            f"{settings.topic_prefix}orchestrator", settings.orchestrator_member()
        )
        # Chosen once: every output of this instance goes through its producer.
        self.committer = committer_for(settings, clients, self.consumer)
        self.producer = self.committer.producer
        policy = policy or MarketPolicy.empty()
        self.engine = Engine(has_capability=CapabilityCheck(self.admin, self.topics), policy=policy)
        self.market = MarketShell(
            policy,
            clients=clients,
            producer=self.producer,
            codec=self.codec,
            topics=self.topics,
            metrics=metrics,
        )
        self.ownership = Ownership(
            clients=clients,
            consumer=self.consumer,
            producer=self.producer,
            engine=self.engine,
            market=self.market,
            topics=self.topics,
            metrics=metrics,
            commit_open=self._commit_open,
            drop_open=self._drop_open,
        )
        self.router = Router(
            engine=self.engine,
            market=self.market,
            producer=self.producer,
            codec=self.codec,
            topics=self.topics,
            metrics=metrics,
            own=self.ownership.own,
        )
        if settings.breakers:
            # What this instance's results say of each capability, published at every
            # commit for every instance's circuit breakers (orchestrator.shell.breakers).
            instance = settings.orchestrator_member() or client_id("o")
            self.router.tally = BreakerTally(instance)
        self.open_since: float | None = None  # monotonic start of the uncommitted work
        self.offsets: dict[tuple[str, int], int] = {}  # next offset to commit, per input
        self.stop = threading.Event()  # the run's, once it runs

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        self.committer.start(stop)
        inputs = [
            self.topics.requests,
            self.topics.results,
            self.topics.market_bids,
            self.topics.market_outcomes,
        ]
        self.consumer.subscribe(
            inputs,
            on_assign=self.ownership.on_assign,
            on_revoke=self.ownership.on_revoke,
            on_lost=self.ownership.on_lost,
        )
        log.info(
            "orchestrator consuming",
            topics=inputs,
            guarantee=self.committer.guarantee,
            commit_interval_s=self.commit_interval_s,
        )
        try:
            while not stop.is_set():
                records = self._take_batch()
                now_ms = int(time.time() * 1000)
                due = self._next_due_ms()
                if records or (due is not None and due <= now_ms) or self._commit_due():
                    self._transact(records, now_ms)
            self._commit_open()  # a clean stop leaves nothing for the next owner to redo
        except BaseException:
            # Half-done work must not be committed by the revocation on the way out.
            self.open_since = None
            raise
        finally:
            log.info("orchestrator leaving the group")
            self.consumer.close()

    def _take_batch(self) -> list[Message]:
        """Block for the first record only, then take what is already fetched.

        ``consume(batch_size, timeout)`` would hold a part-filled batch for its whole
        timeout (200 ms per hop at light load, most of a lone workflow's latency). Under
        load the local queue fills while a batch is handled, so batches still grow
        towards ``batch_size`` and commits stay one per batch."""
        records = self.consumer.consume(1, timeout=self._poll_timeout())
        if records and self.batch_size > 1:
            records += self.consumer.consume(self.batch_size - 1, timeout=0)
        return records

    def _next_due_ms(self) -> int | None:
        dues = [d for d in (self.engine.next_due_ms(), self.market.next_due_ms()) if d is not None]
        return min(dues, default=None)

    def _poll_timeout(self) -> float:
        timeout = 0.2
        due = self._next_due_ms()
        if due is not None:
            timeout = min(timeout, max(0.0, due / 1000 - time.time()))
        if self.open_since is not None:
            commit_at = self.open_since + self.commit_interval_s
            timeout = min(timeout, max(0.0, commit_at - time.monotonic()))
        return timeout

    def _commit_due(self) -> bool:
        return (
            self.open_since is not None
            and time.monotonic() - self.open_since >= self.commit_interval_s
        )

    def _transact(self, records: list[Message], now_ms: int) -> None:
        # A transaction call that hangs past its own timeout (librdkafka bugs do that)
        # must not wedge the partitions this instance owns: the watchdog dumps every
        # stack and exits, and a fresh instance restores the committed state.
        faulthandler.dump_traceback_later(TRANSACTION_WATCHDOG_S, exit=True)
        try:
            self._transact_batch(records, now_ms)
        finally:
            faulthandler.cancel_dump_traceback_later()

    def _transact_batch(self, records: list[Message], now_ms: int) -> None:
        try:
            if self.open_since is None:
                self.committer.begin()
                self.open_since = time.monotonic()
            for record in records:
                error = record.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error; librdkafka retries", error=str(error))
                    continue
                self.router.handle(record, now_ms)
                self.offsets[(record.topic() or "", record.partition() or 0)] = (
                    record.offset() or 0
                ) + 1
            self.router.apply(self.engine.tick(now_ms), None)
            self.market.tick(now_ms)
            if self._commit_due():
                self._end()
        except KafkaException as exc:
            self._recover(exc)

    # -- the end of the open work -------------------------------------------------------

    def _end(self) -> None:
        """Make everything since the last commit durable: state, then the input offsets.

        The changelog is written here, not per batch, so a workflow touched by several
        batches of one interval is written once."""
        self.ownership.write_changes()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
        self.open_since = None
        self.offsets = {}
        if self.router.tally is not None:  # in the same transaction as what they came from
            self.router.tally.flush(self.producer, self.codec, self.topics, int(time.time() * 1000))
        self.committer.commit(offsets)

    def _commit_open(self) -> None:
        """Commit the work consumed so far, if any: before partitions leave this instance."""
        if self.open_since is None:
            return
        try:
            self._end()
        except KafkaException as exc:
            self._recover(exc)

    def _drop_open(self) -> bool:
        """Drop the work consumed so far, if any, uncommitted: its partitions were lost.
        True if the owned partitions must be rebuilt (see Committer.discard)."""
        if self.open_since is None:
            return False
        self.open_since = None
        self.offsets = {}
        if self.router.tally is not None:
            self.router.tally.clear()
        return self.committer.discard()

    def _recover(self, exc: KafkaException) -> None:
        self.open_since = None
        self.offsets = {}
        if self.router.tally is not None:  # the voided work is consumed and counted again
            self.router.tally.clear()
        self.committer.abort(exc)  # or BrokerError: the process exits, a fresh one restores
        # The rebuild has its own deadline (and may wait out another owner's transaction).
        faulthandler.cancel_dump_traceback_later()
        self.ownership.rebuild()
