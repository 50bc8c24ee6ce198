"""Kafka client factory and the small pieces of plumbing every process shares.

librdkafka dicts stop here: the rest of the code asks for a producer, a consumer or an
admin client by purpose and gets one configured for it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from fleet.codec import CONTENT_TYPE
from fleet.errors import BrokerError, FleetError
from fleet.messages import Message as FleetMessage
from fleet.settings import Settings

log = structlog.get_logger()

Headers = list[tuple[str, bytes]]
DeliveryCallback = Callable[[KafkaError | None, Message], None]

TRACEPARENT = "traceparent"
ATTEMPT = "fleet-attempt"
# The encoding of a record's value, with the schema it was written with as a parameter:
# application/vnd.apache.avro+binary from our clients; application/json from any producer
# on the requests topic (fleet.json_codec).
CONTENT_TYPE_HEADER = "content-type"


def client_id(role: str) -> str:
    return f"fleet-{role}-{socket.gethostname()}-{os.getpid()}"


class KafkaClients:
    """Builds clients for one bootstrap address with the product's defaults."""

    def __init__(self, settings: Settings, bootstrap: str, role: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.role = role

    def _base(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": client_id(self.role),
            "socket.nagle.disable": True,
            "error_cb": _log_client_error,
            "logger": _LIBRDKAFKA_LOG,
            # librdkafka's default "rebootstrap" decommissions every known broker once all
            # are down (one broker restarting is enough); a decommissioned broker left as
            # cached group coordinator makes send_offsets_to_transaction() hang past its
            # own timeout (librdkafka#5511, open in 2.16; reproduced here with a single
            # broker restart). "none" keeps the brokers and reconnects to them.
            "metadata.recovery.strategy": "none",
            **self.settings.client_config,
        }

    def producer(self, **overrides: Any) -> Producer:
        config = {
            **self._base(),
            # Idempotence: librdkafka's own retries never duplicate or reorder a record.
            "enable.idempotence": True,
            "acks": "all",
            # 1 ms: each record that is not flushed waits up to the linger (a worker's
            # result, a submission), and 5 ms of it showed in every hop of a lone workflow.
            # Under load batches still grow while requests are in flight; 0 would send
            # a request per record whenever one is free.
            "linger.ms": 1,
            "compression.type": "lz4",
            # The Java clients' partitioner: a workflow's requests, results and state land
            # on the same partition number whichever client produced them.
            "partitioner": "murmur2_random",
            **overrides,
        }
        return Producer(config)

    def consumer(self, group_id: str, **overrides: Any) -> Consumer:
        config = {
            **self._base(),
            "group.id": group_id,
            # Offsets are committed by the code, only after the effect of a record is durable.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Only ever see committed transactional output (orchestrator writes in transactions).
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            **overrides,
        }
        return Consumer(config)

    # Purpose-named clients: each librdkafka override the product needs lives here, with
    # the reason for it, instead of in the module that uses it.

    def transactional_producer(self, transactional_id: str) -> Producer:
        """A producer for read-process-write transactions (the orchestrator, the redrive)."""
        return self.producer(
            **{
                "transactional.id": transactional_id,
                # A transaction begun right after a commit is refused with
                # CONCURRENT_TRANSACTIONS until the coordinator has written the last one's
                # markers (a few ms), and retried after this backoff: librdkafka's 100 ms
                # stalled each commit, and 20 ms still stalled most transactions at light
                # load, when every record is a transaction of its own. The price is a
                # few more retried requests while the markers are written.
                "retry.backoff.ms": 2,
                # transaction.timeout.ms stays at librdkafka's 60 s on purpose: a killed
                # instance's open transaction holds read_committed readers (and the next
                # owner's restore) that long at most, but with 10 s an orchestrator paused
                # past it (SIGSTOP 12 s) left a transaction hanging for minutes on Kafka 4.4
                # with librdkafka 2.16 (fault runs). FLEET_KAFKA_CLIENT_TRANSACTION_TIMEOUT_MS
                # still sets it.
            }
        )

    def reporting_producer(self, on_delivery: DeliveryCallback) -> Producer:
        """A producer that reports every failed delivery to ``on_delivery`` (and only the
        failures): for at-least-once output, whose offsets must not pass a lost record."""
        return self.producer(
            **{
                "on_delivery": on_delivery,
                "delivery.report.only.error": True,
                "retry.backoff.ms": 20,
            }
        )

    def co_partitioned_consumer(self, group_id: str, instance_id: str | None = None) -> Consumer:
        """A group member that owns the same partition numbers of every topic it reads;
        with ``instance_id``, a static member (KIP-345): its replacement under the same id
        gets its partitions back without a rebalance, and the group waits for it up to
        the session timeout instead of moving them at once."""
        # Range gives a member the same partition numbers of every co-partitioned topic
        # (cooperative-sticky does not), so requests[p], results[p] and state[p] always
        # have one owner.
        config: dict[str, str | int | bool] = {"partition.assignment.strategy": "range"}
        if instance_id is not None:
            config["group.instance.id"] = instance_id
        return self.consumer(group_id, **config)

    def task_consumer(self, group_id: str) -> Consumer:
        """A worker pool member with a small local fetch queue: with a backlog, librdkafka
        would otherwise prefetch up to 64 MiB per consumer, and memory must follow
        in-flight work, not topic size."""
        return self.consumer(
            group_id, **{"queued.max.messages.kbytes": 2048, "queued.min.messages": 1000}
        )

    def probe_consumer(self, name: str) -> Consumer:
        """A consumer only asked for watermarks. read_uncommitted: a read_committed one
        reports the last stable offset, short of an open transaction and of everything
        committed after it."""
        return self.consumer(name, **{"isolation.level": "read_uncommitted"})

    def scan_consumer(self, name: str) -> Consumer:
        """A read_committed consumer that reads assigned partitions to an end: it reports
        partition EOF, and a short fetch wait learns of the end one empty fetch sooner."""
        return self.consumer(name, **{"enable.partition.eof": True, "fetch.wait.max.ms": 50})

    def admin(self) -> AdminClient:
        # librdkafka's default recovery here, not "none" (see _base): an admin client
        # with a ListOffsets pending while every broker is down spun at 60 % of a core
        # under "none" (0 % under the default; measured on librdkafka 2.16, which the
        # readers' stall checks hit on every broker restart). With one per reader in
        # every worker and orchestrator, a 2-core machine starved the broker of CPU and
        # its restart took 60-180 s instead of about 25. The hang "none" avoids is a
        # group coordinator's (send_offsets_to_transaction); admin clients have none.
        rebootstrap = {"metadata.recovery.strategy": "rebootstrap"}
        return AdminClient({**self._base(), **rebootstrap, **self.settings.client_config})

    def ready_admin(self) -> AdminClient:
        """An admin client, once the cluster answers (within the connect timeout)."""
        admin = self.admin()
        wait_for_broker(admin, self.settings.connect_timeout_s, where=self.bootstrap)
        return admin


# librdkafka lines about a passing condition that it retries by itself: debug, not a
# warning. Every demo printed "GETPID ... Failed to acquire idempotence PID ...: Broker:
# Coordinator load in progress: retrying" while a fresh broker loaded its coordinator
# state; the producer gets its id a moment later, and nothing is lost meanwhile.
_RETRIED_BY_LIBRDKAFKA = ("Coordinator load in progress",)


class _ToStructlog(logging.Handler):
    """librdkafka's own log lines, as structured log events instead of raw stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        level = record.levelno
        if any(passing in message for passing in _RETRIED_BY_LIBRDKAFKA):
            level = min(level, logging.DEBUG)
        log.log(level, message, source="librdkafka")


_LIBRDKAFKA_LOG = logging.getLogger("fleet.librdkafka")
_LIBRDKAFKA_LOG.addHandler(_ToStructlog())
_LIBRDKAFKA_LOG.propagate = False


def _log_client_error(err: KafkaError) -> None:
    if err.fatal():
        log.error("kafka client fatal error; the process must restart", error=str(err))
    elif err.code() == KafkaError.COORDINATOR_LOAD_IN_PROGRESS:
        log.debug("kafka coordinator still loading; librdkafka retries", error=str(err))
    else:
        # librdkafka retries transient errors itself; this says what it is doing.
        log.warning("kafka client error; librdkafka retries", error=str(err))


def wait_for_broker(admin: AdminClient, timeout_s: float = 30.0, where: str = "") -> None:
    """Block until the cluster answers a metadata request, retrying with backoff."""

    # Retrying(...)(call), not a decorated closure: tenacity's wrapper refers to itself, so
    # a closure's client would live on in a reference cycle until a garbage collection,
    # and librdkafka's destroy of a client collected after its broker stopped never
    # returns (the demo hung at exit that way).
    retrying = Retrying(
        retry=retry_if_exception_type(KafkaException),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        stop=stop_after_delay(timeout_s),
        before_sleep=lambda state: log.info(
            "broker not answering yet; retrying", attempt=state.attempt_number, where=where
        ),
    )
    try:
        retrying(admin.list_topics, timeout=min(5.0, timeout_s))
    except RetryError as exc:
        raise BrokerError(
            f"Kafka {where or 'cluster'} did not answer within {timeout_s:g} s "
            f"({exc.last_attempt.exception()}); check KAFKA_BOOTSTRAP_SERVERS or "
            "`fleet kafka status`"
        ) from exc


T = TypeVar("T")


# Errors that pass on their own (leader elections, a topic still propagating). librdkafka
# does not always set retriable() on errors it returns from synchronous calls.
_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, FleetError) and exc.__cause__ is not None:
        exc = exc.__cause__  # a BrokerError that wraps a client error: judge that error
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    return bool(error.retriable()) or error.code() in _TRANSIENT


def retry_transient(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Run a client call, retrying errors Kafka marks retriable (no leader yet, and so on)."""
    retrying = Retrying(  # not a decorated closure: see wait_for_broker
        retry=retry_if_exception(_retriable),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(timeout_s),
        reraise=True,
    )
    return retrying(call)


def watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """A partition's (low, high) offsets, fresh from the broker, transient errors retried."""

    def ask() -> tuple[int, int]:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10, cached=False
        )
        return int(low), int(high)

    return retry_transient(ask)


