"""Dead letters you can act on: list them, show one, and redrive them onto their source, once.

A dead letter's ID is ``<dead-letter partition>:<offset>``: stable and unique for the
life of the topic. Redrive is exactly-once per ID: the re-injected records and a marker
per ID (in the compacted ``dead.letters.redriven`` topic) are written in one Kafka
transaction, and a run reads the markers only after ``init_transactions`` under a fixed
transactional id, which aborts whatever a crashed or concurrent earlier run left open.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

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

from fleet.codec import SINGLE_OBJECT_MAGIC, Codec, SchemaStore
from fleet.errors import BrokerError, ConfigError, DecodeError
from fleet.kafka import KafkaClients, record_headers, retry_transient, watermarks
from fleet.messages import DeadLetter
from fleet.messages import Message as FleetMessage
from fleet.settings import Settings
from fleet.topology import Topics

log = structlog.get_logger()

REDRIVEN = "dead.letters.redriven"
REDRIVEN_FROM = "fleet-redriven-from"
# Headers the dead-letter writer adds: they describe the failure, not the record.
_DROPPED_HEADERS = ("fleet-error", "fleet-source-", REDRIVEN_FROM)
# Every bundled message class (all are defined in fleet.messages, imported above).
KNOWN_MESSAGES: tuple[type[FleetMessage], ...] = tuple(FleetMessage.__subclasses__())
_ID_RE = re.compile(r"^(\d+):(\d+)$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Headers = list[tuple[str, bytes | None]]


# -- pure parts ------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class LetterId:
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


def parse_id(text: str) -> LetterId:
    match = _ID_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a dead-letter ID (PARTITION:OFFSET, e.g. 0:42)")
    return LetterId(int(match[1]), int(match[2]))


def parse_since(text: str, now_ms: int) -> int:
    """``10m``, ``2h``, ``1d`` (before ``now_ms``) or an ISO time (UTC if no offset), in ms."""
    match = _DURATION_RE.match(text.strip())
    if match is not None:
        return now_ms - int(float(match[1]) * _UNIT_S[match[2]] * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d, 1w) nor an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def iso_ms(at_ms: int) -> str:
    when = datetime.fromtimestamp(at_ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    """One record of the dead-letter topic; ``letter`` is None if it does not decode."""

    id: LetterId
    letter: DeadLetter | None
    problem: str = ""  # why ``letter`` is None

    @property
    def coordinates(self) -> tuple[str, int, int]:
        """Source topic, partition and offset (sorts in source order)."""
        letter = self.letter
        if letter is None:
            return ("?", -1, -1)
        return (letter.source_topic, letter.source_partition, letter.source_offset)

    @property
    def source(self) -> str:
        topic, partition, offset = self.coordinates
        return f"{topic}/{partition}@{offset}" if self.letter is not None else "?"


@dataclass(frozen=True)
class Marker:
    """Proof that a dead letter was redriven: the value of its marker record."""

    id: str
    at_ms: int
    source: str  # the dead letter's Entry.source: an ID reused by a re-created topic differs
    by: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, key: str, value: bytes | None) -> Marker:
        try:
            doc = json.loads(value or b"{}")
            return cls(key, int(doc["at_ms"]), str(doc["source"]), str(doc["by"]))
        except (ValueError, KeyError, TypeError):
            return cls(key, 0, "", "")  # still a marker: the key alone says "done"

    def covers(self, entry: Entry) -> bool:
        return str(entry.id) == self.id and self.source in ("", entry.source)


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters a command acts on: every given criterion must hold."""

    topics: frozenset[str] = frozenset()  # full names, or names without the topic prefix
    error_types: frozenset[str] = frozenset()
    since_ms: int | None = None
    ids: frozenset[LetterId] = frozenset()
    prefix: str = ""

    def matches(self, entry: Entry) -> bool:
        if self.ids and entry.id not in self.ids:
            return False
        letter = entry.letter
        if letter is None:  # nothing to match on but the ID
            return not (self.topics or self.error_types or self.since_ms is not None)
        source = letter.source_topic
        if self.topics and not {source, source.removeprefix(self.prefix)} & self.topics:
            return False
        if self.error_types and letter.error_type not in self.error_types:
            return False
        return self.since_ms is None or letter.at_ms >= self.since_ms


