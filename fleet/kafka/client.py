"""The user's side of the product: submit workflows and follow their events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

from confluent_kafka import (
    OFFSET_BEGINNING,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import ConsumerGroupDescription
from pydantic import JsonValue

from fleet.codec import Codec, SchemaStore
from fleet.errors import BrokerError, DecodeError
from fleet.kafka.clients import (
    KafkaClients,
    headers_for,
    produce,
    retry_transient,
    watermarks,
)
from fleet.kafka.follow import TopicReader
from fleet.kafka.history import WorkflowLog
from fleet.kafka.topics import CapabilityCheck
from fleet.messages import (
    BudgetTopUpRequested,
    MarketInput,
    MarketInputKind,
    WorkflowCancelRequested,
    WorkflowEvent,
    WorkflowSubmitted,
)
from fleet.settings import Settings
from fleet.topology import Topics
from fleet.tracing import new_traceparent


def new_workflow_id() -> str:
    return f"wf-{uuid.uuid4().hex}"


def new_top_up_id() -> str:
    return f"tu-{uuid.uuid4().hex}"


# Units travel in Avro ints; the market's policy bounds them the same way.
_UNITS_MAX = 2**31 - 1
# Amounts travel in Avro longs; the orchestrator adds a top-up to a limit, so leave room.
_AMOUNT_MAX = 2**62

_Request = WorkflowSubmitted | WorkflowCancelRequested | BudgetTopUpRequested


class FleetClient:
    def __init__(self, settings: Settings, role: str = "client") -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.clients = KafkaClients(settings, settings.require_bootstrap(), role=role)
        self.admin = self.clients.ready_admin()
        self._producer = self.clients.producer()
        self._capabilities = CapabilityCheck(self.admin, self.topics)

    def has_capability(self, capability: str) -> bool:
        return self._capabilities(capability)

    def workflow_log(self) -> WorkflowLog:
        """One workflow's records, read from its partition: follow its events to its end
        (``fleet tail --workflow``), or look up what is known of it."""
        return WorkflowLog(self.clients, self.admin, self.codec, self.topics)

    def wait_for_pools(self, capabilities: Iterable[str], members: int, timeout_s: float) -> None:
        """Block until each capability's worker group is stable with ``members`` members,
        each holding partitions, so that work submitted next is spread from the start."""
        groups = [f"{self.settings.topic_prefix}workers.{cap}" for cap in capabilities]
        self.wait_for_groups(groups, members, timeout_s)

    def wait_for_groups(
        self, groups: Iterable[str], members: int, timeout_s: float
    ) -> dict[str, ConsumerGroupDescription]:
        """Block until each group is stable with ``members`` members holding partitions;
        return their descriptions (members, client ids and assignments)."""
        groups = list(groups)
        deadline = time.monotonic() + timeout_s
        while True:
            pending: dict[str, str] = {}
            stable: dict[str, ConsumerGroupDescription] = {}
            # A short request timeout: on a fresh broker the first answers wait for the
            # group coordinator to load, and the loop should ask again, not hang.
            described = self.admin.describe_consumer_groups(groups, request_timeout=5)
            for group, future in described.items():
                try:
                    description = future.result()
                except KafkaException as exc:
                    pending[group] = str(exc)
                    continue
                holding = [m for m in description.members if m.assignment.topic_partitions]
                if description.state != ConsumerGroupState.STABLE or len(holding) < members:
                    pending[group] = (
                        f"{description.state.name}, {len(holding)} of {members} members "
                        "holding partitions"
                    )
                stable[group] = description
            if not pending:
                return stable
            if time.monotonic() > deadline:
                raise BrokerError(f"consumer groups not ready within {timeout_s:.0f} s: {pending}")
            time.sleep(0.2)

    def submit(self, spec: JsonValue, workflow_id: str | None = None, *, flush: bool = True) -> str:
        """Produce one WorkflowSubmitted; the caller validates the spec (or it is rejected)."""
        workflow_id = workflow_id or new_workflow_id()
        request = WorkflowSubmitted(
            workflow_id=workflow_id,
            spec=spec,
            submitted_at_ms=int(time.time() * 1000),
            submitted_by=self.clients.role,
        )
        self._request(request, flush=flush)
        return workflow_id

    def cancel(self, workflow_id: str, reason: str = "") -> None:
        """Ask the orchestrator owning ``workflow_id`` to cancel it.

        Keyed by workflow_id onto the requests topic, like the submission: same partition,
        so the owner sees the two in order. Returns once Kafka has the request.
        """
        request = WorkflowCancelRequested(
            workflow_id=workflow_id,
            reason=reason,
            requested_by=self.clients.role,
            requested_at_ms=int(time.time() * 1000),
        )
        self._request(request, flush=True)

    def top_up(self, workflow_id: str, amount_micro: int, top_up_id: str | None = None) -> str:
        """Raise a running workflow's budget by ``amount_micro``; return the top-up id.

        The owner applies a top-up once per id, so sending the same id again (a retry after
        an unclear failure) raises the budget only once; reuse an id only with the same
        amount. A top-up of a workflow that has ended or has no budget changes nothing.
        Keyed by workflow id like the submission, so the owner sees the two in order.
        """
        if not workflow_id:
            raise ValueError("a top-up needs a workflow id")
        if type(amount_micro) is not int or not 0 < amount_micro <= _AMOUNT_MAX:
            raise ValueError(
                f"a top-up is a whole number of micro-credits above 0, got {amount_micro!r}"
            )
        top_up_id = top_up_id or new_top_up_id()
        request = BudgetTopUpRequested(
            workflow_id=workflow_id,
            top_up_id=top_up_id,
            amount=amount_micro,
            requested_by=self.clients.role,
            requested_at_ms=int(time.time() * 1000),
        )
        self._request(request, flush=True)
        return top_up_id

    def set_capacity(self, pool: str, units: int) -> None:
        """Change a pool's capacity at its auctioneer's next round; live leases keep
        their units (below them, no new lease is granted until enough are released)."""
        if type(units) is not int or not 0 <= units <= _UNITS_MAX:
            raise ValueError(f"capacity is a whole number of units >= 0, got {units!r}")
        self._market(
            MarketInput(
                kind=MarketInputKind.CAPACITY,
                resource=pool,
                capacity=units,
                at_ms=int(time.time() * 1000),
            )
        )

    def revoke(self, pool: str, lease_id: str | None = None) -> None:
        """The kill switch: end one lease on ``pool`` (every lease if ``lease_id`` is None).

        The units are free at once (a later round may grant them again, with larger
        tokens) and the holders' attempts fail with LeaseEnded, retried as their steps
        allow. A worker already running one is not stopped: the resource's token check
        refuses the revoked token once a newer lease on its units has been used.
        """
        self._market(
            MarketInput(
                kind=MarketInputKind.REVOKE,
                resource=pool,
                bid_id=lease_id or None,  # the lease id is the bid id; none: every lease
                at_ms=int(time.time() * 1000),
            )
        )

    def _market(self, message: MarketInput) -> None:
        """Produce onto market.bids keyed by pool: the partition of the pool's auctioneer,
        in order with the bids and releases the orchestrators send it."""
        if not message.resource:
            raise ValueError("a market input needs a pool name")
        errors: list[str] = []
        produce(
            self._producer,
            self.topics.market_bids,
            self.codec.encode(message),
            key=message.resource,
            headers=headers_for(message, new_traceparent()),
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
        self.flush()
        if errors:
            raise BrokerError(
                f"{message.kind.value} for pool {message.resource} was not accepted by "
                f"Kafka: {errors[0]}"
            )

    def _request(self, request: _Request, flush: bool) -> None:
        """Produce onto the requests topic, keyed by workflow id (the owner's partition).

        A delivery failure reported by the time of the flush raises; unflushed requests
        report theirs at the caller's flush."""
        errors: list[str] = []
        produce(
            self._producer,
            self.topics.requests,
            self.codec.encode(request),
            key=request.workflow_id,
            headers=headers_for(request, new_traceparent()),
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
        if flush:
            self.flush()
        if errors:
            raise BrokerError(
                f"{type(request).__name__} for {request.workflow_id} was not accepted by "
                f"Kafka: {errors[0]}"
            )

    def flush(self, timeout_s: float = 30) -> None:
        """Wait for every request to be delivered; on a timeout, raise and start over.

        Starting over means a fresh producer: a long-lived one has been seen to stop
        delivering after a broker restart while fresh ones worked (fault run seed 4001).
        The undelivered requests are dropped with the old producer; the caller learns
        it from the error and resubmits, which is safe (submission is idempotent by
        workflow id, so a late delivery of the old copy is harmless).
        """
        if self._producer.flush(timeout_s):
            old, self._producer = self._producer, self.clients.producer()
            old.purge()
            old.flush(0)
            raise BrokerError(f"workflow requests not delivered within {timeout_s:.0f} s")

    def event_consumer(self, from_beginning: bool, since_ms: int | None = None) -> TopicReader:
        """A group-less reader of every partition of the events topic, from its end (or
        its beginning, or the first event at or after ``since_ms``).

        Starting offsets are read explicitly (not OFFSET_END, which librdkafka resolves
        lazily) so nothing produced after this call returns can be missed. The reader
        reopens itself if librdkafka stops fetching (see fleet.kafka.follow).
        """
        name = self.topics.events
        group = f"fleet-reader-{uuid.uuid4().hex}"
        probe = self.clients.consumer(group)
        try:
            partitions = sorted(
                self.admin.list_topics(topic=name, timeout=10).topics[name].partitions
            )
            ends = {p: watermarks(probe, name, p)[1] for p in partitions}
            starts = {p: OFFSET_BEGINNING if from_beginning else ends[p] for p in partitions}
            if since_ms is not None:
                asked = [TopicPartition(name, p, since_ms) for p in partitions]
                found = retry_transient(lambda: probe.offsets_for_times(asked, timeout=10))
                # No event at or after since_ms in a partition: start at its end.
                starts = {
                    tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition]
                    for tp in found
                }
        except (KafkaException, KeyError) as exc:
            raise BrokerError(f"cannot read {name}: {exc}; run `fleet topics apply`") from exc
        finally:
            probe.close()
        return TopicReader(lambda: self.clients.consumer(group), self.clients.admin, name, starts)

    def events(
        self,
        consumer: TopicReader,
        *,
        until: Callable[[WorkflowEvent], bool] = lambda _e: False,
        timeout_s: float | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> Iterator[WorkflowEvent]:
        """Yield decoded events until ``until`` says stop or the timeout passes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            records = consumer.consume(500, timeout=0.2)
            if not records and on_idle is not None:
                on_idle()
            for record in records:
                error = record.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading events failed: {error}")
                    continue
                try:
                    event = self.codec.decode(record.value(), WorkflowEvent, record=record)
                except DecodeError:
                    continue  # not ours to dead-letter: readers of events only skip
                yield event
                if until(event):
                    return

    def outcome(
        self,
        workflow_id: str,
        *,
        since_ms: int,
        timeout_s: float,
        on_waiting: Callable[[str], None] | None = None,
    ) -> WorkflowEvent | None:
        """``workflow_id``'s terminal event, read from its own partition of the events
        from ``since_ms`` on (None: not within ``timeout_s``).

        Made for "send, then wait": pass a time from before the send, and nothing is
        missed however the send and the read interleave. The events topic may not exist
        yet (``fleet submit --wait`` right after ``fleet orchestrator &``, which creates
        it): until it does, ``on_waiting`` hears why once, and the wait goes on.
        """
        deadline = time.monotonic() + timeout_s
        log = self.workflow_log()
        told = False
        while (left := deadline - time.monotonic()) > 0:
            try:
                log.partition(self.topics.events, workflow_id)
            except BrokerError as exc:
                if on_waiting is not None and not told:
                    on_waiting(f"{exc}; waiting")
                    told = True
                time.sleep(min(0.5, left))
                continue
            events = log.follow(workflow_id, since_ms=since_ms, timeout_s=left)
            with closing(events):
                return next((event for event in events if event.kind.terminal), None)
        return None

    def wait(
        self, consumer: TopicReader, workflow_ids: Iterable[str], timeout_s: float
    ) -> dict[str, WorkflowEvent]:
        """Terminal events of the given workflows (those that ended within the timeout)."""
        pending = set(workflow_ids)
        outcomes: dict[str, WorkflowEvent] = {}
        for event in self.events(consumer, until=lambda _e: not pending, timeout_s=timeout_s):
            if event.kind.terminal and event.workflow_id in pending:
                pending.discard(event.workflow_id)
                outcomes[event.workflow_id] = event
        return outcomes

    def close(self) -> None:
        """Deliver what is pending, then let go of the producer and the admin client (an
        admin client has no close(); the last reference dropped destroys it), so neither
        outlives this client into the interpreter's exit, where librdkafka's destroy can
        hang once the broker is gone. A second close does nothing."""
        producer = self.__dict__.pop("_producer", None)
        if producer is not None:
            producer.flush(10)
        self.__dict__.pop("_capabilities", None)
        self.__dict__.pop("admin", None)
