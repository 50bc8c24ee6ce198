"""The orchestrator's Kafka shell around the pure :class:`~orchestrator.engine.Engine`.

One loop: consume a batch -> feed each record to the engine -> produce the effects ->
wait until they are durable -> commit the batch's offsets. Issue-3 turns the last three
steps into one Kafka transaction; the shape of the loop already fits that.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet.codec import Codec, SchemaStore
from fleet.deadletter import DeadLetters
from fleet.errors import BrokerError, DecodeError, FleetError
from fleet.kafka import (
    TRACEPARENT,
    DeliveryCallback,
    KafkaClients,
    header,
    headers_for,
    produce,
    resolve_bootstrap,
)
from fleet.messages import TaskResult, WorkflowSubmitted
from fleet.metrics import LATENCY_BUCKETS, serve_metrics
from fleet.settings import Settings
from fleet.topology import Topics, Topology, apply_topics, desired_topics
from fleet.tracing import child_of
from orchestrator.engine import Effects, Engine

log = structlog.get_logger()


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dispatched = Counter(
            "fleet_tasks_dispatched", "Task attempts dispatched", ["capability"], registry=registry
        )
        self.completed = Counter(
            "fleet_tasks_completed",
            "Task attempts that succeeded",
            ["capability"],
            registry=registry,
        )
        self.failed = Counter(
            "fleet_tasks_failed", "Task attempts that failed", ["capability"], registry=registry
        )
        self.in_flight = Gauge(
            "fleet_tasks_in_flight", "Dispatched attempts without a result", registry=registry
        )
        self.task_latency = Histogram(
            "fleet_task_latency_seconds",
            "Dispatch to accepted result, per capability",
            ["capability"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.workflow_latency = Histogram(
            "fleet_workflow_latency_seconds",
            "Submission to terminal event",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.workflows_active = Gauge(
            "fleet_workflows_active", "Workflows held in memory", registry=registry
        )
        self.dead_letters = Counter(
            "fleet_dead_letters", "Records sent to dead letters", ["topic"], registry=registry
        )
        self.dropped = Counter(
            "fleet_inputs_dropped", "Duplicate, stale or unknown inputs ignored", registry=registry
        )

    def record(self, effects: Effects, in_flight: int, active: int) -> None:
        for task in effects.tasks:
            self.dispatched.labels(task.capability).inc()
        for done in effects.finished:
            (self.completed if done.succeeded else self.failed).labels(done.capability).inc()
            self.task_latency.labels(done.capability).observe(done.latency_ms / 1000)
        for event in effects.events:
            if event.kind.terminal and event.submitted_at_ms is not None:
                self.workflow_latency.labels(event.kind.value.lower()).observe(
                    max(0, event.at_ms - event.submitted_at_ms) / 1000
                )
        self.dropped.inc(len(effects.dropped))
        self.in_flight.set(in_flight)
        self.workflows_active.set(active)


class CapabilityTopics:
    """Answers "does capability X have a task topic?" from broker metadata.

    Hits are cached (topics are not deleted under a running fleet); a miss asks the
    broker again, so a worker that just created its topic is seen at once.
    """

    def __init__(self, admin: AdminClient, topics: Topics) -> None:
        self.admin = admin
        self.topics = topics
        self.known: set[str] = set()

    def __call__(self, capability: str) -> bool:
        if capability in self.known:
            return True
        name = self.topics.tasks(capability)
        metadata = self.admin.list_topics(topic=name, timeout=10)
        topic = metadata.topics.get(name)
        if topic is not None and topic.error is None:
            self.known.add(capability)
            return True
        return False


@dataclass
class Batch:
    """What one consumed batch produced, and the offsets to commit once it is durable."""

    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    delivery_errors: list[str] = field(default_factory=list)


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        clients: KafkaClients,
        metrics: OrchestratorMetrics,
        batch_size: int = 500,
    ) -> None:
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.metrics = metrics
        self.batch_size = batch_size
        self.admin = clients.admin()
        self.consumer: Consumer = clients.consumer(f"{settings.topic_prefix}orchestrator")
        self.producer: Producer = clients.producer()
        self.engine = Engine(has_capability=CapabilityTopics(self.admin, self.topics))
        self.dead_letters = DeadLetters(
            self.producer, self.codec, self.topics, consumer=f"orchestrator {clients.role}"
        )

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe([self.topics.requests, self.topics.results])
        log.info("orchestrator consuming", topics=[self.topics.requests, self.topics.results])
        try:
            while not stop.is_set():
                records = self.consumer.consume(self.batch_size, timeout=0.2)
                if records:
                    self.process(records)
        finally:
            log.info("orchestrator leaving the group")
            self.consumer.close()
            self.producer.flush(10)

    def process(self, records: Iterable[Message]) -> None:
        batch = Batch()
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error; librdkafka retries", error=str(error))
                continue
            self._handle(record, batch)
            batch.offsets[(record.topic() or "", record.partition() or 0)] = (
                record.offset() or 0
            ) + 1
        self._commit(batch)

    def _handle(self, record: Message, batch: Batch) -> None:
        now_ms = int(time.time() * 1000)
        try:
            if record.topic() == self.topics.requests:
                request = self.codec.decode(record.value(), WorkflowSubmitted, record=record)
                structlog.contextvars.bind_contextvars(workflow_id=request.workflow_id)
                effects = self.engine.submit(request, now_ms)
            else:
                result = self.codec.decode(record.value(), TaskResult, record=record)
                structlog.contextvars.bind_contextvars(
                    workflow_id=result.workflow_id, task_id=result.task_id, attempt=result.attempt
                )
                effects = self.engine.on_result(result, now_ms)
        except DecodeError as exc:
            self._dead_letter(record, exc, batch)
            return
        except Exception as exc:
            log.exception("engine failed on a record; dead-lettering it")
            self._dead_letter(record, exc, batch)
            return
        finally:
            structlog.contextvars.clear_contextvars()
        self._emit(effects, header(record, TRACEPARENT), batch)
        self.metrics.record(effects, self.engine.in_flight, self.engine.active)

    def _dead_letter(self, record: Message, error: BaseException, batch: Batch) -> None:
        self.metrics.dead_letters.labels(record.topic() or "").inc()
        self.dead_letters.send(record, error, on_delivery=self._on_delivery(batch))

    def _emit(self, effects: Effects, parent: str | None, batch: Batch) -> None:
        callback = self._on_delivery(batch)
        for task in effects.tasks:
            produce(
                self.producer,
                self.topics.tasks(task.capability),
                self.codec.encode(task),
                key=task.task_id,
                headers=headers_for(task, child_of(parent), task.attempt),
                on_delivery=callback,
            )
        for event in effects.events:
            produce(
                self.producer,
                self.topics.events,
                self.codec.encode(event),
                key=event.workflow_id,
                headers=headers_for(event, child_of(parent)),
                on_delivery=callback,
            )
            if event.kind.terminal:
                log.info(
                    "workflow finished",
                    workflow_id=event.workflow_id,
                    outcome=event.kind.value,
                    error=event.error.message if event.error else None,
                )
        for reason in effects.dropped:
            log.info("input dropped", reason=reason)

    @staticmethod
    def _on_delivery(batch: Batch) -> DeliveryCallback:
        def callback(err: KafkaError | None, message: Message) -> None:
            if err is not None:
                batch.delivery_errors.append(f"{message.topic()}: {err}")

        return callback

    def _commit(self, batch: Batch) -> None:
        # Everything the batch produced must be durable before its inputs are committed:
        # a crash in between re-reads the inputs (at least once) rather than losing outputs.
        remaining = self.producer.flush(30)
        if remaining or batch.delivery_errors:
            raise BrokerError(
                f"could not deliver the batch's outputs ({remaining} pending, "
                f"errors: {batch.delivery_errors[:3]}); exiting without committing its inputs"
            )
        if batch.offsets:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()],
                asynchronous=False,
            )


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
    clients = KafkaClients(settings, resolve_bootstrap(settings), role="orchestrator")
    admin = clients.ready_admin()
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    for report in apply_topics(admin, topology, desired_topics(topology, topics, [])):
        if report.status == "drift":
            log.warning(
                "topic drift; fix topics.yaml or the topic",
                topic=report.topic,
                detail=report.detail,
            )
    registry = CollectorRegistry()
    serve_metrics(registry, metrics_port, metrics_host)
    orchestrator = Orchestrator(settings, clients, OrchestratorMetrics(registry), batch_size)
    try:
        orchestrator.run(stop)
    except FleetError as exc:
        log.error("orchestrator stopping", error=str(exc))
        return 1
    log.info("orchestrator stopped")
    return 0