def redrive_headers(headers: Headers, letter_id: LetterId) -> Headers:
    """The original headers without the failure's, plus where the redrive came from."""
    kept = [(k, v) for k, v in headers if not k.startswith(_DROPPED_HEADERS)]
    return [*kept, (REDRIVEN_FROM, str(letter_id).encode())]


def refusal(entry: Entry, partitions: int | None, dead_letters_topic: str) -> str | None:
    """Why a dead letter cannot be re-injected as it is; None when it can."""
    letter = entry.letter
    if letter is None:
        return f"the dead letter itself does not decode: {entry.problem}"
    if letter.value_truncated:
        return (
            f"value kept only in part ({len(letter.value or b'')} of {letter.value_size} bytes); "
            f"the whole record is at {entry.source} until retention"
        )
    if letter.source_topic == dead_letters_topic:
        return "its source is the dead-letter topic itself"
    if partitions is None:
        return f"source topic {letter.source_topic} does not exist"
    return None


def decode_known(codec: Codec, value: bytes | None) -> FleetMessage | str:
    """The value as whichever bundled message it is, or the reason it is none of them."""
    by_name = {cls.schema_name: cls for cls in KNOWN_MESSAGES}
    writer = None
    if value and value[:2] == SINGLE_OBJECT_MAGIC:
        writer = codec.store.by_fingerprint.get(value[2:10])
    cls = by_name.get(writer.name) if writer is not None else None
    try:
        return codec.decode(value, cls or KNOWN_MESSAGES[0])
    except DecodeError as exc:
        return exc.reason


def hexdump(data: bytes, limit: int = 512) -> str:
    lines = []
    for start in range(0, min(len(data), limit), 16):
        chunk = data[start : start + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:08x}  {chunk.hex(' '):<47}  |{text}|")
    if len(data) > limit:
        lines.append(f"… {len(data) - limit} more bytes")
    return "\n".join(lines)


def printable(data: bytes | None) -> str | None:
    """Bytes as text when they are UTF-8, else as ``0x`` hex."""
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "0x" + data.hex()


# -- the Kafka shell ---------------------------------------------------------------------


@dataclass
class RedriveReport:
    dry_run: bool
    redriven: list[Entry] = field(default_factory=list)
    already: list[Entry] = field(default_factory=list)
    refused: list[tuple[Entry, str]] = field(default_factory=list)


