"""Kafka plumbing every process shares: the only place in the kernel that touches
``confluent_kafka``. librdkafka property dicts stop here: the rest of the code asks for a
producer, a consumer or an admin client by purpose."""

from fleet.kafka.client import FleetClient
from fleet.kafka.clients import (
    ATTEMPT,
    CONTENT_TYPE_HEADER,
    TRACEPARENT,
    DeliveryCallback,
    Headers,
    KafkaClients,
    client_id,
    header,
    headers_for,
    produce,
    record_headers,
    retry_transient,
    wait_for_broker,
    watermarks,
)
from fleet.kafka.deadletter import DeadLetters
from fleet.kafka.follow import TopicReader
from fleet.kafka.readback import ReadIncomplete, end_offsets, partitions_of, records_to_end
from fleet.kafka.topics import CapabilityCheck, TopicReport, apply_topics, desired_topics

__all__ = [
    "ATTEMPT",
    "CONTENT_TYPE_HEADER",
    "TRACEPARENT",
    "CapabilityCheck",
    "DeadLetters",
    "DeliveryCallback",
    "FleetClient",
    "Headers",
    "KafkaClients",
    "ReadIncomplete",
    "TopicReader",
    "TopicReport",
    "apply_topics",
    "client_id",
    "desired_topics",
    "end_offsets",
    "header",
    "headers_for",
    "partitions_of",
    "produce",
    "record_headers",
    "records_to_end",
    "retry_transient",
    "wait_for_broker",
    "watermarks",
]
