from __future__ import annotations

import pytest
from confluent_kafka import Message

from fleet.codec import Codec, SchemaStore
from fleet.errors import DecodeError
from fleet.kafka.deadletter import MAX_VALUE_BYTES, letter_for, reason_headers
from fleet.messages import DeadLetter
from fleet.settings import Settings

pytestmark = pytest.mark.unit

CODEC = Codec(SchemaStore(Settings.from_env({}).schemas_dir))


def _record(value: bytes) -> Message:
    return Message(
        topic="p.tasks.noop", partition=2, offset=17, key=b"k", value=value, headers=[("h", b"v")]
    )


def test_a_dead_letter_keeps_the_whole_record_and_the_reason() -> None:
    letter = letter_for(_record(b"garbage"), DecodeError("not Avro"), "worker-1", at_ms=5)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "p.tasks.noop",
        2,
        17,
    )
    assert (letter.key, letter.value, letter.value_size) == (b"k", b"garbage", 7)
    assert not letter.value_truncated
    assert [(h.key, h.value) for h in letter.headers] == [("h", b"v")]
    assert (letter.error_type, letter.error_message) == ("DecodeError", "not Avro")
    assert CODEC.decode(CODEC.encode(letter), DeadLetter) == letter


def test_an_oversized_value_is_cut_so_the_dead_letter_still_fits_in_kafka() -> None:
    big = bytes(range(256)) * (4 * 1024)  # 1 MiB
    letter = letter_for(_record(big), DecodeError("too big"), "worker-1", at_ms=5)
    assert letter.value == big[:MAX_VALUE_BYTES]
    assert (letter.value_size, letter.value_truncated) == (len(big), True)
    assert len(CODEC.encode(letter)) < 1_000_000  # under Kafka's default message.max.bytes


def test_reason_headers_name_error_and_source() -> None:
    headers = dict(reason_headers(_record(b"x"), DecodeError("bad framing")))
    assert headers == {
        "fleet-error-type": b"DecodeError",
        "fleet-error": b"bad framing",
        "fleet-source-topic": b"p.tasks.noop",
        "fleet-source-partition": b"2",
        "fleet-source-offset": b"17",
    }
