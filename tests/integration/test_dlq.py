"""Dead letters and cancellation on a real broker, through the real ``fleet`` command.

Dead letters are made the way consumers make them: records produced onto a topic, consumed
back, failed to decode and handed to ``fleet.kafka.deadletter.DeadLetters``. Nothing consumes the
source topics here, so every re-injected record stays there to be counted and compared.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from fleet.errors import DecodeError
from fleet.kafka import record_headers
from fleet.kafka.client import FleetClient
from fleet.kafka.deadletter import DeadLetters
from fleet.kafka.topics import apply_topics
from fleet.messages import TaskAssigned, WorkflowCancelRequested, WorkflowSubmitted
from fleet.settings import Settings
from fleet.topology import TopicSpec, Topology
from fleetctl.dlq import (
    REDRIVEN,
    REDRIVEN_FROM,
    DeadLetterOffice,
    LetterFilter,
    Marker,
    parse_id,
)
from fleetctl.supervisor import child_env
from tests.fleet_cli import run_fleet

pytestmark = pytest.mark.kafka

Headers = list[tuple[str, bytes | None]]
TRACEPARENT = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


@dataclass
class Env:
    settings: Settings
    client: FleetClient

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_fleet(child_env(self.settings), *args, timeout=timeout)

    def new_topic(self, name: str, partitions: int = 3) -> str:
        topic = self.settings.topic_prefix + f"{name}-{uuid.uuid4().hex[:6]}"
        topology = Topology.load(self.settings.topology_file)
        apply_topics(
            self.client.admin, topology, {topic: TopicSpec(key="any", partitions=partitions)}
        )
        return topic

    def read(self, topic: str, *, committed: bool = True) -> list[Message]:
        """Every record of ``topic`` from the beginning to its end, as a reader sees it."""
        consumer = self.client.clients.consumer(
            f"test-reader-{uuid.uuid4().hex}",
            **{
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                "isolation.level": "read_committed" if committed else "read_uncommitted",
            },
        )
        metadata = self.client.admin.list_topics(topic=topic, timeout=10).topics[topic]
        pending = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in pending])
        found: list[Message] = []
        deadline = time.monotonic() + 30
        try:
            while pending:
                assert time.monotonic() < deadline, f"{topic}: no end for partitions {pending}"
                for record in consumer.consume(500, timeout=0.1):
                    error = record.error()
                    if error is None:
                        found.append(record)
                    elif error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(record.partition())
                    else:
                        raise AssertionError(str(error))
        finally:
            consumer.close()
        return found

    def dead_letter(
        self, topic: str, records: list[tuple[bytes | None, bytes, Headers]], error: str = ""
    ) -> dict[str, Message]:
        """Produce ``records``, consume them back, dead-letter each; {dead-letter ID: record}."""
        producer = self.client.clients.producer()
        for key, value, headers in records:
            producer.produce(topic, key=key, value=value, headers=headers)
        assert producer.flush(10) == 0
        consumed = self.read(topic)
        assert len(consumed) == len(records)
        ids: dict[str, Message] = {}
        writer = DeadLetters(producer, self.client.codec, self.client.topics, "test-consumer")
        for record in consumed:
            try:
                self.client.codec.decode(record.value(), TaskAssigned, record=record)
                failure: Exception = ValueError(error or "refused by the test")
            except DecodeError as exc:
                failure = ValueError(error) if error else exc
            writer.send(
                record,
                failure,
                on_delivery=lambda err, msg, src=record: (
                    ids.setdefault(f"{msg.partition()}:{msg.offset()}", src)
                    if err is None
                    else None
                ),
            )
        assert producer.flush(10) == 0
        assert len(ids) == len(records)
        return ids


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str) -> Iterator[Env]:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"dlq-{uuid.uuid4().hex[:8]}.",
        }
    )
    applied = run_fleet(child_env(settings), "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    assert f"created  {settings.topic_prefix}{REDRIVEN}" in applied.stdout
    client = FleetClient(settings, role="test")
    yield Env(settings, client)
    client.close()


def _listed(stdout: str) -> dict[str, list[str]]:
    """``dlq list`` rows by ID, split into ID, time, source, error, redriven, message."""
    rows = stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "TIME", "(UTC)"]
    return {row.split()[0]: row.split(None, 5) for row in rows[1:]}


def _headers(record: Message) -> Headers:
    return record_headers(record)


def test_list_show_and_redrive_each_dead_letter_exactly_once(env: Env) -> None:
    source = env.new_topic("src")
    other = env.new_topic("other")
    letters = env.dead_letter(
        source,
        [
            (b"key-%d" % i, b"\x00garbage %d" % i, [TRACEPARENT, ("x-n", b"%d" % i)])
            for i in range(3)
        ],
    )
    others = env.dead_letter(other, [(None, b"also garbage", [])], error="boom")

    # list: one row per dead letter, with its ID, source coordinates and error.
    listed = env.cli("dlq", "list", "--topic", source.removeprefix(env.settings.topic_prefix))
    assert listed.returncode == 0, listed.stderr
    rows = _listed(listed.stdout)
    assert set(rows) == set(letters)
    for letter_id, record in letters.items():
        _id, _time, where, error, redriven, message = rows[letter_id]
        assert where == f"{source}/{record.partition()}@{record.offset()}"
        assert (error, redriven) == ("DecodeError", "no")
        assert message.startswith("Confluent Schema Registry framing")  # 00 is its magic byte

    as_json = env.cli("dlq", "list", "--json", "--since", "1h")
    assert as_json.returncode == 0, as_json.stderr
    docs = {d["id"]: d for d in map(json.loads, as_json.stdout.splitlines())}
    docs = {i: d for i, d in docs.items() if d["source_topic"] in (source, other)}
    assert set(docs) == set(letters) | set(others)
    (other_id,) = others
    assert docs[other_id]["error_type"] == "ValueError"
    assert docs[other_id]["error_message"] == "boom"
    assert docs[other_id]["key"] is None
    assert docs[other_id]["consumer"] == "test-consumer"
    assert not any(d["redriven"] for d in docs.values())
    future = env.cli("dlq", "list", "--json", "--since", "2999-01-01T00:00:00Z")
    assert (future.returncode, future.stdout) == (0, "")

    # show: everything in one dead letter.
    first_id = min(letters)
    first = letters[first_id]
    shown = env.cli("dlq", "show", first_id)
    assert shown.returncode == 0, shown.stderr
    assert f"source:      {source}/{first.partition()}@{first.offset()}" in shown.stdout
    assert "error type:  DecodeError" in shown.stdout
    assert "consumer:    test-consumer" in shown.stdout
    assert f"key:         {first.key().decode()}" in shown.stdout
    assert f"traceparent: {TRACEPARENT[1].decode()}" in shown.stdout
    assert "fleet-error-type: DecodeError" in shown.stdout  # the dead-letter record's headers
    assert "00000000  00 67 61 72 62 61 67 65" in shown.stdout
    assert "decoded:     none (Confluent Schema Registry framing" in shown.stdout
    assert "redriven:    no" in shown.stdout

    # --dry-run: lists what would go, injects nothing.
    dry = env.cli("dlq", "redrive", "--topic", source, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "would redrive 3, skipped 0 already redriven"
    assert len(env.read(source)) == 3
    assert env.read(env.settings.topic_prefix + REDRIVEN) == []

    # redrive: exactly the matching dead letters, back onto their source partition.
    done = env.cli("dlq", "redrive", "--topic", source)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "redriven 3, skipped 0 already redriven"
    after = env.read(source)
    assert len(after) == 6
    redriven = {
        dict(_headers(r)).get(REDRIVEN_FROM, b"").decode(): r
        for r in after
        if REDRIVEN_FROM in dict(_headers(r))
    }
    assert set(redriven) == set(letters)
    for letter_id, original in letters.items():
        copy = redriven[letter_id]
        assert (copy.key(), copy.value(), copy.partition()) == (
            original.key(),
            original.value(),
            original.partition(),
        )
        assert _headers(copy) == [*_headers(original), (REDRIVEN_FROM, letter_id.encode())]
    assert len(env.read(other)) == 1  # the other topic's dead letter did not match

    # again: nothing more is injected.
    again = env.cli("dlq", "redrive", "--topic", source)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "redriven 0, skipped 3 already redriven"
    assert len(env.read(source)) == 6

    relisted = _listed(env.cli("dlq", "list", "--topic", source, "--topic", other).stdout)
    assert {i: row[4] for i, row in relisted.items()} == {
        **dict.fromkeys(letters, "yes"),
        other_id: "no",
    }
    assert "redriven:    yes, at " in env.cli("dlq", "show", first_id).stdout

    # by ID (with a filter that must hold too).
    miss = env.cli("dlq", "redrive", "--id", other_id, "--error-type", "DecodeError")
    assert miss.stdout.splitlines()[-1] == "redriven 0, skipped 0 already redriven"
    hit = env.cli("dlq", "redrive", "--id", other_id, "--error-type", "ValueError")
    assert hit.returncode == 0, hit.stderr
    assert hit.stdout.splitlines() == [
        f"redriven {other_id} -> {other}",
        "redriven 1, skipped 0 already redriven",
    ]
    (_original, copy_other) = env.read(other)
    assert copy_other.key() is None and copy_other.value() == b"also garbage"


def test_show_decodes_a_known_message_and_refuses_unknown_ids(env: Env) -> None:
    request = WorkflowSubmitted(workflow_id="wf-shown", spec={"name": "x"}, submitted_at_ms=1)
    source = env.new_topic("known")
    letters = env.dead_letter(
        source, [(b"wf-shown", env.client.codec.encode(request), [])], error="spec refused"
    )
    (letter_id,) = letters
    shown = env.cli("dlq", "show", letter_id)
    assert shown.returncode == 0, shown.stderr
    assert "error:       spec refused" in shown.stdout
    decoded = shown.stdout.split("decoded as WorkflowSubmitted:\n", 1)[1]
    assert json.loads(decoded) == request.model_dump(mode="json")

    missing = env.cli("dlq", "show", "0:99999999")
    assert missing.returncode == 1
    assert "no dead letter 0:99999999" in missing.stderr
    bad = env.cli("dlq", "show", "zero")
    assert bad.returncode == 2
    assert "is not a dead-letter ID (PARTITION:OFFSET" in bad.stderr


def test_a_redrive_that_crashed_half_way_is_finished_once_by_the_next_run(env: Env) -> None:
    source = env.new_topic("crash", partitions=1)
    letters = env.dead_letter(source, [(b"a", b"one", []), (b"b", b"two", [])])
    office = DeadLetterOffice(env.settings)
    # A run that produced its records and markers, then died before committing.
    zombie = office.clients.producer(**{"transactional.id": office.transactional_id})
    zombie.init_transactions(30)
    zombie.begin_transaction()
    for letter_id, record in letters.items():
        zombie.produce(source, key=record.key(), value=record.value(), partition=0)
        marker = Marker(letter_id, 1, f"{source}/0@{record.offset()}", "zombie")
        zombie.produce(office.markers_topic, key=letter_id.encode(), value=marker.encode())
    assert zombie.flush(10) == 0
    assert len(env.read(source, committed=False)) == 4  # written, not committed

    done = env.cli("dlq", "redrive", "--topic", source)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "redriven 2, skipped 0 already redriven"
    committed = env.read(source)
    assert [(r.key(), r.value()) for r in committed] == [
        (b"a", b"one"),
        (b"b", b"two"),
        (b"a", b"one"),
        (b"b", b"two"),
    ]
    assert all(REDRIVEN_FROM in dict(_headers(r)) for r in committed[2:])
    with pytest.raises(KafkaException):  # the crashed run was fenced: it can commit nothing
        zombie.commit_transaction(10)
    assert len(env.read(source)) == 4

    # The same, in process: the library call the CLI makes.
    report = office.redrive(LetterFilter(topics=frozenset({source})))
    assert (len(report.redriven), len(report.already), report.refused) == (0, 2, [])


# Reading the dead-letter topic to the last stable offset (a read_committed consumer's
# end) stopped short of a transaction still open on it and of every dead letter committed
# after it: those were neither listed, shown nor redriven. The end is the high watermark.
@pytest.mark.timeout(120)
def test_a_dead_letter_committed_after_an_open_transaction_is_listed_once_it_is_decided(
    env: Env,
) -> None:
    office = DeadLetterOffice(env.settings)
    topic = office.topics.dead_letters
    partitions = office.partition_count(topic) or 0

    def open_transaction() -> threading.Timer:
        """A transaction on every dead-letter partition, open until aborted 3 s from now
        (a killed writer's stays open until transaction.timeout.ms)."""
        zombie = office.clients.producer(
            **{"transactional.id": f"{env.settings.topic_prefix}zombie-{uuid.uuid4().hex}"}
        )
        zombie.init_transactions(30)
        zombie.begin_transaction()
        for p in range(partitions):
            zombie.produce(topic, key=b"zombie", value=b"never committed", partition=p)
        assert zombie.flush(10) == 0
        aborter = threading.Timer(3.0, lambda: zombie.abort_transaction(30))
        aborter.start()
        return aborter

    source, later = env.new_topic("after-open", partitions=1), env.new_topic("later")
    aborter = open_transaction()
    try:
        (shown_id,) = env.dead_letter(source, [(b"k", b"shown", [])])
        found = office.get(parse_id(shown_id))
    finally:
        aborter.join()
    assert found is not None
    assert found[0].source == f"{source}/0@0"

    aborter = open_transaction()
    try:
        (listed_id,) = env.dead_letter(later, [(b"k", b"listed", [])])
        listed = {str(entry.id) for entry in office.entries()}
    finally:
        aborter.join()
    assert {shown_id, listed_id} <= listed
    rows = _listed(env.cli("dlq", "list", "--topic", source, "--topic", later).stdout)
    assert set(rows) == {shown_id, listed_id}


def test_cancel_produces_a_request_keyed_and_ordered_after_the_submission(env: Env) -> None:
    workflow_id = f"wf-cancel-{uuid.uuid4().hex[:8]}"
    env.client.submit({"name": "to-cancel", "steps": []}, workflow_id)

    cancelled = env.cli("cancel", workflow_id, "--reason", "operator said so")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"{workflow_id}\n"

    ours = [r for r in env.read(env.client.topics.requests) if r.key() == workflow_id.encode()]
    assert len(ours) == 2
    submitted, cancel = ours
    assert cancel.partition() == submitted.partition() and cancel.offset() > submitted.offset()
    assert env.client.codec.decode(submitted.value(), WorkflowSubmitted).workflow_id == workflow_id
    request = env.client.codec.decode(cancel.value(), WorkflowCancelRequested)
    assert (request.workflow_id, request.reason, request.requested_by) == (
        workflow_id,
        "operator said so",
        "cancel",
    )
    assert abs(request.requested_at_ms - time.time() * 1000) < 120_000
    headers = dict(_headers(cancel))
    assert headers["traceparent"] and headers["traceparent"].startswith(b"00-")
    assert b"io.fleet.WorkflowCancelRequested" in (headers["content-type"] or b"")


def test_cancel_wait_without_an_outcome_fails_with_a_reason(env: Env) -> None:
    # No orchestrator runs here: nobody answers, so --wait ends at its timeout, exit 1.
    waited = env.cli("cancel", "wf-nobody", "--wait", "--timeout", "2")
    assert waited.returncode == 1
    assert waited.stdout == ""
    assert "no terminal event for wf-nobody within 2 s" in waited.stderr
