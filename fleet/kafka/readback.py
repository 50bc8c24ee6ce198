"""Reading a topic back to its end: every committed record, none missed at the end.

The end is the high watermark asked read_uncommitted when the read starts. A
read_committed consumer reports the last stable offset instead, which stops short of an
open transaction (a killed orchestrator's stays open until transaction.timeout.ms) *and
of everything committed after it*: a read that ended there would silently drop newer
records (found by the fault runs: a changelog restore that lost state). Reading
read_committed up to the high watermark waits until every such transaction is decided;
aborted records and transaction markers are never delivered, so the consumer's position,
not the last record seen, says when a partition is done.

This is the project's one read-to-end, in three forms (:class:`ReadBack`):

* whole partitions, from their start to their end (:meth:`ReadBack.to_end`,
  :func:`records_to_end`): the dead-letter office, the demo's and the fault runs' read-back;
* a range, offsets ``[start, end)`` of given partitions (:meth:`ReadBack.in_range`): a
  window, such as the market view's look back from the ledger's end in growing windows;
* the latest value per key of a compacted topic, tombstones deleting
  (:meth:`ReadBack.latest`, :func:`latest_per_key`): the changelog restore, the market view.

Each takes a monotonic deadline and raises :class:`ReadIncomplete` when it passes, once
every record read before it has been yielded, so a caller may keep what it has and say so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from fleet.errors import BrokerError
from fleet.kafka.clients import KafkaClients, watermarks

log = structlog.get_logger()


class ReadIncomplete(BrokerError):  # noqa: N818 - reads as what happened
    """The deadline passed before these partitions were read to their end."""

    def __init__(self, topic: str, partitions: Iterable[int]) -> None:
        self.topic = topic
        self.partitions = sorted(partitions)
        super().__init__(f"reading {topic} did not reach the end of partitions {self.partitions}")


@dataclass(frozen=True)
class Latest:
    """A key's last value in a compacted topic, and the partition it sits in."""

    partition: int
    value: bytes


