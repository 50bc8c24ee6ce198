"""The state changelog on a real broker: what a new owner restores."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer, TopicPartition
from pydantic import JsonValue

from fleet.kafka import KafkaClients
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from orchestrator.shell import changelog

pytestmark = pytest.mark.kafka


# A finding of the fault runs, as a deterministic regression test: the restore took its end
# from a read_committed consumer (the last stable offset), so a killed owner's open
# transaction cut the restore short and lost everything committed after it.
@pytest.mark.timeout(120)
def test_changelog_restore_waits_for_an_open_transaction(settings: Settings) -> None:
    assert settings.bootstrap_servers
    clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    apply_topics(clients.ready_admin(), topology, desired_topics(topology, topics, []))

    def producer(name: str) -> Producer:
        made = clients.producer(**{"transactional.id": f"{settings.topic_prefix}{name}"})
        made.init_transactions(30)
        return made

    def write(made: Producer, key: str, value: JsonValue) -> None:
        made.produce(topics.state, key=key, value=changelog.encode(value), partition=0)

    owner, killed = producer("owner"), producer("killed")
    owner.begin_transaction()
    write(owner, "w", {"n": 0})
    owner.commit_transaction(30)
    killed.begin_transaction()  # a killed owner's batch: open until it times out
    write(killed, "x", {"n": "never committed"})
    assert killed.flush(10) == 0
    owner.begin_transaction()  # the next owner's batch, committed after it
    write(owner, "w", {"n": 2})
    owner.commit_transaction(30)
    aborter = threading.Timer(3.0, lambda: killed.abort_transaction(30))
    aborter.start()
    try:
        restored = changelog.read_partitions(clients, topics.state, [0], timeout_s=60)
    finally:
        aborter.join()
    assert restored.get("w") == (0, {"n": 2})
    assert "x" not in restored


# The handover order rests on this: a read_committed consumer's committed offsets wait
# for a previous owner's open transaction that carries offsets (KIP-447 require_stable),
# so the next owner restores the changelog only once that transaction is decided.
@pytest.mark.timeout(120)
def test_committed_offsets_wait_for_a_pending_transactional_commit(settings: Settings) -> None:
    assert settings.bootstrap_servers
    clients = KafkaClients(settings, settings.bootstrap_servers, role="test")
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    apply_topics(clients.ready_admin(), topology, desired_topics(topology, topics, []))
    group = f"{settings.topic_prefix}handover"
    owner = clients.consumer(group)
    owner.subscribe([topics.requests])
    deadline = time.monotonic() + 30
    while not owner.assignment() and time.monotonic() < deadline:
        owner.consume(1, timeout=0.5)
    assert owner.assignment()
    producer = clients.producer(**{"transactional.id": f"{settings.topic_prefix}owner"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.send_offsets_to_transaction(
        [TopicPartition(topics.requests, 0, 42)], owner.consumer_group_metadata(), 30
    )
    committer = threading.Timer(3.0, lambda: producer.commit_transaction(30))
    committer.start()
    reader = clients.consumer(group)  # read_committed, like the orchestrator's
    started = time.monotonic()
    try:
        [answer] = reader.committed([TopicPartition(topics.requests, 0)], timeout=60)
    finally:
        committer.join()
        reader.close()
        owner.close()
    assert answer.offset == 42
    assert time.monotonic() - started >= 2.0  # it waited for the commit
