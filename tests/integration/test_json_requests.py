"""JSON requests from producers that know nothing of fleet, on a real broker.

Each request here is produced by a plain ``confluent_kafka.Producer`` with its default
configuration (librdkafka's partitioner, as kcat and most clients outside Java use), by
the Java client running docs/examples/SubmitWorkflow.java or by kcat running
docs/examples/submit-with-kcat.sh: no fleet code, no Avro.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from fleet.kafka.partitioner import partition_for
from fleet.messages import EventKind, WorkflowEvent
from fleet.settings import Settings
from tests.integration import test_workflows
from tests.integration.test_workflows import WAIT_S, Fleet, _dead_letters, noop

pytestmark = pytest.mark.kafka

fleet = test_workflows.fleet  # the same set-up: an orchestrator and two worker processes

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
JAVA_EXAMPLE = EXAMPLES / "SubmitWorkflow.java"
KCAT_EXAMPLE = EXAMPLES / "submit-with-kcat.sh"
JAVA_CLASS_PATH = ("kafka-clients", "slf4j-api", "lz4-java")


def plain_producer(fleet: Fleet) -> Producer:
    """A producer as any service would make one: the address and nothing else."""
    return Producer({"bootstrap.servers": fleet.settings.require_bootstrap()})


def produce(
    fleet: Fleet, key: str, value: bytes, headers: tuple[tuple[str, bytes], ...] = ()
) -> int:
    """Produce with a plain producer; the partition it landed on."""
    producer = plain_producer(fleet)
    landed: list[int] = []
    producer.produce(
        fleet.client.topics.requests,
        key=key,
        value=value,
        headers=list(headers),
        on_delivery=lambda err, msg: landed.append(-1 if err else msg.partition()),
    )
    assert producer.flush(30) == 0
    assert landed and landed[0] >= 0, landed
    return landed[0]


def partitions(fleet: Fleet, topic: str) -> int:
    return len(fleet.client.admin.list_topics(topic=topic, timeout=10).topics[topic].partitions)


def terminal(fleet: Fleet, start: Any, workflow_ids: list[str]) -> dict[str, WorkflowEvent]:
    consumer = fleet.client.event_consumer(from_beginning=False)
    try:
        start()
        outcomes = fleet.client.wait(consumer, workflow_ids, WAIT_S)
    finally:
        consumer.close()
    missing = [w for w in workflow_ids if w not in outcomes]
    assert not missing, f"no terminal event for {missing}"
    return outcomes


def read_all(fleet: Fleet, topic: str) -> list[Any]:
    reader: Consumer = fleet.client.clients.consumer(f"json-check-{uuid.uuid4().hex}")
    parts = fleet.client.admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
    reader.assign([TopicPartition(topic, p, 0) for p in parts])
    records = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        batch = reader.consume(500, timeout=1.0)
        if not batch:
            break
        records += [r for r in batch if r.error() is None]
    reader.close()
    return records


def test_a_json_submission_from_a_plain_producer_completes_on_its_workflows_partition(
    fleet: Fleet,
) -> None:
    topics = fleet.client.topics
    n = partitions(fleet, topics.requests)
    # librdkafka's default partitioner is CRC32 of the key: pick an id it places on
    # another partition than murmur2 (where the workflow's results go).
    workflow_id = next(
        w
        for w in (f"wf-json-{uuid.uuid4().hex[:8]}" for _ in range(1000))
        if zlib.crc32(w.encode()) % n != partition_for(w, n)
    )
    home = partition_for(workflow_id, n)
    request = {
        "workflow_id": workflow_id,
        "submitted_at_ms": int(time.time() * 1000),
        "submitted_by": "a plain producer",
        "spec": {
            "name": "from-json",
            "input": {"text": "one two three four"},
            "steps": [
                {"id": "count", "capability": "text.wordcount", "input": {"text": "$.input.text"}}
            ],
            "output": "$.steps.count.output",
        },
    }
    landed: list[int] = []
    # No header, no fleet code: JSON by its leading brace, WorkflowSubmitted by its fields.
    outcomes = terminal(
        fleet,
        lambda: landed.append(produce(fleet, workflow_id, json.dumps(request).encode())),
        [workflow_id],
    )
    event = outcomes[workflow_id]
    assert event.kind is EventKind.COMPLETED, event.error
    assert event.output == {"words": 4}
    assert landed[0] != home  # it did land elsewhere ...

    # ... and was moved to its workflow's partition, where its state lives.
    forwarded = [
        r
        for r in read_all(fleet, topics.requests)
        if r.key() == workflow_id.encode() and r.partition() == home
    ]
    assert len(forwarded) == 1
    headers = dict(forwarded[0].headers() or [])
    assert headers["fleet-forwarded-from"].decode().startswith(f"{landed[0]}:")
    states = {
        r.partition() for r in read_all(fleet, topics.state) if r.key() == workflow_id.encode()
    }
    assert states == {partition_for(workflow_id, partitions(fleet, topics.state))}


def test_a_json_cancel_with_the_spec_as_text_and_a_content_type(fleet: Fleet) -> None:
    workflow_id = f"wf-json-{uuid.uuid4().hex[:8]}"
    spec = {
        "name": "slow-json",
        "steps": [noop("slow", {"delay_ms": 5000}), noop("z", {}, ["slow"])],
    }
    submit = {
        "workflow_id": workflow_id,
        "spec_json": json.dumps(spec),
        "submitted_at_ms": int(time.time() * 1000),
    }
    cancel = {"workflow_id": workflow_id, "reason": "from JSON", "requested_at_ms": 0}
    content_type = b"application/json; schema=io.fleet.WorkflowSubmitted"

    def start() -> None:
        produce(fleet, workflow_id, json.dumps(submit).encode(), (("content-type", content_type),))
        time.sleep(1.0)
        cancel["requested_at_ms"] = int(time.time() * 1000)
        produce(fleet, workflow_id, json.dumps(cancel).encode())  # by its fields

    event = terminal(fleet, start, [workflow_id])[workflow_id]
    assert event.kind is EventKind.CANCELLED
    assert event.error is not None and event.error.message == "from JSON"


def test_bad_json_requests_are_dead_lettered_with_the_reason_and_the_line_goes_on(
    fleet: Fleet,
) -> None:
    bad = {
        "bad-json-syntax": b'{"workflow_id": "bad-json-syntax", ',
        "bad-json-schema": json.dumps(
            {"workflow_id": "bad-json-schema", "spec": {}, "submitted_at_ms": "yesterday"}
        ).encode(),
    }
    for key, value in bad.items():
        produce(fleet, key, value)
    workflow_id = f"wf-json-after-{uuid.uuid4().hex[:8]}"
    good = {
        "workflow_id": workflow_id,
        "spec": {"name": "after-bad-json", "steps": [noop("a", {"still": "alive"})]},
        "submitted_at_ms": int(time.time() * 1000),
    }
    event = terminal(
        fleet, lambda: produce(fleet, workflow_id, json.dumps(good).encode()), [workflow_id]
    )[workflow_id]
    assert event.kind is EventKind.COMPLETED, event.error

    letters = {
        letter.key: (letter, headers)
        for letter, headers in _dead_letters(fleet, expected=len(bad))
        if letter.key is not None and letter.key.decode() in bad
    }
    assert sorted(k.decode() for k in letters) == sorted(bad)
    syntax, syntax_headers = letters[b"bad-json-syntax"]
    schema, schema_headers = letters[b"bad-json-schema"]
    assert syntax.value == bad["bad-json-syntax"] and schema.value == bad["bad-json-schema"]
    assert syntax_headers["fleet-error-type"] == schema_headers["fleet-error-type"] == "DecodeError"
    assert syntax_headers["fleet-error"].startswith("not valid JSON: ")
    assert schema_headers["fleet-error"] == (
        "JSON request is not a valid WorkflowSubmitted (nor a valid WorkflowCancelRequested "
        'or BudgetTopUpRequested): submitted_at_ms: expected long, got a string "yesterday"'
    )


def _kafka_libs(settings: Settings) -> Path | None:
    libs = Path(settings.kafka_cache_dir) / settings.kafka_version / "libs"
    return libs if any(libs.glob("kafka-clients-*.jar")) else None


def test_the_java_example_in_the_docs_submits_a_workflow(fleet: Fleet) -> None:
    """docs/examples/SubmitWorkflow.java, run as the docs say: the Java client, a
    StringSerializer, the content-type header; the workflow completes."""
    java = shutil.which("java")
    libs = _kafka_libs(Settings.from_env(os.environ))
    if java is None or libs is None:
        pytest.skip("needs Java 17+ and the Kafka client jars (the local broker's cache)")
    workflow_id = f"wf-java-{uuid.uuid4().hex[:8]}"
    ran: list[subprocess.CompletedProcess[str]] = []

    def start() -> None:
        # The class path the docs give: the client, its logging API and lz4.
        jars = [next(libs.glob(f"{name}-*.jar")) for name in JAVA_CLASS_PATH]
        argv = [
            java,
            "-cp",
            ":".join(map(str, jars)),
            str(JAVA_EXAMPLE),
            fleet.settings.require_bootstrap(),
            fleet.client.topics.requests,
            workflow_id,
        ]
        ran.append(subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False))
        assert ran[0].returncode == 0, ran[0].stdout + ran[0].stderr

    event = terminal(fleet, start, [workflow_id])[workflow_id]
    assert f"submitted {workflow_id} to {fleet.client.topics.requests}" in ran[0].stdout
    assert event.kind is EventKind.COMPLETED, event.error
    assert event.output == {"words": 3}


def test_the_kcat_example_in_the_docs_submits_a_workflow(fleet: Fleet) -> None:
    """docs/examples/submit-with-kcat.sh: a JSON line through kcat, keyed, with the
    content-type header and the murmur2 partitioner; the workflow completes."""
    if shutil.which("kcat") is None:
        pytest.skip("needs kcat (apt-get install kcat, brew install kcat)")
    workflow_id = f"wf-kcat-{uuid.uuid4().hex[:8]}"
    ran: list[subprocess.CompletedProcess[str]] = []

    def start() -> None:
        argv = [
            "bash",
            str(KCAT_EXAMPLE),
            fleet.settings.require_bootstrap(),
            fleet.client.topics.requests,
            workflow_id,
        ]
        ran.append(subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False))
        assert ran[0].returncode == 0, ran[0].stdout + ran[0].stderr

    event = terminal(fleet, start, [workflow_id])[workflow_id]
    assert event.kind is EventKind.COMPLETED, event.error
    assert event.output == {"words": 3}
    # Keyed and murmur2-partitioned: on its workflow's partition at once, not forwarded.
    requests = fleet.client.topics.requests
    home = partition_for(workflow_id, partitions(fleet, requests))
    ours = [r for r in read_all(fleet, requests) if r.key() == workflow_id.encode()]
    assert [r.partition() for r in ours] == [home]
