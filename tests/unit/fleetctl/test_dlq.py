"""The pure parts of dead-letter handling: IDs, --since, filters, headers, refusals, markers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleet.codec import Codec, SchemaStore
from fleet.messages import DeadLetter, Header, WorkflowCancelRequested
from fleet.settings import Settings
from fleetctl.dlq import (
    KNOWN_MESSAGES,
    REDRIVEN_FROM,
    Entry,
    LetterFilter,
    LetterId,
    Marker,
    decode_known,
    hexdump,
    parse_id,
    parse_since,
    printable,
    redrive_headers,
    refusal,
)

pytestmark = pytest.mark.unit

CODEC = Codec(SchemaStore(Settings.from_env({}).schemas_dir))
NOW_MS = 1_700_000_000_000


def _entry(
    partition: int = 1,
    offset: int = 7,
    *,
    topic: str = "p.tasks.noop",
    error_type: str = "DecodeError",
    at_ms: int = NOW_MS,
    **fields: object,
) -> Entry:
    letter = DeadLetter.model_validate(
        {
            "source_topic": topic,
            "source_partition": 2,
            "source_offset": 17,
            "key": b"k",
            "value": b"garbage",
            "value_size": 7,
            "error_type": error_type,
            "error_message": "not Avro",
            "consumer": "worker-1",
            "at_ms": at_ms,
            **fields,
        }
    )
    return Entry(LetterId(partition, offset), letter)


@pytest.mark.parametrize(
    ("text", "expected"), [("0:0", LetterId(0, 0)), ("2:1234", LetterId(2, 1234))]
)
def test_ids_parse_and_print_back(text: str, expected: LetterId) -> None:
    assert parse_id(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", "1", "1:", ":2", "a:b", "-1:2", "1:2:3", "1.5:2"])
def test_bad_ids_say_what_an_id_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_id(text)


@pytest.mark.parametrize(
    ("text", "ago_s"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1.5h", 5400)],
)
def test_since_durations_count_back_from_now(text: str, ago_s: int) -> None:
    assert parse_since(text, NOW_MS) == NOW_MS - ago_s * 1000


def test_since_iso_times_are_utc_unless_they_say_otherwise() -> None:
    utc = int(datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)
    assert parse_since("2024-05-01T12:00:00", NOW_MS) == utc
    assert parse_since("2024-05-01T12:00:00Z", NOW_MS) == utc
    assert parse_since("2024-05-01T14:00:00+02:00", NOW_MS) == utc
    assert parse_since("2024-05-01", NOW_MS) == utc - 12 * 3600 * 1000


@pytest.mark.parametrize("text", ["yesterday", "10", "10x", "-5m", "2024-13-01"])
def test_bad_since_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, NOW_MS)


def test_an_empty_filter_matches_everything() -> None:
    assert LetterFilter().matches(_entry())
    assert LetterFilter().matches(Entry(LetterId(0, 1), None, "not Avro"))


def test_topic_filter_takes_full_names_or_names_without_the_prefix() -> None:
    entry = _entry(topic="p.tasks.noop")
    assert LetterFilter(topics=frozenset({"p.tasks.noop"}), prefix="p.").matches(entry)
    assert LetterFilter(topics=frozenset({"tasks.noop"}), prefix="p.").matches(entry)
    assert LetterFilter(topics=frozenset({"tasks.other", "tasks.noop"}), prefix="p.").matches(entry)
    assert not LetterFilter(topics=frozenset({"tasks.noop"}), prefix="q.").matches(entry)
    assert not LetterFilter(topics=frozenset({"noop"}), prefix="p.").matches(entry)


def test_all_given_criteria_must_hold() -> None:
    entry = _entry(3, 9, error_type="DecodeError", at_ms=NOW_MS)
    both = LetterFilter(topics=frozenset({"p.tasks.noop"}), error_types=frozenset({"DecodeError"}))
    assert both.matches(entry)
    assert not LetterFilter(error_types=frozenset({"ValueError"})).matches(entry)
    assert LetterFilter(since_ms=NOW_MS).matches(entry)
    assert not LetterFilter(since_ms=NOW_MS + 1).matches(entry)
    assert LetterFilter(ids=frozenset({LetterId(3, 9), LetterId(0, 0)})).matches(entry)
    assert not LetterFilter(ids=frozenset({LetterId(3, 8)})).matches(entry)
    assert not LetterFilter(ids=frozenset({LetterId(3, 9)}), since_ms=NOW_MS + 1).matches(entry)


def test_an_undecodable_dead_letter_matches_only_by_id() -> None:
    broken = Entry(LetterId(0, 1), None, "not Avro")
    assert LetterFilter(ids=frozenset({LetterId(0, 1)})).matches(broken)
    assert not LetterFilter(topics=frozenset({"x"})).matches(broken)
    assert not LetterFilter(error_types=frozenset({"DecodeError"})).matches(broken)
    assert not LetterFilter(since_ms=0).matches(broken)


def test_redrive_headers_drop_the_failure_and_name_the_dead_letter() -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("traceparent", b"00-abc-def-01"),
        ("fleet-error-type", b"DecodeError"),
        ("fleet-error", b"not Avro"),
        ("fleet-source-topic", b"t"),
        ("fleet-redriven-from", b"0:1"),  # an earlier redrive of the same record
        ("content-type", None),
        ("fleet-attempt", b"2"),
    ]
    assert redrive_headers(headers, LetterId(2, 5)) == [
        ("traceparent", b"00-abc-def-01"),
        ("content-type", None),
        ("fleet-attempt", b"2"),
        (REDRIVEN_FROM, b"2:5"),
    ]


def test_refusals_name_what_cannot_be_reinjected() -> None:
    assert refusal(_entry(), partitions=3, dead_letters_topic="p.dead.letters") is None
    assert "does not decode: bad" in (refusal(Entry(LetterId(0, 1), None, "bad"), 3, "d") or "")
    cut = _entry(value=b"x" * 10, value_size=100, value_truncated=True)
    assert "10 of 100 bytes" in (refusal(cut, 3, "d") or "")
    assert "p.tasks.noop/2@17" in (refusal(cut, 3, "d") or "")
    assert "does not exist" in (refusal(_entry(), None, "d") or "")
    assert "dead-letter topic itself" in (refusal(_entry(topic="d"), 3, "d") or "")


def test_markers_round_trip_and_cover_only_their_own_dead_letter() -> None:
    entry = _entry(1, 7)
    marker = Marker("1:7", NOW_MS, entry.source, "dlq")
    assert Marker.decode("1:7", marker.encode()) == marker
    assert marker.covers(entry)
    # Same ID, other record: the dead-letter topic was deleted and created again.
    assert not marker.covers(_entry(1, 7, topic="p.task.results"))
    assert not marker.covers(_entry(1, 8))
    # A marker value we cannot read still says "done" for its ID.
    unreadable = Marker.decode("1:7", b"\x00not json")
    assert unreadable == Marker("1:7", 0, "", "")
    assert unreadable.covers(entry)


def test_decode_known_finds_the_message_class_or_says_why_not() -> None:
    request = WorkflowCancelRequested(workflow_id="wf-1", reason="r", requested_at_ms=5)
    assert decode_known(CODEC, CODEC.encode(request)) == request
    assert "unknown framing" in str(decode_known(CODEC, b"garbage"))
    assert "empty" in str(decode_known(CODEC, b""))
    letter = _entry().letter
    assert letter is not None
    assert decode_known(CODEC, CODEC.encode(letter)) == letter
    assert {cls.__name__ for cls in KNOWN_MESSAGES} >= {
        "WorkflowSubmitted",
        "WorkflowCancelRequested",
        "TaskAssigned",
        "TaskResult",
        "WorkflowEvent",
        "DeadLetter",
    }


def test_hexdump_shows_offsets_bytes_and_text_up_to_the_limit() -> None:
    dump = hexdump(b"\xc3\x01hello, world!!!!" + bytes(20), limit=32)
    lines = dump.splitlines()
    assert (
        lines[0] == "00000000  c3 01 68 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 21  |..hello, world!!|"
    )
    assert lines[1].startswith("00000010  21 21 00 00")
    assert lines[-1] == "… 6 more bytes"
    assert hexdump(b"") == ""


def test_printable_keeps_text_and_shows_binary_as_hex() -> None:
    assert printable(b"wf-1") == "wf-1"
    assert printable(b"\xff\x00") == "0xff00"
    assert printable(None) is None


def test_header_values_from_the_dead_letter_model_feed_redrive_headers() -> None:
    letter = _entry(headers=[Header(key="traceparent", value=b"t"), Header(key="x")]).letter
    assert letter is not None
    pairs = [(h.key, h.value) for h in letter.headers]
    assert redrive_headers(pairs, LetterId(0, 3)) == [
        ("traceparent", b"t"),
        ("x", None),
        (REDRIVEN_FROM, b"0:3"),
    ]
