"""Codec: single-object framing, round trips, poison input, schema evolution."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
from pathlib import Path

import fastavro.schema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.codec import (
    SINGLE_OBJECT_MAGIC,
    Codec,
    SchemaStore,
    SchemaVersion,
    compatibility_problems,
    load_schema,
    rabin_fingerprint,
)
from fleet.errors import DecodeError, SchemaError
from fleet.messages import (
    DeadLetter,
    EventKind,
    Header,
    TaskAssigned,
    TaskError,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowError,
    WorkflowEvent,
    WorkflowSubmitted,
)

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
STORE = SchemaStore(SCHEMAS)
CODEC = Codec(STORE)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.text(min_size=1, max_size=30)
ms = st.integers(0, 2**62)


def test_rabin_fingerprint_matches_fastavro_for_every_bundled_schema() -> None:
    for schema in STORE.current.values():
        canonical = fastavro.schema.to_parsing_canonical_form(schema.parsed)
        # fastavro prints the 8 bytes in the order the single-object header writes them
        assert schema.fingerprint.hex() == fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")


def test_rabin_fingerprint_of_empty_input_is_the_spec_constant() -> None:
    assert rabin_fingerprint(b"") == 0xC15D213AA4D7A795


def test_encoding_is_single_object_framing() -> None:
    event = WorkflowEvent(workflow_id="w", kind=EventKind.ACCEPTED, at_ms=1)
    data = CODEC.encode(event)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == STORE.schema_for("io.fleet.WorkflowEvent").fingerprint


@given(ids, json_values, ms)
def test_workflow_submitted_round_trips(workflow_id: str, spec: object, at: int) -> None:
    message = WorkflowSubmitted(workflow_id=workflow_id, spec=spec, submitted_at_ms=at)  # type: ignore[arg-type]
    assert CODEC.decode(CODEC.encode(message), WorkflowSubmitted) == message


@given(ids, st.integers(1, 100), st.none() | st.integers(0, 10_000), json_values, st.none() | ms)
def test_task_assigned_round_trips(
    task_id: str, attempt: int, index: int | None, payload: object, deadline: int | None
) -> None:
    message = TaskAssigned(
        task_id=task_id,
        workflow_id="w",
        step_id="s",
        capability="c",
        attempt=attempt,
        index=index,
        input=payload,  # type: ignore[arg-type]
        deadline_ms=deadline,
        dispatched_at_ms=5,
    )
    assert CODEC.decode(CODEC.encode(message), TaskAssigned) == message


@given(st.sampled_from(list(TaskStatus)), json_values, st.booleans(), st.booleans())
def test_task_result_round_trips(
    status: TaskStatus, output: object, with_error: bool, retryable: bool
) -> None:
    message = TaskResult(
        task_id="t",
        workflow_id="w",
        step_id="s",
        capability="c",
        attempt=2,
        status=status,
        output=output,  # type: ignore[arg-type]
        error=TaskError(type="ValueError", message="boom", retryable=retryable)
        if with_error
        else None,
        duration_ms=12,
        worker_id="worker-1",
        finished_at_ms=99,
    )
    assert CODEC.decode(CODEC.encode(message), TaskResult) == message


@given(st.sampled_from(list(EventKind)), json_values)
def test_workflow_event_round_trips(kind: EventKind, output: object) -> None:
    message = WorkflowEvent(
        workflow_id="w",
        kind=kind,
        workflow_name="n",
        step_id="s",
        output=output,  # type: ignore[arg-type]
        error=WorkflowError(type="SpecError", message="m", step_id="s", attempt=1),
        submitted_at_ms=1,
        at_ms=2,
    )
    assert CODEC.decode(CODEC.encode(message), WorkflowEvent) == message


@given(st.binary(max_size=64), st.none() | st.binary(max_size=16))
def test_dead_letter_round_trips_raw_bytes(value: bytes, key: bytes | None) -> None:
    message = DeadLetter(
        source_topic="t",
        source_partition=3,
        source_offset=42,
        key=key,
        value=value,
        headers=[Header(key="traceparent", value=b"x"), Header(key="empty")],
        error_type="DecodeError",
        error_message="bad",
        consumer="orchestrator",
        at_ms=1,
    )
    assert CODEC.decode(CODEC.encode(message), DeadLetter) == message


VALID_TASK = TaskAssigned(
    task_id="t",
    workflow_id="w",
    step_id="s",
    capability="c",
    attempt=1,
    input={},
    dispatched_at_ms=1,
)
VALID = CODEC.encode(WorkflowEvent(workflow_id="w", kind=EventKind.COMPLETED, at_ms=1))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty record value"),
        (None, "empty record value"),
        (b"hello world", "not Avro: unknown framing"),
        (b"\xc3\x01\x00", "truncated single-object header"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "schema fingerprint 0000000000000000 unknown"),
        (b"\x00\x00\x00\x00\x07\x02", "Confluent Schema Registry framing (schema id 7)"),
        (VALID[:12], "Avro body does not match io.fleet.WorkflowEvent"),
        (VALID + b"\x00\x00", "2 trailing bytes after io.fleet.WorkflowEvent"),
    ],
)
def test_poison_input_raises_decode_error_with_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=None) as caught:
        CODEC.decode(data, WorkflowEvent, record="the-record")
    assert reason in caught.value.reason
    assert caught.value.record == "the-record"


def test_decoding_as_the_wrong_type_is_a_decode_error() -> None:
    with pytest.raises(
        DecodeError, match=r"expected io\.fleet\.TaskResult, got io\.fleet\.WorkflowEvent"
    ):
        CODEC.decode(VALID, TaskResult)


@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_escape_as_anything_but_decode_error(data: bytes) -> None:
    for cls in (WorkflowSubmitted, TaskAssigned, TaskResult, WorkflowEvent, DeadLetter):
        with contextlib.suppress(DecodeError):
            CODEC.decode(
                SINGLE_OBJECT_MAGIC + STORE.schema_for(cls.schema_name).fingerprint + data, cls
            )


# --- schema evolution -------------------------------------------------------------


def _versions_by_name() -> dict[str, list[SchemaVersion]]:
    grouped: dict[str, list[SchemaVersion]] = {}
    for schema in [*STORE.previous, *STORE.current.values()]:
        grouped.setdefault(schema.name, []).append(schema)
    return {name: sorted(v, key=lambda s: s.version) for name, v in grouped.items()}


@pytest.mark.parametrize("name", sorted(_versions_by_name()))
def test_each_schema_reads_and_is_read_by_its_previous_version(name: str) -> None:
    versions = _versions_by_name()[name]
    assert [v.version for v in versions] == list(range(1, len(versions) + 1)), (
        f"{name}: versions must be 1..n without gaps (keep every previous version)"
    )
    for old, new in itertools.pairwise(versions):
        assert compatibility_problems(old, new) == []


def _variant(tmp_path: Path, base: str, mutate: object) -> SchemaVersion:
    raw = json.loads((SCHEMAS / base).read_text())
    changed = copy.deepcopy(raw)
    mutate(changed)  # type: ignore[operator]
    changed["version"] = raw["version"] + 1
    path = tmp_path / "next.avsc"
    path.write_text(json.dumps(changed))
    return load_schema(path)


def test_compatibility_check_accepts_a_new_field_with_a_default(tmp_path: Path) -> None:
    current = STORE.schema_for("io.fleet.TaskResult")
    added = _variant(
        tmp_path,
        "task_result.avsc",
        lambda s: s["fields"].append({"name": "cost", "type": ["null", "long"], "default": None}),
    )
    assert compatibility_problems(current, added) == []


def test_compatibility_check_rejects_a_new_field_without_a_default(tmp_path: Path) -> None:
    current = STORE.schema_for("io.fleet.TaskResult")
    added = _variant(
        tmp_path, "task_result.avsc", lambda s: s["fields"].append({"name": "cost", "type": "long"})
    )
    problems = compatibility_problems(current, added)
    assert problems and problems[0].startswith("backward")


def test_compatibility_check_rejects_a_removed_field_without_a_default(tmp_path: Path) -> None:
    current = STORE.schema_for("io.fleet.TaskResult")
    removed = _variant(
        tmp_path,
        "task_result.avsc",
        lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != "worker_id"]),
    )
    problems = compatibility_problems(current, removed)
    assert problems and problems[0].startswith("forward")


def test_a_store_without_schemas_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no Avro schemas found"):
        SchemaStore(tmp_path)


def test_decode_any_picks_the_type_the_writer_named() -> None:
    cancel = WorkflowCancelRequested(workflow_id="w", reason="user", requested_at_ms=3)
    submit = WorkflowSubmitted(workflow_id="w", spec={"name": "x"}, submitted_at_ms=1)
    either = (WorkflowSubmitted, WorkflowCancelRequested)
    assert CODEC.decode_any(CODEC.encode(cancel), either) == cancel
    assert CODEC.decode_any(CODEC.encode(submit), either) == submit
    with pytest.raises(
        DecodeError, match=r"or io\.fleet\.WorkflowCancelRequested, got io\.fleet\.TaskAssigned"
    ):
        CODEC.decode_any(
            CODEC.encode(VALID_TASK),
            either,
        )


def test_a_reader_of_the_previous_event_schema_sees_step_started_as_unknown() -> None:
    """STEP_STARTED is appended to the enum, whose default is UNKNOWN: a consumer built on
    v3 keeps reading the stream during a rolling upgrade instead of failing on it."""
    event = WorkflowEvent(
        workflow_id="w",
        kind=EventKind.STEP_STARTED,
        step_id="s",
        task_id="w/s/0",
        attempt=2,
        at_ms=1,
    )
    current = STORE.schema_for("io.fleet.WorkflowEvent")
    [v3] = [s for s in STORE.previous if s.name == current.name and s.version == 3]
    body = io.BytesIO(CODEC.encode(event)[10:])
    old = fastavro.schemaless_reader(body, current.parsed, v3.parsed)
    assert isinstance(old, dict)
    assert (old["kind"], old["step_id"]) == ("UNKNOWN", "s")
    assert CODEC.decode(CODEC.encode(event), WorkflowEvent) == event


def test_a_reader_of_the_previous_event_schema_sees_step_waiting_as_unknown() -> None:
    """STEP_WAITING and its reason (v5): a v4 consumer reads UNKNOWN and skips the field."""
    event = WorkflowEvent(
        workflow_id="w",
        kind=EventKind.STEP_WAITING,
        step_id="s",
        task_id="w/s/0",
        attempt=1,
        reason="no live agent serves capability 'x' (none is registered)",
        at_ms=1,
    )
    current = STORE.schema_for("io.fleet.WorkflowEvent")
    [v4] = [s for s in STORE.previous if s.name == current.name and s.version == 4]
    old = fastavro.schemaless_reader(
        io.BytesIO(CODEC.encode(event)[10:]), current.parsed, v4.parsed
    )
    assert isinstance(old, dict)
    assert (old["kind"], old["task_id"], "reason" in old) == ("UNKNOWN", "w/s/0", False)
    assert CODEC.decode(CODEC.encode(event), WorkflowEvent) == event