def headers_for(
    message: FleetMessage, traceparent: str | None, attempt: int | None = None
) -> Headers:
    headers: Headers = [
        (CONTENT_TYPE_HEADER, f"{CONTENT_TYPE}; schema={message.schema_name}".encode())
    ]
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    if attempt is not None:
        headers.append((ATTEMPT, str(attempt).encode()))
    return headers


def record_headers(record: Message) -> list[tuple[str, bytes | None]]:
    """A consumed record's headers as (name, bytes) pairs, whatever form the client gives."""
    raw = record.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def header(record: Message, name: str) -> str | None:
    for key, value in record_headers(record):
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


def _serve_callbacks(producer: Producer) -> None:
    producer.poll(0.1)


def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    *,
    key: str | bytes | None,
    headers: Sequence[tuple[str, bytes]] = (),
    on_delivery: DeliveryCallback | None = None,
    attempts: int = 50,
    partition: int = -1,
) -> None:
    """Enqueue one record; when the local queue is full, serve callbacks and try again.

    ``partition`` -1 (librdkafka's unassigned): the partitioner picks it from the key."""
    try:
        # The common case, kept off tenacity's machinery (a hot path: every record).
        producer.produce(
            topic,
            value=value,
            key=key,
            partition=partition,
            headers=list(headers),
            on_delivery=on_delivery,
        )
        return
    except BufferError:
        pass

    retrying = Retrying(  # not a decorated closure: see wait_for_broker
        retry=retry_if_exception_type(BufferError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.01, max=0.5),
        before_sleep=lambda _: _serve_callbacks(producer),
        reraise=True,
    )
    try:
        retrying(
            producer.produce,
            topic,
            value=value,
            key=key,
            partition=partition,
            headers=list(headers),
            on_delivery=on_delivery,
        )
    except BufferError as exc:
        raise BrokerError(
            f"producer queue to {topic} stayed full after {attempts} tries; is the broker down?"
        ) from exc
