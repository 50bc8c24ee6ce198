"""The dead-letter office: reads the dead-letter topic and its redrive markers, and
redrives dead letters onto their source in transactions, each once.

Every read goes to the end the topic had when it began (fleet.kafka.readback: the high
watermark asked read_uncommitted, read read_committed), so a dead letter committed after
a transaction still open is listed and redriven once that transaction is decided, not
silently missed as a read that stopped at the last stable offset would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from confluent_kafka import Message, Producer

from fleet.codec import Codec, SchemaStore
from fleet.errors import BrokerError, ConfigError, DecodeError
from fleet.kafka import KafkaClients, record_headers
from fleet.kafka.readback import ReadBack
from fleet.messages import DeadLetter
from fleet.settings import Settings
from fleet.topology import Topics
from fleetctl.dlq.display import printable
from fleetctl.dlq.letters import REDRIVEN, Entry, Headers, LetterFilter, LetterId, Marker
from fleetctl.dlq.redrive import RedriveReport, commit_batch, refusal, transact


class DeadLetterOffice:
    """Reads the dead-letter topic and its redrive markers; redrives in transactions.

    ``read_timeout_s`` bounds a read without progress: a long topic read steadily is
    never cut short, one held back (by a transaction left open) fails after that long."""

    def __init__(self, settings: Settings, role: str = "dlq", read_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.markers_topic = settings.topic_prefix + REDRIVEN
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.clients = KafkaClients(settings, settings.require_bootstrap(), role=role)
        self.admin = self.clients.ready_admin()
        self.read_timeout_s = read_timeout_s

    @property
    def transactional_id(self) -> str:
        # Fixed on purpose: a new run fences any earlier one and aborts what it left open.
        return f"{self.settings.topic_prefix}dlq-redrive"

    def partition_count(self, topic: str) -> int | None:
        metadata = self.admin.list_topics(topic=topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        return len(metadata.partitions)

    def entries(self) -> Iterator[Entry]:
        """Every dead letter, up to the end the topic had on entry (never follows)."""
        topic = self.topics.dead_letters
        count = self.partition_count(topic)
        if count is None:
            raise BrokerError(f"topic {topic} does not exist; run `fleet topics apply`")
        for record in self._read(topic, count):
            yield self._entry(record)

    def markers(self) -> dict[str, Marker]:
        """Committed redrive markers by dead-letter ID (none if the topic is missing)."""
        count = self.partition_count(self.markers_topic)
        if count is None:
            return {}
        done: dict[str, Marker] = {}
        # Every record, not the compacted view: a marker without a value still says "done".
        for record in self._read(self.markers_topic, count):
            key = printable(record.key()) or ""
            done[key] = Marker.decode(key, record.value())
        return done

    def get(self, letter_id: LetterId) -> tuple[Entry, Headers] | None:
        """One dead letter and the headers of its dead-letter record, if it exists."""
        topic = self.topics.dead_letters
        if letter_id.partition >= (self.partition_count(topic) or 0):
            return None
        with self._reader() as reader:
            low, high = reader.bounds(topic, letter_id.partition)
            if not low <= letter_id.offset < high:
                return None
            span = {letter_id.partition: (letter_id.offset, letter_id.offset + 1)}
            deadline, idle_s = self._patience()
            records = list(reader.in_range(topic, span, deadline, idle_s=idle_s))
        for record in records:
            return self._entry(record), record_headers(record)
        return None  # a transaction marker or an aborted record

    def redrive(
        self, flt: LetterFilter, *, dry_run: bool = False, batch: int = 100
    ) -> RedriveReport:
        report = RedriveReport(dry_run=dry_run)
        producer = None
        if not dry_run:
            if self.partition_count(self.markers_topic) is None:
                raise ConfigError(
                    f"topic {self.markers_topic} does not exist; run `fleet topics apply`"
                )
            producer = self.clients.transactional_producer(self.transactional_id)
            # Before reading markers: completes or aborts an earlier run's open transaction.
            transact(producer.init_transactions, 60)
        done = self.markers()
        partitions: dict[str, int | None] = {}
        pending: list[Entry] = []
        for entry in self.entries():
            if not flt.matches(entry):
                continue
            marker = done.get(str(entry.id))
            if marker is not None and marker.covers(entry):
                report.already.append(entry)
                continue
            source = entry.letter.source_topic if entry.letter else ""
            if source not in partitions:
                partitions[source] = self.partition_count(source) if source else None
            reason = refusal(entry, partitions[source], self.topics.dead_letters)
            if reason is not None:
                report.refused.append((entry, reason))
                continue
            pending.append(entry)
            if len(pending) >= batch and producer is not None:
                self._commit(producer, pending, partitions)
                report.redriven.extend(pending)
                pending = []
        if producer is not None and pending:
            self._commit(producer, pending, partitions)
        report.redriven.extend(pending)
        return report

    # -- internals --------------------------------------------------------------------

    def _commit(
        self, producer: Producer, entries: list[Entry], partitions: Mapping[str, int | None]
    ) -> None:
        commit_batch(
            producer, entries, partitions, markers_topic=self.markers_topic, by=self.clients.role
        )

    def _entry(self, record: Message) -> Entry:
        letter_id = LetterId(record.partition() or 0, record.offset() or 0)
        try:
            letter = self.codec.decode(record.value(), DeadLetter, record=record)
        except DecodeError as exc:
            return Entry(letter_id, None, exc.reason)
        return Entry(letter_id, letter)

    def _reader(self) -> ReadBack:
        # read_committed: aborted dead letters and redrives do not count. Strict: a read
        # error librdkafka does not retry is the operator's to see now.
        return ReadBack(self.clients, "fleet-dlq-reader", strict=True)

    def _patience(self) -> tuple[float, float]:
        """(deadline, idle_s): ``read_timeout_s`` without progress, however long the read."""
        return time.monotonic() + self.read_timeout_s, self.read_timeout_s

    def _read(self, topic: str, partitions: int) -> Iterator[Message]:
        deadline, idle_s = self._patience()
        with self._reader() as reader:
            yield from reader.to_end(topic, range(partitions), deadline, idle_s=idle_s)
