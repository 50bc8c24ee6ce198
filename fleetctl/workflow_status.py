"""What ``fleet status ID`` says of one workflow: where it stands, from its events alone.

Pure: it reads a :class:`~fleet.kafka.history.History` (every event of the workflow
still on its partition) and needs no broker. A workflow is UNKNOWN (nothing of it on the
topics), SUBMITTED (its request waits, no orchestrator has accepted it yet), RUNNING, or
how it ended. A step is done once STEP_COMPLETED; it runs from its latest STEP_STARTED
until then. A ``for_each`` step lists each element started (the events say when the
whole step completes, not when each element does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.kafka.history import History
from fleet.messages import EventKind, WorkflowEvent


@dataclass(frozen=True)
class Running:
    step: str  # step id, with [index] for a for_each element
    attempt: int | None
    started_at_ms: int


@dataclass(frozen=True)
class Status:
    workflow_id: str
    state: str  # UNKNOWN, SUBMITTED, RUNNING, or the terminal kind
    name: str | None
    submitted_at_ms: int | None
    completed: tuple[str, ...]  # step ids, in completion order
    running: tuple[Running, ...]
    last: WorkflowEvent | None
    complete: bool  # the partition was read to its end

    @property
    def known(self) -> bool:
        return self.state != "UNKNOWN"

    def as_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "state": self.state,
            "name": self.name,
            "submitted_at_ms": self.submitted_at_ms,
            "steps_completed": list(self.completed),
            "steps_running": [
                {"step": r.step, "attempt": r.attempt, "started_at_ms": r.started_at_ms}
                for r in self.running
            ],
            "last_event": None if self.last is None else self.last.model_dump(mode="json"),
            "read_to_end": self.complete,
        }


def status_of(workflow_id: str, history: History) -> Status:
    events = history.events
    last = events[-1] if events else None
    if last is not None:
        state = last.kind.value if last.kind.terminal else "RUNNING"
    else:
        state = "SUBMITTED" if history.submitted else "UNKNOWN"
    name = next((e.workflow_name for e in events if e.workflow_name), None)
    submitted = next((e.submitted_at_ms for e in events if e.submitted_at_ms), None)
    completed: list[str] = []
    running: dict[tuple[str, int | None], Running] = {}
    for event in events:
        if event.step_id is None:
            continue
        if event.kind is EventKind.STEP_STARTED:
            label = event.step_id + ("" if event.index is None else f"[{event.index}]")
            running[(event.step_id, event.index)] = Running(label, event.attempt, event.at_ms)
        elif event.kind is EventKind.STEP_COMPLETED:
            completed.append(event.step_id)
            running = {key: r for key, r in running.items() if key[0] != event.step_id}
    if last is not None and last.kind.terminal:
        running = {}  # nothing runs for a workflow that ended (its tasks were cancelled)
    return Status(
        workflow_id=workflow_id,
        state=state,
        name=name,
        submitted_at_ms=submitted,
        completed=tuple(completed),
        running=tuple(running.values()),
        last=last,
        complete=history.complete,
    )
