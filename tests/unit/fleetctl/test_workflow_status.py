"""``fleet status``: where a workflow stands, from its events alone."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.kafka.history import History
from fleet.messages import EventKind, WorkflowError, WorkflowEvent
from fleetctl.commands.status import status_lines
from fleetctl.workflow_status import Running, status_of

pytestmark = pytest.mark.unit

WF = "wf-1"
T0 = 1_767_225_600_000


def event(kind: EventKind, at_s: float, **fields: Any) -> WorkflowEvent:
    return WorkflowEvent(workflow_id=WF, kind=kind, at_ms=T0 + int(at_s * 1000), **fields)


ACCEPTED = event(EventKind.ACCEPTED, 0.01, workflow_name="hello", submitted_at_ms=T0)


def test_nothing_on_the_topics_is_unknown() -> None:
    found = status_of(WF, History((), submitted=False, complete=True))
    assert (found.state, found.known) == ("UNKNOWN", False)
    assert status_lines(found) == [f"{WF}  unknown: no event or submission of it on the topics"]


def test_a_request_without_events_waits_for_an_orchestrator() -> None:
    found = status_of(WF, History((), submitted=True, complete=True))
    assert (found.state, found.known) == ("SUBMITTED", True)
    assert "is `fleet orchestrator` running?" in status_lines(found)[1]


def test_a_running_workflow_lists_done_and_running_steps() -> None:
    events = (
        ACCEPTED,
        event(EventKind.STEP_STARTED, 0.02, step_id="greet", attempt=1),
        event(EventKind.STEP_COMPLETED, 0.5, step_id="greet", output={"g": 1}),
        event(EventKind.STEP_STARTED, 0.6, step_id="fan", attempt=1, index=0),
        event(EventKind.STEP_STARTED, 0.6, step_id="fan", attempt=1, index=1),
        event(EventKind.STEP_STARTED, 0.7, step_id="shout", attempt=1),
        event(EventKind.STEP_STARTED, 2.7, step_id="shout", attempt=2),  # a retry
    )
    found = status_of(WF, History(events, submitted=False, complete=True))
    assert (found.state, found.name, found.submitted_at_ms) == ("RUNNING", "hello", T0)
    assert found.completed == ("greet",)
    assert found.running == (
        Running("fan[0]", 1, T0 + 600),
        Running("fan[1]", 1, T0 + 600),
        Running("shout", 2, T0 + 2700),
    )
    lines = status_lines(found)
    assert lines[0].startswith(f"{WF}  RUNNING  hello  submitted 2026-01-01 00:00:00.000Z")
    assert "running for" in lines[0]
    assert lines[1] == "steps completed (1): greet"
    assert (
        lines[2] == "steps running (3): fan[0] (attempt 1), fan[1] (attempt 1), shout (attempt 2)"
    )
    assert lines[3] == "last event: STEP_STARTED step shout (attempt 2)"


def test_an_ended_workflow_says_how_and_how_long_it_took() -> None:
    events = (
        ACCEPTED,
        event(EventKind.STEP_STARTED, 0.02, step_id="a", attempt=1),
        event(
            EventKind.FAILED,
            1.25,
            error=WorkflowError(type="ValueError", message="bad", step_id="a", attempt=1),
        ),
    )
    found = status_of(WF, History(events, submitted=False, complete=True))
    assert (found.state, found.running, found.completed) == ("FAILED", (), ())
    lines = status_lines(found)
    assert lines[0].endswith("took 1.2 s"), lines[0]
    assert lines[-1] == "last event: FAILED cause ValueError at step a (attempt 1): bad"
    as_json = found.as_json()
    assert as_json["state"] == "FAILED" and as_json["steps_running"] == []
    assert as_json["last_event"]["error"]["type"] == "ValueError"
