"""JSON requests: accepted when they fit the Avro schema, refused with a reason otherwise."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.codec import Codec, SchemaStore
from fleet.errors import DecodeError
from fleet.json_codec import is_json, media_type
from fleet.messages import (
    BudgetTopUpRequested,
    Message,
    TaskResult,
    WorkflowCancelRequested,
    WorkflowSubmitted,
)

pytestmark = pytest.mark.unit

CODEC = Codec(SchemaStore(Path(__file__).resolve().parents[3] / "schemas"))
REQUESTS = (WorkflowSubmitted, WorkflowCancelRequested, BudgetTopUpRequested)
SPEC = {"name": "hello", "steps": [{"id": "a", "capability": "noop"}]}


def decode(doc: Any, content_type: str | None = None) -> Message:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return CODEC.decode_any(
        data, REQUESTS, content_type=content_type, accept_json=True, record="the-record"
    )


def refused(doc: Any, content_type: str | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(doc, content_type)
    assert caught.value.record == "the-record"  # kept, so the shell can dead-letter it
    return caught.value.reason


def test_a_submission_with_the_spec_as_json_is_the_same_message_as_from_avro() -> None:
    message = WorkflowSubmitted(
        workflow_id="wf-1", spec=SPEC, submitted_at_ms=1_700_000_000_000, submitted_by="java"
    )
    nested = {"workflow_id": "wf-1", "spec": SPEC, "submitted_at_ms": 1_700_000_000_000}
    as_text = {**nested, "spec_json": json.dumps(SPEC)}
    del as_text["spec"]
    for doc in (nested, as_text):
        assert decode({**doc, "submitted_by": "java"}) == message
    assert CODEC.decode_any(CODEC.encode(message), REQUESTS, accept_json=True) == message


def test_optional_fields_take_the_schema_defaults() -> None:
    assert decode({"workflow_id": "w", "spec": SPEC, "submitted_at_ms": 5}) == WorkflowSubmitted(
        workflow_id="w", spec=SPEC, submitted_at_ms=5, submitted_by=None
    )


def test_the_type_comes_from_the_fields_without_a_header() -> None:
    assert decode({"workflow_id": "w", "requested_at_ms": 3}) == WorkflowCancelRequested(
        workflow_id="w", requested_at_ms=3
    )
    top_up = {"workflow_id": "w", "top_up_id": "t-1", "amount": 5_000_000, "requested_at_ms": 3}
    assert decode(top_up) == BudgetTopUpRequested(**top_up)


def test_the_type_comes_from_the_content_type_when_it_names_one() -> None:
    cancel = {"workflow_id": "w", "requested_at_ms": 3, "reason": "no longer needed"}
    expected = WorkflowCancelRequested(**cancel)
    for header in (
        "application/json; schema=io.fleet.WorkflowCancelRequested",
        'application/json;schema="WorkflowCancelRequested"',  # short name, quoted
        "Application/JSON",  # no schema: by its fields
    ):
        assert decode(cancel, header) == expected
    reason = refused(cancel, "application/json; schema=io.fleet.WorkflowSubmitted")
    assert reason.startswith("JSON request is not a valid WorkflowSubmitted: ")
    assert "requested_at_ms: unknown field" in reason


def test_a_leading_brace_is_json_and_avro_never_is() -> None:
    assert is_json(b' \n{"a": 1}', None)
    assert is_json(b'\xef\xbb\xbf{"a": 1}', None)  # a UTF-8 byte order mark
    assert is_json(b"[1]", "application/json; schema=x")
    assert is_json(b'{"a": 1}', "application/vnd.apache.avro+binary")  # a copied header
    assert not is_json(b"[1]", None)
    message = WorkflowCancelRequested(workflow_id="w", requested_at_ms=1)
    assert not is_json(CODEC.encode(message), None)
    assert media_type("application/json; schema=io.fleet.X") == (
        "application/json",
        {"schema": "io.fleet.X"},
    )


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b'{"workflow_id": "w",', "not valid JSON: "),
        (b'{"workflow_id": "w", "spec": {}, "submitted_at_ms": NaN}', "NaN is not JSON"),
        (
            {"workflow_id": "w", "spec": {}},
            "not a valid WorkflowSubmitted (nor a valid WorkflowCancelRequested or "
            "BudgetTopUpRequested): submitted_at_ms: missing (long)",
        ),
        (
            {"workflow_id": "w", "spec": {}, "submitted_at_ms": "1700000000000"},
            'submitted_at_ms: expected long, got a string "1700000000000"',
        ),
        (
            {"workflow_id": "w", "spec": {}, "submitted_at_ms": 1.7e12},
            "submitted_at_ms: expected long, got a number",
        ),
        (
            {"workflow_id": "w", "spec": {}, "submitted_at_ms": True},
            "submitted_at_ms: expected long, got a boolean true",
        ),
        (
            {"workflow_id": "w", "spec": {}, "submitted_at_ms": 2**63},
            "submitted_at_ms: expected long, got an integer",
        ),
        (
            {"workflow_id": None, "spec": {}, "submitted_at_ms": 1},
            "workflow_id: expected string, got null",
        ),
        (  # Avro's own JSON encoding wraps union values: plain JSON is asked for
            {"workflow_id": "w", "spec": {}, "submitted_at_ms": 1, "submitted_by": {"string": "x"}},
            'submitted_by: expected null or string, got an object {"string": "x"}',
        ),
        (
            {"workflowId": "w", "spec": {}, "submitted_at_ms": 1},
            "workflowId: unknown field (fields: workflow_id, spec or spec_json, "
            "submitted_at_ms, submitted_by); workflow_id: missing (string)",
        ),
        (
            {"workflow_id": "w", "submitted_at_ms": 1},
            "spec or spec_json: missing (string)",
        ),
        (
            {"workflow_id": "w", "spec": {}, "spec_json": "{}", "submitted_at_ms": 1},
            "spec: give spec (JSON) or spec_json (text), not both",
        ),
        (
            {"workflow_id": "w", "spec_json": "{name: x}", "submitted_at_ms": 1},
            "spec_json: not JSON text (",
        ),
    ],
)
def test_a_request_that_does_not_fit_is_refused_with_the_reason(doc: Any, reason: str) -> None:
    assert reason in refused(doc)


def test_a_value_the_header_calls_json_must_be_a_json_object() -> None:
    json_type = "application/json"
    assert refused(b"\xc3\x01 Avro?", json_type).startswith("not valid JSON: ")
    assert refused([1, 2], json_type) == (
        "a JSON request is an object with the schema's fields, got a list"
    )


def test_a_header_naming_a_type_the_topic_does_not_carry_is_refused() -> None:
    reason = refused({"workflow_id": "w"}, "application/json; schema=io.fleet.TaskResult")
    assert reason == (
        "content-type names schema io.fleet.TaskResult; this topic takes "
        "io.fleet.WorkflowSubmitted or io.fleet.WorkflowCancelRequested or "
        "io.fleet.BudgetTopUpRequested"
    )


def test_json_is_not_accepted_unless_asked_for() -> None:
    """Only the requests topic takes JSON: elsewhere it stays "not Avro", with a hint."""
    with pytest.raises(DecodeError, match=r"not Avro: unknown framing starting 7b22 \(JSON\?"):
        CODEC.decode(b'{"task_id": "t"}', TaskResult)


@given(st.binary(max_size=60))
def test_arbitrary_bytes_after_a_brace_never_escape_as_anything_but_decode_error(
    data: bytes,
) -> None:
    with contextlib.suppress(DecodeError):
        decode(b"{" + data)


@given(
    st.dictionaries(
        st.sampled_from(["workflow_id", "spec", "spec_json", "submitted_at_ms", "reason", "x"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.just({}),
        max_size=5,
    )
)
def test_arbitrary_objects_decode_to_a_valid_request_or_a_decode_error(doc: Any) -> None:
    try:
        message = decode(doc)
    except DecodeError:
        return
    assert isinstance(message, REQUESTS)
