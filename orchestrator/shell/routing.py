"""Records in and out of the orchestrator: each input topic to its engine call, each effect
to its topic, and an input that cannot be decoded or handled to the dead letters."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from confluent_kafka import KafkaException, Message, Producer

from fleet.codec import Codec
from fleet.errors import DecodeError
from fleet.kafka import (
    CONTENT_TYPE_HEADER,
    TRACEPARENT,
    client_id,
    header,
    headers_for,
    produce,
    record_headers,
)
from fleet.kafka.deadletter import DeadLetters
from fleet.kafka.partitioner import partition_for
from fleet.messages import (
    BudgetTopUpRequested,
    MarketOutcome,
    TaskResult,
    WorkflowCancelRequested,
    WorkflowSubmitted,
)
from fleet.topology import Topics
from fleet.tracing import child_of
from orchestrator.engine import Effects, Engine
from orchestrator.shell.breakers import BreakerTally
from orchestrator.shell.market import MarketShell
from orchestrator.shell.metrics import OrchestratorMetrics

log = structlog.get_logger()

# On a request the orchestrator moved to its workflow's partition: where it was produced.
FORWARDED_FROM = "fleet-forwarded-from"

# Marks a workflow as this instance's, on the partition of the record that named it.
Own = Callable[[str, Message], None]


class Router:
    def __init__(
        self,
        *,
        engine: Engine,
        market: MarketShell,
        producer: Producer,
        codec: Codec,
        topics: Topics,
        metrics: OrchestratorMetrics,
        own: Own,
    ) -> None:
        self.engine = engine
        self.market = market
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.metrics = metrics
        self.own = own
        self._partitions: int | None = None  # of the requests topic, asked once
        self.tally: BreakerTally | None = None  # set when circuit breakers are on
        self.dead_letters = DeadLetters(
            producer, codec, topics, consumer=f"orchestrator {client_id('o')}"
        )

    # -- in ---------------------------------------------------------------------------

    def handle(self, record: Message, now_ms: int) -> None:
        """One input record: to the engine (or the market), and what it causes out."""
        topic = record.topic()
        try:
            if topic == self.topics.market_bids:
                self.market.handle(record, now_ms)
                return
            if topic == self.topics.requests:
                # Avro from our clients, or JSON from any producer (docs/json-requests.md).
                request = self.codec.decode_any(
                    record.value(),
                    (WorkflowSubmitted, WorkflowCancelRequested, BudgetTopUpRequested),
                    record=record,
                    content_type=header(record, CONTENT_TYPE_HEADER),
                    accept_json=True,
                )
                if (home := self._misplaced(record, request.workflow_id)) is not None:
                    self._forward(record, request.workflow_id, home)
                    return
                self.own(request.workflow_id, record)
                structlog.contextvars.bind_contextvars(workflow_id=request.workflow_id)
                if isinstance(request, WorkflowCancelRequested):
                    effects = self.engine.cancel(request, now_ms)
                elif isinstance(request, BudgetTopUpRequested):
                    effects = self.engine.top_up(request, now_ms)
                else:
                    effects = self.engine.submit(request, now_ms)
            elif topic == self.topics.market_outcomes:
                outcome = self.codec.decode(record.value(), MarketOutcome, record=record)
                self.own(outcome.workflow_id, record)
                structlog.contextvars.bind_contextvars(
                    workflow_id=outcome.workflow_id, task_id=outcome.task_id
                )
                effects = self.engine.on_market(outcome, now_ms)
            else:
                result = self.codec.decode(record.value(), TaskResult, record=record)
                self.own(result.workflow_id, record)
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
        self.apply(effects, header(record, TRACEPARENT))

    def _misplaced(self, record: Message, workflow_id: str) -> int | None:
        """The partition a request belongs on when it is not on it (else None).

        A workflow's request, results and state share one partition number: the one its
        id hashes to with murmur2, as our producers and the Java client's default place
        a record keyed by it. A producer with another partitioner (librdkafka's default,
        so kcat and most clients outside Java) or without the key puts a request on
        another partition, whose owner would hold the workflow's state while another
        instance gets its results."""
        partitions = self._request_partitions()
        if partitions is None:
            return None
        home = partition_for(workflow_id, partitions)
        return None if record.partition() == home else home

    def _request_partitions(self) -> int | None:
        if self._partitions is None:
            topic = self.topics.requests
            try:
                found = self.producer.list_topics(topic, timeout=10).topics[topic].partitions
                self._partitions = len(found) or None
            except (KafkaException, KeyError) as exc:
                # Not knowing is no reason to refuse work: handled where it is, as before.
                log.warning("partitions of the requests topic unknown", error=str(exc))
        return self._partitions

    def _forward(self, record: Message, workflow_id: str, home: int) -> None:
        """Put a request onto its workflow's partition (in the same transaction as its
        offset), keyed by the workflow id, and leave it to whoever owns that partition."""
        log.info(
            "request forwarded to its workflow's partition",
            workflow_id=workflow_id,
            partition=record.partition(),
            offset=record.offset(),
            to_partition=home,
        )
        came_from = f"{record.partition()}:{record.offset()}".encode()
        produce(
            self.producer,
            self.topics.requests,
            record.value() or b"",
            key=workflow_id,
            partition=home,
            headers=[
                *((k, v) for k, v in record_headers(record) if v is not None),
                (FORWARDED_FROM, came_from),
            ],
        )

    def _dead_letter(self, record: Message, error: BaseException) -> None:
        self.metrics.dead_letters.labels(record.topic() or "").inc()
        self.dead_letters.send(record, error)

    # -- out --------------------------------------------------------------------------

    def apply(self, effects: Effects, parent: str | None) -> None:
        """Produce ``effects``, traced as children of ``parent`` (the input's trace).

        No delivery callbacks here: a record that failed is the committer's to catch
        (exactly_once: commit_transaction fails; at_least_once: its flush refuses)."""
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
        for cancelled in effects.cancellations:
            # One topic every worker process reads whole (no group): whoever runs the
            # attempt stops it (workers.shell.cancellations).
            produce(
                self.producer,
                self.topics.cancellations,
                self.codec.encode(cancelled),
                key=cancelled.workflow_id,
                headers=headers_for(cancelled, child_of(parent), cancelled.attempt),
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
        if self.tally is not None:
            self.tally.add(effects.finished)
        self.metrics.record(effects, self.engine.in_flight, self.engine.active)