class DeadLetterOffice:
    """Reads the dead-letter topic and its redrive markers; redrives in transactions."""

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
        """Every dead letter, up to the end offsets found on entry (never follows)."""
        topic = self.topics.dead_letters
        if self.partition_count(topic) is None:
            raise BrokerError(f"topic {topic} does not exist; run `fleet topics apply`")
        for record in self._read(topic):
            yield self._entry(record)

    def markers(self) -> dict[str, Marker]:
        """Committed redrive markers by dead-letter ID (none if the topic is missing)."""
        if self.partition_count(self.markers_topic) is None:
            return {}
        done: dict[str, Marker] = {}
        for record in self._read(self.markers_topic):
            key = printable(_as_bytes(record.key())) or ""
            done[key] = Marker.decode(key, _as_bytes(record.value()))
        return done

    def get(self, letter_id: LetterId) -> tuple[Entry, Headers] | None:
        """One dead letter and the headers of its dead-letter record, if it exists."""
        topic = self.topics.dead_letters
        if letter_id.partition >= (self.partition_count(topic) or 0):
            return None
        consumer = self._consumer()
        try:
            low, high = watermarks(consumer, topic, letter_id.partition)
            if not low <= letter_id.offset < high:
                return None
            consumer.assign([TopicPartition(topic, letter_id.partition, letter_id.offset)])
            for record in self._drain(consumer, {letter_id.partition: letter_id.offset + 1}):
                if record.offset() == letter_id.offset:
                    return self._entry(record), record_headers(record)
            return None  # a transaction marker or an aborted record
        finally:
            consumer.close()

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
            self._call(producer.init_transactions, 60)
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
        """One transaction: the re-injected records and their markers, or nothing."""
        now_ms = int(time.time() * 1000)
        self._call(producer.begin_transaction)
        try:
            # In source order: dead letters of one partition may sit in several of ours.
            for entry in sorted(entries, key=lambda e: e.coordinates):
                letter = entry.letter
                assert letter is not None  # refusal() let only decoded letters through
                # The partition it came from, so its order with its neighbours is kept.
                inside = letter.source_partition < (partitions[letter.source_topic] or 0)
                producer.produce(
                    letter.source_topic,
                    value=letter.value,
                    key=letter.key,
                    partition=letter.source_partition if inside else -1,
                    headers=list(
                        redrive_headers([(h.key, h.value) for h in letter.headers], entry.id)
                    ),
                )
                marker = Marker(str(entry.id), now_ms, entry.source, self.clients.role)
                producer.produce(
                    self.markers_topic,
                    key=marker.id.encode(),
                    value=marker.encode(),
                    headers=[("content-type", b"application/json")],
                )
                producer.poll(0)
            self._call(producer.commit_transaction, 60)
        except (KafkaException, BufferError, BrokerError) as exc:
            try:
                producer.abort_transaction(30)
            except KafkaException:
                log.warning("abort failed; the next redrive run aborts the transaction")
            raise BrokerError(
                f"redrive of {len(entries)} dead letter(s) may not be committed ({exc}); run "
                "the command again: what was committed is skipped, the rest is redriven"
            ) from exc
        log.info("redriven", count=len(entries), first=str(entries[0].id), last=str(entries[-1].id))

    @staticmethod
    def _call(call: Callable[..., object], *args: float) -> None:
        try:
            retry_transient(lambda: call(*args))
        except KafkaException as exc:
            error = exc.args[0]
            hint = " (another redrive took over)" if error.fatal() else ""
            raise BrokerError(f"redrive transaction failed{hint}: {error}") from exc

    def _entry(self, record: Message) -> Entry:
        letter_id = LetterId(record.partition() or 0, record.offset() or 0)
        try:
            letter = self.codec.decode(_as_bytes(record.value()), DeadLetter, record=record)
        except DecodeError as exc:
            return Entry(letter_id, None, exc.reason)
        return Entry(letter_id, letter)

    def _consumer(self) -> Consumer:
        # read_committed (the default): aborted dead letters and redrives do not count.
        return self.clients.scan_consumer(f"fleet-dlq-reader-{uuid.uuid4().hex}")

    def _read(self, topic: str) -> Iterator[Message]:
        consumer = self._consumer()
        try:
            ends: dict[int, int] = {}
            for p in range(self.partition_count(topic) or 0):
                low, high = watermarks(consumer, topic, p)
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(ends)])
            yield from self._drain(consumer, ends)
        finally:
            consumer.close()

    def _drain(self, consumer: Consumer, ends: dict[int, int]) -> Iterator[Message]:
        """Records until each partition reaches its end offset (or its end, if earlier:
        read_committed stops before transactions still open)."""
        pending = dict(ends)
        deadline = time.monotonic() + self.read_timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"no progress reading for {self.read_timeout_s:.0f} s")
            records = consumer.consume(500, timeout=0.1)
            if records:
                deadline = time.monotonic() + self.read_timeout_s
            for record in records:
                partition = record.partition() or 0
                error = record.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading {record.topic()} failed: {error}")
                    pending.pop(partition, None)
                    continue
                offset = record.offset() or 0
                end = pending.get(partition)
                if end is None:
                    continue
                if offset < end:
                    yield record
                if offset >= end - 1:
                    pending.pop(partition)


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
