"""The state changelog on a real broker: what a new owner restores."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Producer
from pydantic import JsonValue

from fleet.kafka import KafkaClients
from fleet.settings import Settings
from fleet.topology import Topics, Topology, apply_topics, desired_topics
from orchestrator import changelog

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
