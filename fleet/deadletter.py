"""Dead letters: a record we cannot process is kept whole, with the reason, and we move on."""

from __future__ import annotations

import time

import structlog
from confluent_kafka import Message, Producer

from fleet.codec import Codec
from fleet.kafka import DeliveryCallback, headers_for, produce, record_headers
from fleet.messages import DeadLetter, Header
from fleet.topology import Topics

log = structlog.get_logger()


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
        letter = DeadLetter(
            source_topic=record.topic() or "",
            source_partition=record.partition() or 0,
            source_offset=record.offset() or 0,
            key=record.key(),
            value=record.value(),
            headers=[Header(key=k, value=v) for k, v in record_headers(record)],
            error_type=type(error).__name__,
            error_message=str(error),
            consumer=self.consumer,
            at_ms=int(time.time() * 1000),
        )
        log.warning(
            "sent to dead letters",
            topic=letter.source_topic,
            partition=letter.source_partition,
            offset=letter.source_offset,
            reason=letter.error_message,
        )
        produce(
            self.producer,
            self.topics.dead_letters,
            self.codec.encode(letter),
            key=record.key(),
            headers=headers_for(letter, None) + reason_headers(record, error),
            on_delivery=on_delivery,
        )
