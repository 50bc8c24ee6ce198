"""Dead letters: a record we cannot process is kept whole, with the reason, and we move on."""

from __future__ import annotations

import time

import structlog
from confluent_kafka import Message, Producer

from fleet.codec import Codec
from fleet.kafka.clients import DeliveryCallback, headers_for, produce, record_headers
from fleet.messages import DeadLetter, Header
from fleet.topology import Topics

log = structlog.get_logger()


# Kafka refuses records over message.max.bytes (1 MiB by default), and a dead letter
# wraps the original with more: past this, only the first bytes of the value are kept
# (the whole record stays in its source topic until retention, at the offset recorded).
MAX_VALUE_BYTES = 512 * 1024
MAX_MESSAGE_CHARS = 4000


def letter_for(record: Message, error: BaseException, consumer: str, at_ms: int) -> DeadLetter:
    value = record.value()
    if isinstance(value, str):
        value = value.encode()
    truncated = value is not None and len(value) > MAX_VALUE_BYTES
    return DeadLetter(
        source_topic=record.topic() or "",
        source_partition=record.partition() or 0,
        source_offset=record.offset() or 0,
        key=_as_bytes(record.key()),
        value=value[:MAX_VALUE_BYTES] if value is not None else None,
        value_size=None if value is None else len(value),
        value_truncated=truncated,
        headers=[Header(key=k, value=v) for k, v in record_headers(record)],
        error_type=type(error).__name__,
        error_message=str(error)[:MAX_MESSAGE_CHARS],
        consumer=consumer,
        at_ms=at_ms,
    )


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def reason_headers(record: Message, error: BaseException) -> list[tuple[str, bytes]]:
    """The reason travels in headers too, so it can be read without decoding the value."""
    return [
        ("fleet-error-type", type(error).__name__.encode()),
        ("fleet-error", str(error)[:1000].encode()),
        ("fleet-source-topic", (record.topic() or "").encode()),
        ("fleet-source-partition", str(record.partition()).encode()),
        ("fleet-source-offset", str(record.offset()).encode()),
    ]


class DeadLetters:
    def __init__(self, producer: Producer, codec: Codec, topics: Topics, consumer: str) -> None:
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.consumer = consumer

    def send(
        self, record: Message, error: BaseException, on_delivery: DeliveryCallback | None = None
    ) -> None:
        letter = letter_for(record, error, self.consumer, int(time.time() * 1000))
        log.warning(
            "sent to dead letters",
            topic=letter.source_topic,
            partition=letter.source_partition,
            offset=letter.source_offset,
            reason=letter.error_message,
            truncated=letter.value_truncated,
        )
        produce(
            self.producer,
            self.topics.dead_letters,
            self.codec.encode(letter),
            key=letter.key,
            headers=headers_for(letter, None) + reason_headers(record, error),
            on_delivery=on_delivery,
        )
