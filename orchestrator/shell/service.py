"""The orchestrator's Kafka shell around the pure :class:`~orchestrator.engine.Engine`.

One loop: consume a batch -> feed each record to the engine -> produce its effects, the
changed workflows' state (to the changelog) and the batch's input offsets in ONE Kafka
transaction. Readers are read_committed, so a crash anywhere leaves either all of a
batch or none of it; a zombie instance is fenced by its stale group generation.

The commit interval (``orchestrator_commit_interval_ms``, like Kafka Streams'
``commit.interval.ms``) keeps one transaction open across consumed batches until it has
elapsed: fewer commits, but effects become visible to read_committed readers only at the
commit, and a killed instance's open transaction holds its partitions' readers until
transaction.timeout.ms aborts it. 0 commits after every batch.

``at_least_once`` drops the transaction: effects and state are produced by an idempotent
producer, flushed, and only then are the input offsets committed. What it gives up: after
a crash between the flush and the offset commit (or in the middle of the flush), the
inputs since the last commit are consumed again, so a task can be dispatched twice and a
workflow event (even a terminal one) emitted twice. The engine ignores a repeated result
and a repeated submission of a known workflow, but it cannot take back an event or a task
already produced. Readers see effects at once instead of at the commit.
"""

from __future__ import annotations

import faulthandler
import gc
import signal
import threading
import time
import uuid
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
from prometheus_client import CollectorRegistry

from fleet.codec import Codec, SchemaStore
from fleet.errors import BrokerError, DecodeError, FleetError
from fleet.kafka import (
    TRACEPARENT,
    KafkaClients,
    client_id,
    header,
    headers_for,
    produce,
    retry_transient,
)
from fleet.kafka.deadletter import DeadLetters
from fleet.kafka.topics import CapabilityCheck, apply_topics, desired_topics
from fleet.messages import (
    BudgetTopUpRequested,
    MarketOutcome,
    TaskResult,
    WorkflowCancelRequested,
    WorkflowSubmitted,
)
from fleet.metrics import serve_metrics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleet.tracing import child_of
from orchestrator.engine import Effects, Engine
from orchestrator.market.policy import MarketPolicy
from orchestrator.shell import changelog
from orchestrator.shell.market import MarketShell
from orchestrator.shell.metrics import OrchestratorMetrics

log = structlog.get_logger()

TRANSACTION_SLICE_S = 2.0  # one transaction call; stop is re-checked between calls
TRANSACTION_WAIT_S = 30.0  # then the outcome is left to the coordinator and the process exits
ABORT_WAIT_S = 30.0
# Longer than any bounded wait of one batch (send offsets 30 s + commit 30 s + abort);
# only a call that ignores its own timeout reaches it.
TRANSACTION_WATCHDOG_S = 150.0
# A previous owner's open transaction holds the committed offsets unstable for up to its
# transaction.timeout.ms (60 s) and the coordinator's abort interval (10 s) after that.
ASSIGN_WAIT_S = 120.0


