"""FleetClient on a real broker: a producer that stops delivering is replaced; one
workflow's records are read from the partition its id maps to (fleet.kafka.history)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer

from fleet.errors import BrokerError
from fleet.kafka import headers_for, produce
from fleet.kafka.client import FleetClient
from fleet.kafka.readback import ReadBack
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.messages import EventKind, WorkflowEvent
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


# -- one workflow's records, read from its partition (fleet.kafka.history) -----------------


def _ready(settings: Settings) -> FleetClient:
    client = FleetClient(settings, role="test")
    topology = Topology.load(settings.topology_file)
    apply_topics(client.admin, topology, desired_topics(topology, client.topics, []))
    return client


def _event(workflow_id: str, kind: EventKind, at_ms: int, **fields: object) -> WorkflowEvent:
    return WorkflowEvent(
        workflow_id=workflow_id, kind=kind, submitted_at_ms=at_ms, at_ms=at_ms, **fields
    )


def _write(client: FleetClient, *events: WorkflowEvent) -> None:
    """Events as the orchestrator writes them: keyed by workflow id, murmur2-partitioned."""
    for event in events:
        produce(
            client._producer,
            client.topics.events,
            client.codec.encode(event),
            key=event.workflow_id,
            headers=headers_for(event, None),
        )
    client.flush()


def _same_partition_ids(client: FleetClient, count: int) -> list[str]:
    """Workflow ids whose events share one partition (so the reader must skip the others')."""
    log = client.workflow_log()
    first = f"wf-{uuid.uuid4().hex}"
    wanted = log.partition(client.topics.events, first)
    ids = [first]
    while len(ids) < count:
        candidate = f"wf-{uuid.uuid4().hex}"
        if log.partition(client.topics.events, candidate) == wanted:
            ids.append(candidate)
    return ids


@pytest.mark.timeout(120)
def test_the_partition_computed_is_where_the_producer_put_each_key(settings: Settings) -> None:
    client = _ready(settings)
    try:
        log = client.workflow_log()
        ids = [f"wf-{uuid.uuid4().hex}" for _ in range(30)]
        _write(client, *(_event(i, EventKind.ACCEPTED, 1) for i in ids))
        topic = client.topics.events
        with ReadBack(client.clients) as reader:
            parts = sorted(
                client.admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
            )
            found = {
                r.key().decode(): r.partition()
                for r in reader.to_end(topic, parts, time.monotonic() + 30)
            }
        assert found == {i: log.partition(topic, i) for i in ids}
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_following_a_finished_workflow_returns_its_events_to_the_end_at_once(
    settings: Settings,
) -> None:
    client = _ready(settings)
    try:
        mine, other = _same_partition_ids(client, 2)
        _write(
            client,
            _event(mine, EventKind.ACCEPTED, 1_000),
            _event(other, EventKind.ACCEPTED, 1_100),
        )
        time.sleep(0.05)
        cut_ms = int(time.time() * 1000)  # record timestamps: when they were produced
        time.sleep(0.05)
        _write(
            client,
            _event(mine, EventKind.STEP_COMPLETED, 1_200, step_id="a"),
            _event(mine, EventKind.COMPLETED, 1_300, output={"v": 1}),
            _event(other, EventKind.COMPLETED, 1_400),
        )
        caught_up: list[bool] = []
        started = time.monotonic()
        events = list(
            client.workflow_log().follow(mine, on_caught_up=lambda: caught_up.append(True))
        )
        assert time.monotonic() - started < 20
        assert [(e.workflow_id, e.kind) for e in events] == [
            (mine, EventKind.ACCEPTED),
            (mine, EventKind.STEP_COMPLETED),
            (mine, EventKind.COMPLETED),
        ]
        assert caught_up == []  # it found the end within what was there
        # From a time on: the first record at or after it.
        later = list(client.workflow_log().follow(mine, since_ms=cut_ms))
        assert [e.kind for e in later] == [EventKind.STEP_COMPLETED, EventKind.COMPLETED]
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_following_a_running_workflow_ends_at_its_terminal_event(settings: Settings) -> None:
    client = _ready(settings)
    try:
        (mine,) = _same_partition_ids(client, 1)
        _write(client, _event(mine, EventKind.ACCEPTED, 1_000))
        caught_up = threading.Event()
        seen: list[EventKind] = []

        def follow() -> None:
            for event in client.workflow_log().follow(mine, on_caught_up=caught_up.set):
                seen.append(event.kind)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert caught_up.wait(30), "never caught up with the partition's end"
        assert seen == [EventKind.ACCEPTED] and reader.is_alive()
        writer = _ready(settings)  # its own producer: the reader's client is busy reading
        try:
            _write(writer, _event(mine, EventKind.FAILED, 2_000))
        finally:
            writer.close()
        reader.join(30)
        assert not reader.is_alive(), "the reader did not end at the terminal event"
        assert seen == [EventKind.ACCEPTED, EventKind.FAILED]
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_looking_up_a_workflow(settings: Settings) -> None:
    client = _ready(settings)
    try:
        log = client.workflow_log()
        ended, running, waiting, from_json = _same_partition_ids(client, 4)
        _write(
            client,
            _event(ended, EventKind.ACCEPTED, 1),
            _event(running, EventKind.ACCEPTED, 2),
            _event(ended, EventKind.CANCELLED, 3),
        )
        client.submit({"name": "x", "steps": []}, waiting)  # no orchestrator: never accepted
        # A submission as another language's producer sends it: plain JSON, no header.
        submitted = {"workflow_id": from_json, "submitted_at_ms": 1, "spec": {"name": "x"}}
        produce(
            client._producer, client.topics.requests, json.dumps(submitted).encode(), key=from_json
        )
        client.flush()
        seen = log.look_up(ended, timeout_s=30)
        assert seen.complete and seen.ended and seen.last_event is not None
        assert seen.last_event.kind is EventKind.CANCELLED
        seen = log.look_up(running, timeout_s=30)
        assert seen.complete and seen.known and not seen.ended
        seen = log.look_up(waiting, timeout_s=30)
        assert seen.complete and seen.submitted and seen.last_event is None
        assert log.look_up(from_json, timeout_s=30).submitted
        client.top_up(waiting, 1_000_000)  # a top-up on the requests partition is no submission
        nobody = log.look_up(f"wf-{uuid.uuid4().hex}", timeout_s=30)
        assert nobody.complete and not nobody.known
    finally:
        client.close()
