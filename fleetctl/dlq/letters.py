"""What the dead-letter office acts on, pure: a dead letter's ID, an entry of the topic,
the marker that proves a redrive, the filter an operator's flags make, and the parsing of
what an operator types (IDs, --since)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from fleet.messages import DeadLetter

REDRIVEN = "dead.letters.redriven"
_ID_RE = re.compile(r"^(\d+):(\d+)$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Headers = list[tuple[str, bytes | None]]


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