class Orchestrator:
    """Consume a batch -> engine -> effects, changelog and offsets in one transaction."""

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
        self.exactly_once = settings.orchestrator_guarantee == "exactly_once"
        self.commit_interval_s = settings.orchestrator_commit_interval_ms / 1000
        self.admin = clients.admin()
        self.consumer: Consumer = clients.co_partitioned_consumer(
            f"{settings.topic_prefix}orchestrator"
        )
        self.producer: Producer = (
            clients.transactional_producer(
                f"{settings.topic_prefix}orchestrator-{uuid.uuid4().hex}"
            )
            if self.exactly_once
            # No commit_transaction to fail for us: a record that could not be delivered
            # is reported here, and the next commit refuses to move the offsets past it.
            else clients.reporting_producer(self._delivered)
        )
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
        self.dead_letters = DeadLetters(
            self.producer, self.codec, self.topics, consumer=f"orchestrator {client_id('o')}"
        )
        self.owned: set[int] = set()  # partition numbers this instance owns
        self.partition_of: dict[str, int] = {}  # workflow_id -> its partition number
        self.touched: set[str] = set()  # workflows seen since the last commit
        self.open_since: float | None = None  # monotonic start of the uncommitted work
        self.offsets: dict[tuple[str, int], int] = {}  # next offset to commit, per input
        self.undelivered: list[str] = []  # at_least_once: delivery errors since the commit
        self.stop = threading.Event()  # the run's, once it runs

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        if self.exactly_once:
            self.producer.init_transactions(60)
        inputs = [
            self.topics.requests,
            self.topics.results,
            self.topics.market_bids,
            self.topics.market_outcomes,
        ]
        self.consumer.subscribe(
            inputs,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "orchestrator consuming",
            topics=inputs,
            guarantee="exactly_once" if self.exactly_once else "at_least_once",
            commit_interval_s=self.commit_interval_s,
        )
        try:
            while not stop.is_set():
                records = self.consumer.consume(self.batch_size, timeout=self._poll_timeout())
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
                if self.exactly_once:
                    self.producer.begin_transaction()
                self.open_since = time.monotonic()
            for record in records:
                error = record.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error; librdkafka retries", error=str(error))
                    continue
                self._handle(record, now_ms)
                self.offsets[(record.topic() or "", record.partition() or 0)] = (
                    record.offset() or 0
                ) + 1
            self._apply(self.engine.tick(now_ms), None)
            self.market.tick(now_ms)
            if self._commit_due():
                self._end()
        except KafkaException as exc:
            self._recover(exc)

    def _end(self) -> None:
        """Make everything since the last commit durable: state, then the input offsets.

        The changelog is written here, not per batch, so a workflow touched by several
        batches of one interval is written once."""
        self._write_changes()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
        self.open_since = None
        self.offsets = {}
        if not self.exactly_once:
            self._flush()
            self._commit_offsets(offsets)
            return
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

    def _flush(self) -> None:
        """at_least_once: every effect and state record acknowledged, or no offset moves.

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
        """at_least_once: the inputs' offsets, once what they caused is durable."""
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

    def _commit_open(self) -> None:
        """Commit the work consumed so far, if any: before partitions leave this instance."""
        if self.open_since is None:
            return
        try:
            self._end()
        except KafkaException as exc:
            self._recover(exc)

    def _retrying(self, what: str, call: Callable[[], None]) -> None:
        """Run a transaction call again while it fails retriably, in short slices so
        SIGTERM is honoured, for at most TRANSACTION_WAIT_S.

        Retriable errors (a timeout, the coordinator's connection lost while the broker
        restarts) leave the transaction intact: librdkafka says to call again. Past the
        wait, or on stop, the error goes to _recover, which exits: the coordinator decides
        the outcome, and a fresh instance restores whichever it was from the changelog.
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

    def _recover(self, exc: KafkaException) -> None:
        self.open_since = None
        self.offsets = {}
        error = exc.args[0] if exc.args else None
        if error is None or not error.txn_requires_abort():
            # Fenced (a newer owner took over), fatal, or a commit whose outcome is
            # unknown: exit and let the supervisor start a fresh instance, which
            # restores the committed state.
            raise BrokerError(f"transaction failed for good: {exc}") from exc
        log.warning("transaction aborted; rebuilding state from the changelog", error=str(error))
        self.producer.abort_transaction(ABORT_WAIT_S)
        # The rebuild has its own deadline (and may wait out another owner's transaction).
        faulthandler.cancel_dump_traceback_later()
        self._rebuild()

    def _rebuild(self) -> None:
        """After an abort: everything changed since the last commit is void in memory too,
        so rebuild the owned partitions from what is committed and consume again."""
        self.engine.forget(lambda _workflow_id: False)
        self.market.forget(set())
        self.partition_of.clear()
        self._restore(self.owned)
        if self.owned:
            self._rewind()

    # -- one record ---------------------------------------------------------------------

    def _handle(self, record: Message, now_ms: int) -> None:
        topic = record.topic()
        try:
            if topic == self.topics.market_bids:
                self.market.handle(record, now_ms)
                return
            if topic == self.topics.requests:
                request = self.codec.decode_any(
                    record.value(),
                    (WorkflowSubmitted, WorkflowCancelRequested, BudgetTopUpRequested),
                    record=record,
                )
                self._own(request.workflow_id, record)
                structlog.contextvars.bind_contextvars(workflow_id=request.workflow_id)
                if isinstance(request, WorkflowCancelRequested):
                    effects = self.engine.cancel(request, now_ms)
                elif isinstance(request, BudgetTopUpRequested):
                    effects = self.engine.top_up(request, now_ms)
                else:
                    effects = self.engine.submit(request, now_ms)
            elif topic == self.topics.market_outcomes:
                outcome = self.codec.decode(record.value(), MarketOutcome, record=record)
                self._own(outcome.workflow_id, record)
                structlog.contextvars.bind_contextvars(
                    workflow_id=outcome.workflow_id, task_id=outcome.task_id
                )
                effects = self.engine.on_market(outcome, now_ms)
            else:
                result = self.codec.decode(record.value(), TaskResult, record=record)
                self._own(result.workflow_id, record)
                structlog.contextvars.bind_contextvars(
                    workflow_id=result.workflow_id, task_id=result.task_id, attempt=result.attempt
                )
                effects = self.engine.on_result(result, now_ms)
        except DecodeError as exc:
            self._dead_letter(record, exc)
            return
        except Exception as exc:  # one bad record must never stop the line
            log.exception("engine failed on a record; dead-lettering it")
            self._dead_letter(record, exc)
            return
        finally:
            structlog.contextvars.clear_contextvars()
        self._apply(effects, header(record, TRACEPARENT))

    def _own(self, workflow_id: str, record: Message) -> None:
        self.partition_of.setdefault(workflow_id, record.partition() or 0)
        self.touched.add(workflow_id)

    def _dead_letter(self, record: Message, error: BaseException) -> None:
        self.metrics.dead_letters.labels(record.topic() or "").inc()
        self.dead_letters.send(record, error)

    def _apply(self, effects: Effects, parent: str | None) -> None:
        # No delivery callbacks: commit_transaction fails if any of these failed.
        for task in effects.tasks:
            produce(
                self.producer,
                self.topics.tasks(task.capability),
                self.codec.encode(task),
                key=task.task_id,
                headers=headers_for(task, child_of(parent), task.attempt),
            )
        for event in effects.events:
            produce(
                self.producer,
                self.topics.events,
                self.codec.encode(event),
                key=event.workflow_id,
                headers=headers_for(event, child_of(parent)),
            )
            if event.kind.terminal:
                log.info(
                    "workflow finished",
                    workflow_id=event.workflow_id,
                    outcome=event.kind.value,
                    error=event.error.message if event.error else None,
                )
        for bid in effects.market:
            produce(
                self.producer,
                self.topics.market_bids,
                self.codec.encode(bid),
                key=bid.resource,
                headers=headers_for(bid, child_of(parent)),
            )
        for reason in effects.dropped:
            log.info("input dropped", reason=reason)
        self.metrics.record(effects, self.engine.in_flight, self.engine.active)

    def _write_changes(self) -> None:
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

    # -- ownership ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
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

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        lost = {p.partition for p in parts}
        self.owned -= lost
        # Work consumed from these partitions may sit in the open transaction (commit
        # interval): commit it while they are ours, so their next owner restores it
        # instead of consuming it again. A failed commit aborts and rebuilds what stays.
        self._commit_open()
        self.engine.forget(lambda workflow_id: self.partition_of.get(workflow_id) in self.owned)
        self.market.forget(self.owned)
        self.partition_of = {w: p for w, p in self.partition_of.items() if p in self.owned}
        consumer.unassign()
        log.info("partitions revoked", partitions=sorted(lost))

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already, so nothing open may be
        # committed (exactly_once: the transaction would be fenced anyway). Drop it.
        if self.open_since is not None:
            self.open_since = None
            self.offsets = {}
            if self.exactly_once:
                try:
                    self.producer.abort_transaction(ABORT_WAIT_S)
                except KafkaException as exc:
                    raise BrokerError(f"abort after losing partitions failed: {exc}") from exc
                # The abort voids the work of the partitions kept, too (with the range
                # assignor none are: a lost assignment is the whole of it).
                self.owned -= {p.partition for p in parts}
                self._rebuild()
        self._on_revoke(consumer, parts)

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


def run(
    settings: Settings,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    batch_size: int = 500,
    stop: threading.Event | None = None,
) -> int:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    clients = KafkaClients(settings, settings.require_bootstrap(), role="orchestrator")
    admin = clients.ready_admin()
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    wanted = desired_topics(topology, topics, [])
    # Started while a broker is down (a restart, a node lost), the admin calls time out
    # for a while: wait that out here rather than exit and be restarted in a loop.
    retry_transient(lambda: apply_topics(admin, topology, wanted), timeout_s=120)
    registry = CollectorRegistry()
    serve_metrics(registry, metrics_port, metrics_host)
    policy = MarketPolicy.load(settings.market_file)
    orchestrator = Orchestrator(
        settings, clients, OrchestratorMetrics(registry), batch_size, policy=policy
    )
    try:
        orchestrator.run(stop)
    except FleetError as exc:
        log.error("orchestrator stopping", error=str(exc))
        return 1
    log.info("orchestrator stopped")
    return 0
