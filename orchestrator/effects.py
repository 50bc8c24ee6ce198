"""What the engine asks the shell to do, and the messages it builds for that."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pydantic import JsonValue

from fleet.messages import (
    EventKind,
    MarketInput,
    TaskAssigned,
    TaskCancelled,
    UsageLine,
    WorkflowError,
    WorkflowEvent,
)
from orchestrator.spec import StepSpec
from orchestrator.state import TaskRun, WorkflowState


@dataclass
class FinishedTask:
    """For metrics: one per task attempt that ended (result accepted, or timed out)."""

    capability: str
    latency_ms: int  # now_ms - dispatched_at_ms of that attempt
    succeeded: bool
    # Only for an accepted result (None when the attempt ended without one): who ran it,
    # for whom, and what the handler reported it consumed.
    version: str | None = None
    tenant: str | None = None
    usage: list[UsageLine] | None = None
    # False when the market ended the attempt (its lease): no fault of the capability's,
    # so its circuit breaker does not count it (orchestrator.breaker).
    counts_for_breaker: bool = True


@dataclass(frozen=True)
class Attempt:
    """The task attempt a step's event is about (WorkflowEvent fields of the same names)."""

    task_id: str
    attempt: int
    index: int | None = None
    worker_id: str | None = None  # known once a result came back, never at dispatch


@dataclass
class Effects:
    """What the shell must do after one input, in this order within each list."""

    tasks: list[TaskAssigned] = field(default_factory=list)  # tasks.<capability>, key task_id
    events: list[WorkflowEvent] = field(default_factory=list)  # workflow.events, key workflow_id
    finished: list[FinishedTask] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # why an input was ignored
    market: list[MarketInput] = field(default_factory=list)  # market.bids, key resource
    # task.cancellations, key workflow_id: attempts the engine stopped waiting for.
    cancellations: list[TaskCancelled] = field(default_factory=list)
    budget_denials: int = 0
    settlement_lags_ms: list[int] = field(default_factory=list)


def assign(workflow_id: str, step: StepSpec, task_id: str, run: TaskRun) -> TaskAssigned:
    """The message dispatching ``run``'s current attempt."""
    return TaskAssigned(
        task_id=task_id,
        workflow_id=workflow_id,
        step_id=step.id,
        capability=step.capability_at(run.link),
        attempt=run.attempt,
        index=run.index,
        input=run.input,
        deadline_ms=run.deadline_ms,
        dispatched_at_ms=run.dispatched_at_ms,
        leases=[run.leases[pool] for pool in sorted(run.leases)],
    )


def event(
    workflow_id: str,
    kind: EventKind,
    now_ms: int,
    *,
    workflow_name: str | None,
    submitted_at_ms: int,
    step_id: str | None = None,
    output: JsonValue = None,
    error: WorkflowError | None = None,
) -> WorkflowEvent:
    return WorkflowEvent(
        workflow_id=workflow_id,
        kind=kind,
        workflow_name=workflow_name,
        step_id=step_id,
        output=output,
        error=error,
        submitted_at_ms=submitted_at_ms,
        at_ms=now_ms,
    )


def state_event(
    state: WorkflowState,
    kind: EventKind,
    now_ms: int,
    *,
    step_id: str | None = None,
    output: JsonValue = None,
    error: WorkflowError | None = None,
    attempt: Attempt | None = None,
) -> WorkflowEvent:
    """An event of an accepted workflow (it carries the workflow's name and submit time;
    a terminal one also its spending, if it bid, and its usage, if any was reported; a
    step's event the attempt it names)."""
    made = event(
        state.workflow_id,
        kind,
        now_ms,
        workflow_name=state.spec.name,
        submitted_at_ms=state.submitted_at_ms,
        step_id=step_id,
        output=output,
        error=error,
    )
    if attempt is not None:
        made = made.model_copy(update=asdict(attempt))
    if kind.terminal and state.budget is not None:
        budget = state.budget
        charges: dict[str, JsonValue] = {h: s.charge for h, s in sorted(budget.settled.items())}
        # Holds still open: bids the auctioneer had not answered when the workflow ended
        # (withdrawn). Never charged; an award that comes later is given back unused.
        held: dict[str, JsonValue] = dict(sorted(budget.holds.items()))
        spent = {"limit": budget.limit, "spent": budget.spent, "charges": charges, "held": held}
        made = made.model_copy(update={"budget": spent})
    if kind.terminal and state.usage:
        made = made.model_copy(update={"usage": list(state.usage)})
    return made


def started_event(state: WorkflowState, task: TaskAssigned) -> WorkflowEvent:
    """STEP_STARTED: ``task``'s attempt was dispatched (one event per attempt, retries
    included, so a long step shows it is under way and on which attempt)."""
    return state_event(
        state,
        EventKind.STEP_STARTED,
        task.dispatched_at_ms,
        step_id=task.step_id,
        attempt=Attempt(task.task_id, task.attempt, task.index),
    )


def deadline_error(state: WorkflowState) -> WorkflowError:
    assert state.spec.deadline_s is not None
    return WorkflowError(
        type="DeadlineExceeded",
        message=f"workflow not finished within its deadline of "
        f"{seconds(state.spec.deadline_s)} s (due at {state.deadline_ms})",
    )


def seconds(value: float) -> str:
    """30.0 -> '30', 2.5 -> '2.5': durations as people write them."""
    return str(int(value)) if value.is_integer() else str(value)
