"""FleetClient on a real broker: a producer that stops delivering is replaced."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from fleet.errors import BrokerError
from fleet.kafka.client import FleetClient
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.settings import Settings
from fleet.topology import Topology

pytestmark = pytest.mark.kafka


@pytest.mark.timeout(120)
def test_a_flush_that_times_out_raises_and_the_next_request_gets_a_fresh_producer(
    settings: Settings,
) -> None:
    client = FleetClient(settings, role="test")
    topology = Topology.load(settings.topology_file)
    apply_topics(client.admin, topology, desired_topics(topology, client.topics, []))
    # A producer that cannot deliver (nothing listens on its address) stands in for the
    # long-lived producer that stopped delivering after a broker restart (seed 4001).
    old = client._producer = Producer({"bootstrap.servers": "127.0.0.1:9", "linger.ms": 0})
    client.submit({"steps": [{"id": "a", "capability": "echo"}]}, flush=False)
    with pytest.raises(BrokerError, match="not delivered within 2 s"):
        client.flush(timeout_s=2)
    assert client._producer is not old
    assert len(old) == 0  # purged: nothing of it is sent later

    workflow_id = client.submit({"steps": [{"id": "a", "capability": "echo"}]})
    assert workflow_id.startswith("wf-")  # the flush inside submit did not raise
    client.close()
