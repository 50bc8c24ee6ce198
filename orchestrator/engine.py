"""The workflow engine: a pure state machine from inputs to effects.

The Kafka shell feeds it submits and task results and produces what it returns; the
engine itself never reads a clock, draws a random number or does I/O (``now_ms`` is an
argument), so replaying the same inputs yields the same effects and the same state.
Bad input never raises out of it: an invalid spec becomes a REJECTED event, a reference
that fails at run time a FAILED event, a duplicate or stale result a line in ``dropped``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydantic import JsonValue

from fleet.errors import ResolutionError, SpecError
from fleet.messages import (
    EventKind,
    TaskAssigned,
    TaskResult,
    TaskStatus,
    WorkflowError,
    WorkflowEvent,
    WorkflowSubmitted,
)
from orchestrator.refs import Context, json_kind, resolve
from orchestrator.spec import StepSpec, WorkflowSpec, parse_spec


@dataclass
class FinishedTask:
    """For metrics: one per task attempt whose result was accepted."""

    capability: str
    latency_ms: int  # now_ms - dispatched_at_ms of that attempt
    succeeded: bool


@dataclass
class Effects:
    """What the shell must do after one input, in this order within each list."""

    tasks: list[TaskAssigned] = field(default_factory=list)  # tasks.<capability>, key task_id
    events: list[WorkflowEvent] = field(default_factory=list)  # workflow.events, key workflow_id
    finished: list[FinishedTask] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # why an input was ignored


@dataclass
class TaskRun:
    """The current attempt of one task (one element of a started, unfinished step)."""

    step_id: str
    index: int | None  # element position for for_each steps, None for plain steps
    attempt: int
    dispatched_at_ms: int
    input: JsonValue  # kept so a retry re-sends exactly what the first attempt got
    succeeded: bool = False
    output: JsonValue = None


@dataclass
class StepRun:
    task_ids: list[str]  # in element order, which is the order of the fan-in list
    remaining: int  # elements not yet succeeded
    fan_out: bool


@dataclass
class WorkflowState:
    """Everything the engine remembers about one active workflow; plain data only."""

    workflow_id: str
    spec: WorkflowSpec
    submitted_at_ms: int
    outputs: dict[str, JsonValue] = field(default_factory=dict)  # completed steps
    running: dict[str, StepRun] = field(default_factory=dict)  # started, not complete
    tasks: dict[str, TaskRun] = field(default_factory=dict)  # task_id -> run, running steps


class _WorkflowFailed(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, error: WorkflowError) -> None:
        super().__init__(error.message)
        self.error = error


def task_id_for(workflow_id: str, step_id: str, index: int) -> str:
    return f"{workflow_id}/{step_id}/{index}"


class Engine:
    """Every active workflow's state, advanced one input at a time.

    Each call handles one workflow and returns its effects; the shell must produce them
    (in one transaction with the input's offset) before feeding the next input.
    """

    def __init__(self, has_capability: Callable[[str], bool]) -> None:
        self._has_capability = has_capability
        self._workflows: dict[str, WorkflowState] = {}
        # Kept incrementally: the shell reads it after every record, and a sum over all
        # workflows would cost O(tasks in memory) each time.
        self._in_flight = 0

    @property
    def active(self) -> int:
        """Number of workflows in memory (accepted and not yet terminal)."""
        return len(self._workflows)

    @property
    def in_flight(self) -> int:
        """Dispatched task attempts still waiting for an accepted result."""
        return self._in_flight

    def state_of(self, workflow_id: str) -> WorkflowState | None:
        """The live state of an active workflow (for persistence and tests; do not mutate)."""
        return self._workflows.get(workflow_id)

    def submit(self, request: WorkflowSubmitted, now_ms: int) -> Effects:
        effects = Effects()
        workflow_id = request.workflow_id
        if workflow_id in self._workflows:
            # A redelivered or repeated request must not restart work already under way.
            effects.dropped.append(f"workflow {workflow_id}: already active; submit ignored")
            return effects
        try:
            spec = parse_spec(request.spec, has_capability=self._has_capability)
        except SpecError as exc:
            name = request.spec.get("name") if isinstance(request.spec, dict) else None
            effects.events.append(
                WorkflowEvent(
                    workflow_id=workflow_id,
                    kind=EventKind.REJECTED,
                    workflow_name=name if isinstance(name, str) else None,
                    error=WorkflowError(type="SpecError", message=str(exc)),
                    submitted_at_ms=request.submitted_at_ms,
                    at_ms=now_ms,
                )
            )
            return effects
        state = WorkflowState(workflow_id, spec, request.submitted_at_ms)
        self._workflows[workflow_id] = state
        effects.events.append(_event(state, EventKind.ACCEPTED, now_ms))
        try:
            self._advance(state, now_ms, effects)
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, effects)
        return effects

    def on_result(self, result: TaskResult, now_ms: int) -> Effects:
        effects = Effects()
        state = self._workflows.get(result.workflow_id)
        where = f"result {result.task_id} attempt {result.attempt}"
        if state is None:
            effects.dropped.append(f"{where}: workflow {result.workflow_id} unknown or finished")
            return effects
        run = state.tasks.get(result.task_id)
        if run is None:
            effects.dropped.append(f"{where}: {_why_not_running(state, result.task_id)}")
            return effects
        if result.attempt != run.attempt:
            age = "stale" if result.attempt < run.attempt else "from the future"
            effects.dropped.append(f"{where}: {age}, current attempt is {run.attempt}")
            return effects
        if run.succeeded:
            effects.dropped.append(f"{where}: duplicate of an accepted result")
            return effects
        step = state.spec.step(run.step_id)
        succeeded = result.status is TaskStatus.SUCCEEDED
        latency = max(0, now_ms - run.dispatched_at_ms)
        effects.finished.append(FinishedTask(step.capability, latency, succeeded))
        try:
            if succeeded:
                run.succeeded, run.output = True, result.output
                self._on_success(state, run, now_ms, effects)
            else:
                self._on_failure(state, step, result, now_ms, effects)
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, effects)
        return effects

    def _fail(self, state: WorkflowState, error: WorkflowError, now_ms: int, fx: Effects) -> None:
        """Emit the workflow's one FAILED event and forget it."""
        # Tasks produced earlier in this same call (one call = one workflow) would only
        # do orphaned work, so they are withdrawn before the shell sees them.
        fx.tasks.clear()
        fx.events.append(_event(state, EventKind.FAILED, now_ms, error=error))
        self._in_flight -= sum(1 for run in state.tasks.values() if not run.succeeded)
        del self._workflows[state.workflow_id]

    def _on_success(self, state: WorkflowState, run: TaskRun, now_ms: int, fx: Effects) -> None:
        self._in_flight -= 1
        step_run = state.running[run.step_id]
        step_run.remaining -= 1
        if step_run.remaining > 0:
            return
        runs = [state.tasks.pop(task_id) for task_id in step_run.task_ids]
        del state.running[run.step_id]
        output: JsonValue = [r.output for r in runs] if step_run.fan_out else runs[0].output
        self._complete_step(state, run.step_id, output, now_ms, fx)
        self._advance(state, now_ms, fx)

    def _on_failure(
        self, state: WorkflowState, step: StepSpec, result: TaskResult, now_ms: int, fx: Effects
    ) -> None:
        run = state.tasks[result.task_id]
        error = result.error
        if result.status is TaskStatus.UNKNOWN:
            why = "status UNKNOWN (not retried)"
        elif error is None or not error.retryable:
            why = "not retryable"
        elif result.attempt <= step.retries:
            # Only this element is re-sent; its siblings keep running undisturbed.
            run.attempt += 1
            run.dispatched_at_ms = now_ms
            fx.tasks.append(_assign(state, step, result.task_id, run, now_ms))
            return
        else:
            why = f"retries exhausted ({step.retries} allowed)"
        cause = error.message if error is not None else f"task ended with {result.status.value}"
        raise _WorkflowFailed(
            WorkflowError(
                type=error.type if error is not None else "TaskFailed",
                message=f"task {result.task_id} attempt {result.attempt} failed, {why}: {cause}",
                step_id=step.id,
                attempt=result.attempt,
            )
        )

    def _advance(self, state: WorkflowState, now_ms: int, fx: Effects) -> None:
        """Start every step whose needs are complete; repeat while steps complete at once
        (empty fan-outs); finish the workflow when every step is complete."""
        while ready := _ready_steps(state):
            for step in ready:
                self._start_step(state, step, now_ms, fx)
        if len(state.outputs) < len(state.spec.steps):
            return
        try:
            output = resolve(state.spec.output, _context(state))
        except ResolutionError as exc:
            raise _WorkflowFailed(
                WorkflowError(type="ResolutionError", message=f"workflow output: {exc}")
            ) from exc
        fx.events.append(_event(state, EventKind.COMPLETED, now_ms, output=output))
        del self._workflows[state.workflow_id]

    def _start_step(self, state: WorkflowState, step: StepSpec, now_ms: int, fx: Effects) -> None:
        ctx = _context(state)
        if step.for_each is None:
            elements: Iterable[tuple[int | None, JsonValue]] = [(None, None)]
        else:
            items = _resolve_or_fail(step, step.for_each, ctx)
            if not isinstance(items, list):
                raise _WorkflowFailed(
                    WorkflowError(
                        type="ResolutionError",
                        message=f"{step.for_each}: for_each must resolve to a list, "
                        f"got {json_kind(items)}",
                        step_id=step.id,
                    )
                )
            if not items:
                # Nothing to fan out: the step is done, and its dependents may start now.
                self._complete_step(state, step.id, [], now_ms, fx)
                return
            elements = enumerate(items)
        task_ids = []
        for index, item in elements:
            element_ctx = Context(ctx.input, ctx.outputs, item, index)
            task_input = _resolve_or_fail(step, step.input, element_ctx)
            task_id = task_id_for(state.workflow_id, step.id, index or 0)
            run = TaskRun(step.id, index, 1, now_ms, task_input)
            state.tasks[task_id] = run
            self._in_flight += 1
            task_ids.append(task_id)
            fx.tasks.append(_assign(state, step, task_id, run, now_ms))
        state.running[step.id] = StepRun(task_ids, len(task_ids), step.for_each is not None)

    def _complete_step(
        self, state: WorkflowState, step_id: str, output: JsonValue, now_ms: int, fx: Effects
    ) -> None:
        state.outputs[step_id] = output
        fx.events.append(
            _event(state, EventKind.STEP_COMPLETED, now_ms, step_id=step_id, output=output)
        )


def _ready_steps(state: WorkflowState) -> list[StepSpec]:
    # Spec order keeps dispatch order, and so replay, deterministic.
    return [
        step
        for step in state.spec.steps
        if step.id not in state.outputs
        and step.id not in state.running
        and all(need in state.outputs for need in step.needs)
    ]


def _context(state: WorkflowState) -> Context:
    return Context(input=state.spec.input, outputs=state.outputs)


def _resolve_or_fail(step: StepSpec, value: JsonValue, ctx: Context) -> JsonValue:
    """``resolve`` for a step, turning a broken reference into the workflow's failure."""
    try:
        return resolve(value, ctx)
    except ResolutionError as exc:
        element = f"element {ctx.index}: " if ctx.index is not None else ""
        raise _WorkflowFailed(
            WorkflowError(type="ResolutionError", message=f"{element}{exc}", step_id=step.id)
        ) from exc


def _assign(
    state: WorkflowState, step: StepSpec, task_id: str, run: TaskRun, now_ms: int
) -> TaskAssigned:
    return TaskAssigned(
        task_id=task_id,
        workflow_id=state.workflow_id,
        step_id=step.id,
        capability=step.capability,
        attempt=run.attempt,
        index=run.index,
        input=run.input,
        # At least 1 ms, so a tiny timeout never yields a deadline already in the past.
        deadline_ms=now_ms + max(1, round(step.timeout_s * 1000)),
        dispatched_at_ms=now_ms,
    )


def _event(
    state: WorkflowState,
    kind: EventKind,
    now_ms: int,
    *,
    step_id: str | None = None,
    output: JsonValue = None,
    error: WorkflowError | None = None,
) -> WorkflowEvent:
    return WorkflowEvent(
        workflow_id=state.workflow_id,
        kind=kind,
        workflow_name=state.spec.name,
        step_id=step_id,
        output=output,
        error=error,
        submitted_at_ms=state.submitted_at_ms,
        at_ms=now_ms,
    )


def _why_not_running(state: WorkflowState, task_id: str) -> str:
    prefix = f"{state.workflow_id}/"
    step_id = task_id[len(prefix) :].rsplit("/", 1)[0] if task_id.startswith(prefix) else None
    if step_id is not None and step_id in state.outputs:
        return f"duplicate, step {step_id!r} already completed"
    return f"no such task in workflow {state.workflow_id}"
