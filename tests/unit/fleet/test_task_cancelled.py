"""TaskCancelled on the wire: round trips, and its schema evolves like every other."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.codec import (
    SINGLE_OBJECT_MAGIC,
    Codec,
    SchemaStore,
    compatibility_problems,
    load_schema,
)
from fleet.messages import CancelReason, TaskCancelled

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
STORE = SchemaStore(SCHEMAS)
CODEC = Codec(STORE)


@given(
    st.text(min_size=1, max_size=30),
    st.integers(1, 100),
    st.sampled_from([*(r.value for r in CancelReason), "a reason from the future"]),
    st.text(max_size=40),
)
def test_task_cancelled_round_trips_any_reason(
    task_id: str, attempt: int, reason: str, detail: str
) -> None:
    message = TaskCancelled(
        task_id=task_id,
        workflow_id="w",
        capability="c",
        attempt=attempt,
        reason=reason,
        detail=detail,
        at_ms=7,
    )
    assert CODEC.decode(CODEC.encode(message), TaskCancelled) == message


def test_task_cancelled_is_a_bundled_schema_with_a_version() -> None:
    schema = STORE.schema_for(TaskCancelled.schema_name)
    assert (schema.name, schema.version) == ("io.fleet.TaskCancelled", 1)
    assert schema.path.name == "task_cancelled.avsc"


def test_a_next_version_with_a_defaulted_field_reads_and_is_read_by_this_one(
    tmp_path: Path,
) -> None:
    raw = json.loads((SCHEMAS / "task_cancelled.avsc").read_text())
    raw["version"] += 1
    raw["fields"].append({"name": "worker_hint", "type": ["null", "string"], "default": None})
    path = tmp_path / "next.avsc"
    path.write_text(json.dumps(raw))
    current = STORE.schema_for(TaskCancelled.schema_name)
    assert compatibility_problems(current, load_schema(path)) == []


def test_a_writer_without_detail_is_read_with_detail_empty(tmp_path: Path) -> None:
    """A writer whose schema lacks the defaulted ``detail`` (as one that drops it would):
    this version reads its records, with the default."""
    raw = json.loads((SCHEMAS / "task_cancelled.avsc").read_text())
    raw["version"] = 0
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "detail"]
    (tmp_path / "previous").mkdir()
    (tmp_path / "previous" / "task_cancelled.v0.avsc").write_text(json.dumps(raw))
    for current in SCHEMAS.glob("*.avsc"):
        (tmp_path / current.name).write_text(current.read_text())
    store = SchemaStore(tmp_path)
    writer = next(v for v in store.previous if v.name == TaskCancelled.schema_name)
    body = io.BytesIO()
    record = {"task_id": "t", "workflow_id": "w", "capability": "c", "attempt": 2}
    fastavro.schemaless_writer(body, writer.parsed, {**record, "reason": "timed_out", "at_ms": 1})
    data = SINGLE_OBJECT_MAGIC + writer.fingerprint + body.getvalue()
    decoded = Codec(store).decode(data, TaskCancelled)
    assert (decoded.attempt, decoded.reason, decoded.detail) == (2, "timed_out", "")
