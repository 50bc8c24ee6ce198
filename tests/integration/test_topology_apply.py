from __future__ import annotations

import pytest
from confluent_kafka.admin import NewTopic

from fleet.kafka import KafkaClients
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.settings import Settings
from fleet.topology import Topics, Topology

pytestmark = pytest.mark.kafka


def test_apply_creates_then_is_idempotent_then_reports_drift(settings: Settings) -> None:
    topology = Topology.load(settings.topology_file)
    topics = Topics(settings.topic_prefix)
    admin = KafkaClients(settings, settings.bootstrap_servers or "", role="test").admin()
    wanted = desired_topics(topology, topics, ["alpha"])

    first = apply_topics(admin, topology, wanted)
    assert {r.topic for r in first} == set(wanted)
    assert {r.status for r in first} == {"created"}

    second = apply_topics(admin, topology, wanted)
    assert {r.status for r in second} == {"ok"}

    # Someone made the beta topic by hand, with the wrong partition count and retention.
    drifted = topics.tasks("beta")
    admin.create_topics([NewTopic(drifted, 2, 1, config={"retention.ms": "1000"})])[
        drifted
    ].result()
    wanted = desired_topics(topology, topics, ["alpha", "beta"])
    third = {r.topic: r for r in apply_topics(admin, topology, wanted)}
    assert third[drifted].status == "drift"
    assert "partitions 2 (topics.yaml says 6)" in third[drifted].detail
    assert "retention.ms=1000" in third[drifted].detail
    assert all(r.status == "ok" for name, r in third.items() if name != drifted)
