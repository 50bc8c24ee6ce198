"""Workflow state as changelog records (JSON-able, versioned) and back.

A record is the whole state of one workflow, keyed by its id in the changelog topic:

- active: ``{"v": 1, "state": "active", "spec", "submitted_at_ms", "outputs",
  "running", "tasks"}`` (spec as its JSON document; each task with its attempt,
  dispatch time, deadline, scheduled retry and, while it waits for a live agent, since
  when);
- finished: ``{"v": 1, "state": "finished", "kind", "at_ms"}``.

Timers and the in-flight count are not stored: both follow from the state. ``decode``
validates a record fully, so a corrupt or foreign record fails alone with a
:class:`~fleet.errors.DecodeError` instead of breaking the engine later.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from fleet.errors import DecodeError
from fleet.messages import EventKind, LeaseGrant, UsageLine
from orchestrator.market.budget import Budget
from orchestrator.spec import WorkflowSpec
from orchestrator.state import FinishedWorkflow, StepRun, TaskRun, WorkflowState

VERSION = 1

# The returned records share JSON values (inputs, outputs, the spec document) with the
# live state; the engine never mutates those, and the shell only encodes them.


def encode_active(state: WorkflowState) -> dict[str, JsonValue]:
    if state.spec_doc is None:
        state.spec_doc = state.spec.model_dump(mode="json")
    running: dict[str, JsonValue] = {
        step_id: {
            "task_ids": list(run.task_ids),
            "remaining": run.remaining,
            "fan_out": run.fan_out,
        }
        for step_id, run in state.running.items()
    }
    tasks: dict[str, JsonValue] = {task_id: _task(run) for task_id, run in state.tasks.items()}
    record: dict[str, JsonValue] = {
        "v": VERSION,
        "state": "active",
        "spec": state.spec_doc,
        "submitted_at_ms": state.submitted_at_ms,
        "outputs": dict(state.outputs),
        "running": running,
        "tasks": tasks,
    }
    # Market fields only when used: a workflow without resources keeps the record it had.
    if state.budget is not None:
        record["budget"] = state.budget.to_json()
        record["band"] = state.band
    if state.usage:  # likewise: only once a handler reported usage
        record["usage"] = [line.model_dump(mode="json") for line in state.usage]
    return record


def _task(run: TaskRun) -> dict[str, JsonValue]:
    task: dict[str, JsonValue] = {
        "step_id": run.step_id,
        "index": run.index,
        "attempt": run.attempt,
        "dispatched_at_ms": run.dispatched_at_ms,
        "deadline_ms": run.deadline_ms,
        "input": run.input,
        "succeeded": run.succeeded,
        "output": run.output,
        "retry_at_ms": run.retry_at_ms,
    }
    if run.acquiring:
        task["acquiring"] = True
    if run.bid is not None:
        task["bid"] = run.bid
    if run.leases:
        task["leases"] = {pool: lease.model_dump() for pool, lease in run.leases.items()}
    if run.waiting_since_ms is not None:  # omitted otherwise: older records read the same
        task["waiting_since_ms"] = run.waiting_since_ms
    if run.link:  # likewise: only once the task escalated
        task["link"] = run.link
        task["link_base"] = run.link_base
        task["causes"] = list(run.causes)
    return task


def encode_finished(finished: FinishedWorkflow) -> dict[str, JsonValue]:
    record: dict[str, JsonValue] = {
        "v": VERSION,
        "state": "finished",
        "kind": finished.kind.value,
        "at_ms": finished.at_ms,
    }
    if not finished.announced:  # omitted when true: older records read the same
        record["announced"] = False
    return record


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Task(_Record):
    step_id: str
    index: int | None
    attempt: int = Field(ge=1)
    dispatched_at_ms: int
    deadline_ms: int
    input: JsonValue
    succeeded: bool
    output: JsonValue
    retry_at_ms: int | None
    acquiring: bool = False
    bid: str | None = None
    leases: dict[str, LeaseGrant] = {}
    waiting_since_ms: int | None = None
    link: int = Field(default=0, ge=0)
    link_base: int = Field(default=0, ge=0)
    causes: list[str] = []


class _Step(_Record):
    task_ids: list[str] = Field(min_length=1)
    remaining: int = Field(ge=1)
    fan_out: bool


class _Active(_Record):
    v: Literal[1]
    state: Literal["active"]
    spec: WorkflowSpec
    submitted_at_ms: int
    outputs: dict[str, JsonValue]
    running: dict[str, _Step]
    tasks: dict[str, _Task]
    budget: JsonValue = None
    band: int = 0
    usage: list[UsageLine] = []


class _Finished(_Record):
    v: Literal[1]
    state: Literal["finished"]
    kind: EventKind
    at_ms: int
    announced: bool = True


_RECORD: TypeAdapter[_Active | _Finished] = TypeAdapter(
    Annotated[_Active | _Finished, Field(discriminator="state")]
)


def decode(workflow_id: str, record: JsonValue) -> WorkflowState | FinishedWorkflow:
    """The state a record describes, or :class:`DecodeError` saying what is wrong."""
    try:
        parsed = _RECORD.validate_python(record)
    except ValidationError as exc:
        raise DecodeError(f"state record of workflow {workflow_id}: {exc}") from exc
    if isinstance(parsed, _Finished):
        if not parsed.kind.terminal:
            raise DecodeError(f"state record of workflow {workflow_id}: {parsed.kind} is not final")
        return FinishedWorkflow(parsed.kind, parsed.at_ms, parsed.announced)
    state = WorkflowState(
        workflow_id,
        parsed.spec,
        parsed.submitted_at_ms,
        outputs=dict(parsed.outputs),
        running={
            step_id: StepRun(list(step.task_ids), step.remaining, step.fan_out)
            for step_id, step in parsed.running.items()
        },
        tasks={
            task_id: TaskRun(
                task.step_id,
                task.index,
                task.attempt,
                task.dispatched_at_ms,
                task.deadline_ms,
                task.input,
                succeeded=task.succeeded,
                output=task.output,
                retry_at_ms=task.retry_at_ms,
                acquiring=task.acquiring,
                bid=task.bid,
                leases=dict(task.leases),
                waiting_since_ms=task.waiting_since_ms,
                link=task.link,
                link_base=task.link_base,
                causes=list(task.causes),
            )
            for task_id, task in parsed.tasks.items()
        },
        budget=None if parsed.budget is None else Budget.from_json(parsed.budget),
        band=parsed.band,
        usage=list(parsed.usage),
    )
    problem = _inconsistency(state)
    if problem is not None:
        raise DecodeError(f"state record of workflow {workflow_id}: {problem}")
    return state


def _inconsistency(state: WorkflowState) -> str | None:
    """What in a well-typed record contradicts itself (and would break the engine)."""
    return next(_contradictions(state), None)


def _contradictions(state: WorkflowState) -> Iterator[str]:
    step_ids = {step.id for step in state.spec.steps}
    if unknown := (set(state.outputs) | set(state.running)) - step_ids:
        yield f"unknown steps {sorted(unknown)}"
    if both := set(state.outputs) & set(state.running):
        yield f"steps {sorted(both)} both complete and running"
    if not state.running:
        yield "an active workflow with no running step"
    listed: set[str] = set()
    for step_id, step_run in state.running.items():
        runs = [state.tasks.get(task_id) for task_id in step_run.task_ids]
        if any(run is None or run.step_id != step_id for run in runs):
            yield f"step {step_id!r} lists tasks that are not its own"
        if step_run.remaining != sum(1 for run in runs if run is not None and not run.succeeded):
            yield f"step {step_id!r} has a wrong remaining count"
        listed.update(step_run.task_ids)
    if set(state.tasks) != listed:
        yield "tasks that belong to no running step"
    if any(run.succeeded and run.retry_at_ms is not None for run in state.tasks.values()):
        yield "a succeeded task with a retry scheduled"
    if any(run.acquiring and run.retry_at_ms is not None for run in state.tasks.values()):
        yield "a task both acquiring resources and backing off"
    if any(
        run.waiting_since_ms is not None
        and (run.succeeded or run.acquiring or run.retry_at_ms is not None)
        for run in state.tasks.values()
    ):
        yield "a task waiting for a live agent that is also done, acquiring or backing off"
    if state.budget is None and any(run.bid or run.leases for run in state.tasks.values()):
        yield "a task bidding or holding leases in a workflow without a budget"
    yield from _chain_contradictions(state)


def _chain_contradictions(state: WorkflowState) -> Iterator[str]:
    """A task's link lies within its step's chain, with one cause per link left."""
    for task_id, run in state.tasks.items():
        links = len(state.spec.step(run.step_id).chain)
        if run.link >= links or len(run.causes) != run.link or run.link_base >= run.attempt:
            yield f"task {task_id}: link {run.link} of a chain of {links}, inconsistent"
