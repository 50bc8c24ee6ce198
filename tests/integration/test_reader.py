"""The long-lived topic reader on a real broker: it notices a consumer that stopped
fetching and reopens at its positions, skipping and repeating nothing."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from fleet.kafka import KafkaClients
from fleet.kafka.follow import TopicReader
from fleet.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 3


def _topic(clients: KafkaClients, settings: Settings) -> str:
    name = f"{settings.topic_prefix}reader-{uuid.uuid4().hex[:6]}"
    admin = clients.ready_admin()
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(30)
    return name


def _produce(clients: KafkaClients, topic: str, first: int, count: int) -> None:
    """``count`` records per partition, committed in one transaction (read_committed)."""
    producer = clients.producer(**{"transactional.id": f"reader-test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for n in range(first, first + count):
        for p in range(PARTITIONS):
            producer.produce(topic, value=f"{p}:{n}".encode(), partition=p)
    producer.commit_transaction(30)


def _read(reader: TopicReader, seen: list[str], want: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(seen) < want and time.monotonic() < deadline:
        for record in reader.consume(100, timeout=0.2):
            if record.error() is None:
                seen.append(record.value().decode())


@pytest.mark.timeout(120)
def test_reader_reopens_a_consumer_that_stopped_fetching(settings: Settings) -> None:
    assert settings.bootstrap_servers
    clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
    topic = _topic(clients, settings)
    group = f"reader-{uuid.uuid4().hex}"
    opened: list[Consumer] = []

    def open_consumer() -> Consumer:
        opened.append(clients.consumer(group))
        return opened[-1]

    reader = TopicReader(
        open_consumer,
        clients.admin,
        topic,
        {p: OFFSET_BEGINNING for p in range(PARTITIONS)},
        stall_s=2.0,
        check_every_s=0.5,
    )
    try:
        _produce(clients, topic, 0, 20)
        seen: list[str] = []
        _read(reader, seen, 20 * PARTITIONS, 30)
        assert len(seen) == 20 * PARTITIONS
        assert reader.reopens == 0  # idle at the last stable offset is not a stall

        # What librdkafka#5153 looks like from outside: the client stops fetching one
        # partition while committed records wait there. pause() does exactly that.
        opened[0].pause([TopicPartition(topic, 1)])
        _produce(clients, topic, 20, 30)
        started = time.monotonic()
        _read(reader, seen, 50 * PARTITIONS, 60)
        took = time.monotonic() - started
    finally:
        reader.close()

    assert reader.reopens == 1 and len(opened) == 2
    assert took >= 2.0  # not before the partition has been stuck for stall_s
    expected = [f"{p}:{n}" for p in range(PARTITIONS) for n in range(50)]
    assert sorted(seen) == sorted(expected)  # nothing skipped, nothing repeated
    for p in range(PARTITIONS):  # and each partition in order
        mine = [v for v in seen if v.startswith(f"{p}:")]
        assert mine == [f"{p}:{n}" for n in range(50)]


@pytest.mark.timeout(60)
def test_reader_leaves_a_slow_but_moving_partition_alone(settings: Settings) -> None:
    """An application slower than its reader: partitions wait in librdkafka's local queue,
    behind and not moving for longer than stall_s, yet nothing is stalled."""
    assert settings.bootstrap_servers
    clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
    topic = _topic(clients, settings)
    group = f"reader-{uuid.uuid4().hex}"
    _produce(clients, topic, 0, 400)
    reader = TopicReader(
        lambda: clients.consumer(group),
        clients.admin,
        topic,
        {p: OFFSET_BEGINNING for p in range(PARTITIONS)},
        stall_s=0.5,
        check_every_s=0.1,
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 40
        while len(seen) < 400 * PARTITIONS and time.monotonic() < deadline:
            for record in reader.consume(1, timeout=0.2):
                if record.error() is None:
                    seen.append(record.value().decode())
            time.sleep(0.005)  # ~5 s for all: each partition waits its turn > stall_s
    finally:
        reader.close()
    assert len(seen) == 400 * PARTITIONS
    assert reader.reopens == 0


@pytest.mark.timeout(120)
def test_reader_replaces_an_admin_client_that_stopped_answering(settings: Settings) -> None:
    """Fault run seed 6005: the reader's long-lived admin client got no answers after a
    broker restart, so a stalled consumer was never judged. An admin client that cannot
    answer (nothing listens on its address) stands in for it."""
    assert settings.bootstrap_servers
    clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
    topic = _topic(clients, settings)
    group = f"reader-{uuid.uuid4().hex}"
    opened: list[Consumer] = []
    admins = [AdminClient({"bootstrap.servers": "127.0.0.1:9", "socket.timeout.ms": 1000})]

    def open_consumer() -> Consumer:
        opened.append(clients.consumer(group))
        return opened[-1]

    def open_admin() -> AdminClient:
        return admins.pop(0) if admins else clients.admin()

    reader = TopicReader(
        open_consumer,
        open_admin,
        topic,
        {p: OFFSET_BEGINNING for p in range(PARTITIONS)},
        stall_s=2.0,
        check_every_s=0.5,
    )
    try:
        opened[0].pause([TopicPartition(topic, 0)])  # stalled from the start
        _produce(clients, topic, 0, 10)
        seen: list[str] = []
        _read(reader, seen, 10 * PARTITIONS, 60)
    finally:
        reader.close()
    assert reader.admin_reopens == 1 and reader.reopens == 1
    assert sorted(seen) == sorted(f"{p}:{n}" for p in range(PARTITIONS) for n in range(10))