class ReadBack:
    """Reads topics back to an end: a read_committed consumer that reads, a
    read_uncommitted one that asks where the ends are. Reads run one at a time; close it
    (or use it as a context manager) when done.

    ``strict``: a read error librdkafka does not retry ends the read at once with a
    BrokerError (the operator's commands: say why now). Otherwise every read error is
    logged and left to librdkafka, the deadline bounding it (a restore rides out a broker
    restart)."""

    def __init__(self, clients: KafkaClients, name: str = "readback", *, strict: bool = False):
        self.clients = clients
        self.name = name
        self.strict = strict
        self._consumer: Consumer | None = None
        self._probe: Consumer | None = None
        self._reading = False

    def __enter__(self) -> ReadBack:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for consumer in (self._consumer, self._probe):
            if consumer is not None:
                consumer.close()
        self._consumer = self._probe = None

    # -- where the ends are ---------------------------------------------------------------

    def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """A partition's (low, high) offsets, the high watermark open transactions included."""
        if self._probe is None:
            self._probe = self.clients.probe_consumer(f"{self.name}.probe-{uuid.uuid4().hex}")
        return watermarks(self._probe, topic, partition)

    def ends(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """{partition: high watermark} of the non-empty ``partitions``."""
        ends: dict[int, int] = {}
        for p in sorted(set(partitions)):
            low, high = self.bounds(topic, p)
            if high > low:
                ends[p] = high
        return ends

    # -- the three forms ------------------------------------------------------------------

    def to_end(
        self,
        topic: str,
        partitions: Iterable[int],
        deadline: float,
        *,
        idle_s: float | None = None,
    ) -> Iterator[Message]:
        """Every committed record of ``partitions`` from their start to the end they had
        when the read began, in order per partition. Records written since that come in
        the same fetches come too: a read to the end drops nothing it was handed.

        :class:`ReadIncomplete` if the monotonic ``deadline`` passes first. With
        ``idle_s``, each record read moves the deadline to at least ``idle_s`` from now:
        a long read that keeps progressing is not cut short, one that stalls is."""
        ends = self.ends(topic, partitions)
        spans = {p: (OFFSET_BEGINNING, end) for p, end in ends.items()}
        yield from self._read(topic, spans, deadline, idle_s, clip=False)

    def in_range(
        self,
        topic: str,
        ranges: Mapping[int, tuple[int, int]],
        deadline: float,
        *,
        idle_s: float | None = None,
    ) -> Iterator[Message]:
        """The committed records of offsets ``[start, end)`` of each partition, in order
        per partition (a transaction marker or an aborted record in the range is skipped,
        not waited for). Ends and deadline as in :meth:`to_end`; take the ends from
        :meth:`bounds`, never from a read_committed consumer."""
        spans = {p: span for p, span in ranges.items() if span[1] > span[0]}
        yield from self._read(topic, spans, deadline, idle_s, clip=True)

    def latest(
        self,
        topic: str,
        partitions: Iterable[int],
        deadline: float,
        *,
        on_incomplete: Callable[[ReadIncomplete], None] | None = None,
    ) -> dict[bytes, Latest]:
        """A compacted topic as compaction will leave it: {key: its last value} over
        ``partitions`` read to their end; a tombstone (a null value) deletes its key.

        Past the deadline: :class:`ReadIncomplete`, or, given ``on_incomplete``, that is
        called with it and what was read so far is returned."""
        latest: dict[bytes, Latest] = {}
        try:
            for record in self.to_end(topic, partitions, deadline):
                key = record.key()
                if key is None:
                    continue  # a compacted topic refuses records without a key: never here
                value = record.value()
                if value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = Latest(record.partition() or 0, value)
        except ReadIncomplete as exc:
            if on_incomplete is None:
                raise
            on_incomplete(exc)
        return latest

    # -- the read itself ------------------------------------------------------------------

    def _read(
        self,
        topic: str,
        spans: Mapping[int, tuple[int, int]],
        deadline: float,
        idle_s: float | None,
        *,
        clip: bool,
    ) -> Iterator[Message]:
        """Records from ``start`` per partition until each position reaches its ``end``;
        ``clip``: none at or past ``end`` (a range's neighbours are not part of it)."""
        pending = {p: end for p, (_, end) in spans.items()}
        if not pending:
            return
        consumer = self._start(topic, spans)
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise ReadIncomplete(topic, pending)
                for record in consumer.consume(1000, timeout=0.2):
                    error = record.error()
                    if error is not None:
                        self._on_error(topic, error)
                        continue
                    # Only the asked partitions and offsets: a fetch of an earlier
                    # assignment of this consumer may linger.
                    span = spans.get(record.partition() or 0)
                    offset = record.offset() or 0
                    if record.topic() != topic or span is None or offset < span[0]:
                        continue
                    if offset < span[1] or not clip:
                        if idle_s is not None:
                            deadline = max(deadline, time.monotonic() + idle_s)
                        yield record
                for tp in consumer.position(consumer.assignment()):
                    if tp.partition in pending and tp.offset >= pending[tp.partition]:
                        del pending[tp.partition]
        finally:
            self._reading = False
            if self._consumer is consumer:  # not closed under an abandoned read
                consumer.unassign()

    def _start(self, topic: str, spans: Mapping[int, tuple[int, int]]) -> Consumer:
        if self._reading:
            raise RuntimeError("a ReadBack reads one thing at a time; open another")
        if self._consumer is None:
            # read_committed, the product's default; no partition EOF: the position decides.
            self._consumer = self.clients.consumer(f"{self.name}.read-{uuid.uuid4().hex}")
        self._consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in spans.items()])
        self._reading = True
        return self._consumer

    def _on_error(self, topic: str, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return  # the end as read_committed sees it: not ours, the position says
        if self.strict and not error.retriable():
            raise BrokerError(f"reading {topic} failed: {error}")
        log.warning("read error; librdkafka retries", topic=topic, error=str(error))


# -- one-shot reads: a reader of their own, closed when done -------------------------------


def end_offsets(clients: KafkaClients, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """{partition: high watermark} of the non-empty ``partitions``, open transactions
    included."""
    with ReadBack(clients, topic) as reader:
        return reader.ends(topic, partitions)


def records_to_end(
    clients: KafkaClients, topic: str, partitions: Iterable[int], deadline: float
) -> Iterator[Message]:
    """:meth:`ReadBack.to_end` with a reader of its own."""
    with ReadBack(clients, topic) as reader:
        yield from reader.to_end(topic, partitions, deadline)


def latest_per_key(
    clients: KafkaClients, topic: str, partitions: Iterable[int], deadline: float
) -> dict[bytes, Latest]:
    """:meth:`ReadBack.latest` with a reader of its own."""
    with ReadBack(clients, topic) as reader:
        return reader.latest(topic, partitions, deadline)


def partitions_of(clients: KafkaClients, topic: str) -> list[int]:
    """The topic's partition numbers, or a BrokerError saying how to create it."""
    admin = clients.admin()
    topics = admin.list_topics(topic=topic, timeout=30).topics
    if topic not in topics or topics[topic].error is not None:
        raise BrokerError(f"cannot read {topic}: no such topic; run `fleet topics apply`")
    return sorted(topics[topic].partitions)
