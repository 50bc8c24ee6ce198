"""A long-lived, group-less reader of every partition of one topic (``fleet tail``, waits).

Why not a bare ``assign()``ed consumer: after a broker restart librdkafka can leave one
idle for good with committed records ahead of it, while a fresh consumer reads them fine
(librdkafka#5153, open). Our fault runs met it twice in long-lived clients. So the reader
watches itself: a partition whose position stays behind the last stable offset, without
moving, for ``stall_s``, while the application polls and gets nothing (so nothing is
queued locally for a slow application to drain), means the client stopped fetching. The
reader then reopens a fresh consumer at its positions. Nothing is skipped or repeated,
since the positions carry over.

Why the last stable offset is the right mark: a read_committed consumer's position
passes aborted records and transaction markers too (checked on a real broker), so an
idle healthy reader sits exactly at it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ListOffsetsResultInfo, OffsetSpec

log = structlog.get_logger()

# Checks in a row without an answer (none, or an error) before the admin client is
# replaced: long enough for a broker restart to pass, short next to stall_s.
ADMIN_PATIENCE = 4


class TopicReader:
    """Reads ``topic`` from the given start offsets; ``consume`` is Consumer.consume."""

    def __init__(
        self,
        open_consumer: Callable[[], Consumer],
        open_admin: Callable[[], AdminClient],
        topic: str,
        starts: Mapping[int, int],
        *,
        stall_s: float = 20.0,
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.stall_s = stall_s
        self.check_every_s = check_every_s
        self.reopens = 0
        self._open = open_consumer
        self._open_admin = open_admin
        self._admin = open_admin()
        self._unanswered = 0  # checks in a row without a usable answer from the admin
        self.admin_reopens = 0
        self._clock = clock
        # Next offset to read per partition; OFFSET_BEGINNING until the first fetch.
        self._positions = dict(starts)
        self._stuck_since: dict[int, tuple[int, float]] = {}  # partition -> (position, since)
        self._next_check = clock() + check_every_s
        self._last_idle = float("-inf")  # the last poll that returned nothing
        self._asked: dict[TopicPartition, Future[ListOffsetsResultInfo]] | None = None
        self._consumer = self._assigned(open_consumer())

    def _assigned(self, consumer: Consumer) -> Consumer:
        consumer.assign(
            [TopicPartition(self.topic, p, offset) for p, offset in self._positions.items()]
        )
        return consumer

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        records = self._consumer.consume(num_messages, timeout=timeout)
        now = self._clock()
        if not records:
            self._last_idle = now
        if now >= self._next_check:
            self._next_check = now + self.check_every_s
            self._check(now)
        return records

    def _check(self, now: float) -> None:
        """Judge the last stable offsets asked for at the previous check, then ask again.

        The admin client asks on its own connection and in the background: a
        ListOffsets on the consumer's connection would queue behind its long-poll
        fetch (the broker answers one request per connection at a time)."""
        tps = [TopicPartition(self.topic, p) for p in self._positions]
        for tp in self._consumer.position(tps):
            if tp.offset >= 0:  # negative: nothing fetched yet, keep the start offset
                self._positions[tp.partition] = tp.offset
        asked, self._asked = self._asked, None
        if asked is not None and all(f.done() for f in asked.values()):
            answered = self._judge(asked, now)
        elif asked is not None and self._unanswered < ADMIN_PATIENCE:
            self._unanswered += 1
            self._asked = asked  # the broker has not answered yet: judge it next time
            return
        else:
            answered = asked is None
        self._unanswered = 0 if answered else self._unanswered + 1
        if self._unanswered >= ADMIN_PATIENCE:
            # The admin client is as long-lived as the consumer and can be stuck the same
            # way after a broker restart (fault run seed 6005: no answer for minutes, so
            # no stall was ever judged). A fresh one asks on fresh connections.
            log.warning("reader's admin client stopped answering; replacing it", topic=self.topic)
            self._admin = self._open_admin()
            self._unanswered = 0
            self.admin_reopens += 1
        self._asked = self._admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in tps},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_COMMITTED,  # latest = last stable offset
            request_timeout=self._request_timeout_s,
        )

    @property
    def _request_timeout_s(self) -> float:
        return max(1.0, self.check_every_s)

    def _judge(
        self, asked: Mapping[TopicPartition, Future[ListOffsetsResultInfo]], now: float
    ) -> bool:
        """Judge the answer; False if there was none to judge (the broker away)."""
        stalled = []
        for tp, future in asked.items():
            try:
                stable = future.result().offset
            except KafkaException:
                return False  # nothing to judge; librdkafka reconnects, or see _check
            position = self._positions[tp.partition]
            if position == OFFSET_BEGINNING:
                # No record delivered yet: behind if the log holds any (the log start,
                # known once a fetch answered, is where the beginning is).
                low, _high = self._consumer.get_watermark_offsets(tp, cached=True)
                position = max(low, 0)
            behind = position < stable
            seen = self._stuck_since.get(tp.partition)
            if not behind:
                self._stuck_since.pop(tp.partition, None)
            elif seen is None or seen[0] != position:
                self._stuck_since[tp.partition] = (position, now)  # behind, but it moved
            elif now - seen[1] >= self.stall_s and self._last_idle > seen[1]:
                stalled.append(tp.partition)
        if stalled:
            self._reopen(stalled)
        return True

    def _reopen(self, stalled: list[int]) -> None:
        log.warning(
            "reader stopped fetching with records ahead; reopening at its positions",
            topic=self.topic,
            partitions=stalled,
            positions={p: self._positions[p] for p in stalled},
        )
        old, self._consumer = self._consumer, self._assigned(self._open())
        self._stuck_since.clear()
        self.reopens += 1
        old.close()

    def position(self, partition: int) -> int:
        """The next offset of ``partition`` to read, asked of the consumer now (negative:
        nothing fetched yet). A read_committed position passes transaction markers and
        aborted records, so a reader that has read everything there is stands at the end."""
        (tp,) = self._consumer.position([TopicPartition(self.topic, partition)])
        return int(tp.offset)

    def positions(self) -> dict[int, int]:
        """Next offset per partition, as of the last check (OFFSET_BEGINNING: none yet)."""
        return dict(self._positions)

    def close(self) -> None:
        """Close the consumer and let go of the background admin client (it has no
        close(); the last reference dropped destroys it), so it does not outlive the
        reader into the interpreter's exit, where librdkafka's destroy can hang once the
        broker is gone."""
        self._consumer.close()
        asked, self._asked = self._asked, None  # the offsets it may still owe an answer for
        if asked is not None:
            # Destroying an admin client with a request in flight can abort the process
            # in librdkafka (rd_kafka_enq_once_del_source_return: eonce->refcnt > 0, seen
            # once in the benchmark); each request ends by its request timeout at most.
            wait(list(asked.values()), timeout=self._request_timeout_s + 1.0)
        self.__dict__.pop("_admin", None)
