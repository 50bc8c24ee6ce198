"""The workflow engine: a pure state machine from inputs to effects.

The Kafka shell feeds it submits, cancels, task results and clock ticks, and produces
what it returns; the engine itself never reads a clock, draws a random number or does
I/O (``now_ms`` is an argument, retry jitter a hash), so replaying the same inputs
yields the same effects and the same state. Bad input never raises out of it: an
invalid spec becomes a REJECTED event, a reference that fails at run time a FAILED
event, a duplicate or stale input a line in ``dropped``.

Durability: ``take_changes`` hands the shell a record per changed workflow for its
compacted changelog, and ``restore`` rebuilds a workflow from such a record, timers
included, so timeouts, retries and deadlines survive a restart or a rebalance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from pydantic import JsonValue

from fleet.errors import ConfigError, ResolutionError, SpecError
from fleet.messages import (
    EventKind,
    TaskError,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowError,
    WorkflowSubmitted,
)
from orchestrator.effects import (
    Effects,
    FinishedTask,
    deadline_error,
    event,
    seconds,
    state_event,
)
from orchestrator.refs import Context, json_kind, resolve
from orchestrator.spec import StepSpec, parse_spec
from orchestrator.state import FinishedWorkflow, StepRun, TaskRun, WorkflowState, task_id_for
from orchestrator.store import WorkflowStore
from orchestrator.timers import Timer, TimerKind, backoff_ms

__all__ = [
    "Effects",
    "Engine",
    "FinishedTask",
    "FinishedWorkflow",
    "StepRun",
    "TaskRun",
    "WorkflowState",
    "task_id_for",
]


class _Failure(NamedTuple):
    """One attempt that ended without success: a failed result, or a timeout."""

    task_id: str
    run: TaskRun
    status: TaskStatus
    error: TaskError | None


class _WorkflowFailed(Exception):  # noqa: N818 - internal control flow, never escapes
    def __init__(self, error: WorkflowError) -> None:
        super().__init__(error.message)
        self.error = error


class Engine:
    """Every owned workflow's state, advanced one input at a time.

    Each input call handles one workflow and returns its effects; the shell must produce
    them (in one transaction with the input's offset and ``take_changes``) before it
    feeds the next input. ``tick`` may touch many workflows at once.
    """

    def __init__(
        self, has_capability: Callable[[str], bool], *, finished_retention_ms: int = 3_600_000
    ) -> None:
        if finished_retention_ms < 0:
            raise ConfigError(f"finished_retention_ms must be >= 0, got {finished_retention_ms}")
        self._has_capability = has_capability
        self._store = WorkflowStore(finished_retention_ms)

    # -- queries ------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Number of workflows in memory (accepted and not yet terminal)."""
        return self._store.active

    @property
    def in_flight(self) -> int:
        """Dispatched task attempts still waiting for a result (not those backing off)."""
        return self._store.in_flight

    @property
    def retained(self) -> int:
        """Number of finished workflows remembered for idempotent submission."""
        return self._store.retained

    def state_of(self, workflow_id: str) -> WorkflowState | None:
        """The live state of an active workflow (for tests and tools; do not mutate)."""
        return self._store.get(workflow_id)

    def finished_of(self, workflow_id: str) -> FinishedWorkflow | None:
        """How a workflow ended, while its finished record is retained."""
        return self._store.finished(workflow_id)

    def pending_timers(self) -> list[Timer]:
        """Every pending timer in due order (for tests and tools)."""
        return self._store.timers.pending()

    def next_due_ms(self) -> int | None:
        """When ``tick`` next has something to do (None: no timer pending)."""
        return self._store.timers.next_due_ms()

    # -- inputs -------------------------------------------------------------------------

    def submit(self, request: WorkflowSubmitted, now_ms: int) -> Effects:
        effects = Effects()
        workflow_id = request.workflow_id
        if self._store.get(workflow_id) is not None:
            # A redelivered or repeated request must not restart work already under way.
            effects.dropped.append(f"workflow {workflow_id}: already active; submit ignored")
            return effects
        if (finished := self._store.finished(workflow_id)) is not None:
            if not finished.announced:
                # Cancelled before it was submitted: this submission gets the one
                # terminal event, and no work is dispatched.
                name = request.spec.get("name") if isinstance(request.spec, dict) else None
                effects.events.append(
                    event(
                        workflow_id,
                        EventKind.CANCELLED,
                        now_ms,
                        workflow_name=name if isinstance(name, str) else None,
                        submitted_at_ms=request.submitted_at_ms,
                        error=WorkflowError(
                            type="Cancelled", message="cancelled before it was submitted"
                        ),
                    )
                )
                self._store.finish(workflow_id, EventKind.CANCELLED, now_ms)
                return effects
            effects.dropped.append(
                f"workflow {workflow_id}: already finished ({finished.kind.value}); submit ignored"
            )
            return effects
        try:
            spec = parse_spec(request.spec, has_capability=self._has_capability)
        except SpecError as exc:
            name = request.spec.get("name") if isinstance(request.spec, dict) else None
            effects.events.append(
                event(
                    workflow_id,
                    EventKind.REJECTED,
                    now_ms,
                    workflow_name=name if isinstance(name, str) else None,
                    submitted_at_ms=request.submitted_at_ms,
                    error=WorkflowError(type="SpecError", message=str(exc)),
                )
            )
            self._store.finish(workflow_id, EventKind.REJECTED, now_ms)
            return effects
        state = WorkflowState(workflow_id, spec, request.submitted_at_ms)
        self._store.add(state)
        effects.events.append(state_event(state, EventKind.ACCEPTED, now_ms))
        try:
            deadline = state.deadline_ms
            if deadline is not None and deadline <= now_ms:
                # Already too late: do not dispatch work whose outcome is moot.
                raise _WorkflowFailed(deadline_error(state))
            self._advance(state, now_ms, effects)
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, effects)
        return effects

    def on_result(self, result: TaskResult, now_ms: int) -> Effects:
        effects = Effects()
        workflow_id = result.workflow_id
        state = self._store.get(workflow_id)
        where = f"result {result.task_id} attempt {result.attempt}"
        if state is None:
            finished = self._store.finished(workflow_id)
            why = "unknown or finished" if finished is None else f"finished ({finished.kind.value})"
            effects.dropped.append(f"{where}: workflow {workflow_id} {why}")
            return effects
        run = state.tasks.get(result.task_id)
        if run is None:
            effects.dropped.append(f"{where}: {state.why_not_running(result.task_id)}")
            return effects
        if result.attempt != run.attempt:
            age = "stale" if result.attempt < run.attempt else "from the future"
            effects.dropped.append(f"{where}: {age}, current attempt is {run.attempt}")
            return effects
        if run.succeeded:
            effects.dropped.append(f"{where}: duplicate of an accepted result")
            return effects
        if run.retry_at_ms is not None:
            # A duplicate of the failure, or a late answer after the attempt timed out.
            effects.dropped.append(
                f"{where}: stale, attempt {run.attempt} already ended; "
                f"attempt {run.attempt + 1} is due at {run.retry_at_ms}"
            )
            return effects
        self._store.touch(workflow_id)
        self._store.attempt_ended(workflow_id, result.task_id)
        step = state.spec.step(run.step_id)
        succeeded = result.status is TaskStatus.SUCCEEDED
        latency = max(0, now_ms - run.dispatched_at_ms)
        effects.finished.append(FinishedTask(step.capability, latency, succeeded))
        try:
            if succeeded:
                run.succeeded, run.output = True, result.output
                self._on_success(state, run, now_ms, effects)
            else:
                failed = _Failure(result.task_id, run, result.status, result.error)
                self._on_failure(state, step, failed, now_ms, effects)
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, effects)
        return effects

    def cancel(self, request: WorkflowCancelRequested, now_ms: int) -> Effects:
        effects = Effects()
        workflow_id = request.workflow_id
        state = self._store.get(workflow_id)
        if state is None:
            finished = self._store.finished(workflow_id)
            if finished is None:
                # The cancel overtook its submission (another client, or a retry that
                # landed first): remember it, so the submission ends cancelled.
                self._store.finish(workflow_id, EventKind.CANCELLED, now_ms, announced=False)
                effects.dropped.append(
                    f"cancel of workflow {workflow_id}: not submitted yet; a submission "
                    "within the retention period ends cancelled"
                )
                return effects
            effects.dropped.append(
                f"cancel of workflow {workflow_id}: already finished ({finished.kind.value}); "
                "ignored"
            )
            return effects
        error = WorkflowError(type="Cancelled", message=request.reason or "cancelled")
        effects.events.append(state_event(state, EventKind.CANCELLED, now_ms, error=error))
        # Dropping the state drops its timers: no retry or timeout can dispatch again.
        self._store.finish(workflow_id, EventKind.CANCELLED, now_ms)
        return effects

    def tick(self, now_ms: int) -> Effects:
        """Fire every timer due at or before ``now_ms``, in (due, kind, workflow, task)
        order: record expiry, workflow deadlines, task timeouts, scheduled retries."""
        effects = Effects()
        while (timer := self._store.pop_due(now_ms)) is not None:
            self._fire(timer, now_ms, effects)
        return effects

    # -- durability ---------------------------------------------------------------------

    def take_changes(self) -> dict[str, JsonValue | None]:
        """The record of every workflow changed since the last call (None: a tombstone,
        the workflow is gone), in a deterministic order; clears the set."""
        return self._store.take_changes()

    def record_of(self, workflow_id: str) -> JsonValue | None:
        """The current changelog record of one workflow (None when memory has none)."""
        return self._store.record_of(workflow_id)

    def restore(self, workflow_id: str, record: JsonValue) -> None:
        """Load a record made by ``take_changes`` (timers included), replacing what
        memory holds for that workflow. An invalid record raises
        :class:`~fleet.errors.DecodeError` and changes nothing."""
        self._store.restore(workflow_id, record)

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop every workflow, active or finished, for which ``keep`` is False, with its
        timers and unreported changes (its partition now belongs to someone else)."""
        self._store.forget(keep)

    # -- transitions --------------------------------------------------------------------

    def _fire(self, timer: Timer, now_ms: int, fx: Effects) -> None:
        workflow_id = timer.workflow_id
        if timer.kind is TimerKind.EXPIRY:
            self._store.expire(workflow_id)
            return
        # Timers live and die with their workflow's state, so both exist here.
        state = self._store.get(workflow_id)
        assert state is not None
        self._store.touch(workflow_id)
        try:
            if timer.kind is TimerKind.DEADLINE:
                raise _WorkflowFailed(deadline_error(state))
            run = state.tasks[timer.task_id]
            step = state.spec.step(run.step_id)
            if timer.kind is TimerKind.RETRY:
                run.attempt += 1
                fx.tasks.append(self._store.dispatch(state, step, timer.task_id, run, now_ms))
                return
            fx.finished.append(FinishedTask(step.capability, now_ms - run.dispatched_at_ms, False))
            timeout = TaskError(
                type="TimeoutError",
                message=f"no result within {seconds(step.timeout_s)} s",
                retryable=True,
            )
            failed = _Failure(timer.task_id, run, TaskStatus.FAILED, timeout)
            self._on_failure(state, step, failed, now_ms, fx)
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, fx)

    def _fail(self, state: WorkflowState, error: WorkflowError, now_ms: int, fx: Effects) -> None:
        """Emit the workflow's one FAILED event and finish it."""
        # Tasks this workflow produced earlier in the same call would only do orphaned
        # work, so they are withdrawn before the shell sees them.
        fx.tasks[:] = [task for task in fx.tasks if task.workflow_id != state.workflow_id]
        fx.events.append(state_event(state, EventKind.FAILED, now_ms, error=error))
        self._store.finish(state.workflow_id, EventKind.FAILED, now_ms)

    def _on_success(self, state: WorkflowState, run: TaskRun, now_ms: int, fx: Effects) -> None:
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
        self, state: WorkflowState, step: StepSpec, failed: _Failure, now_ms: int, fx: Effects
    ) -> None:
        """An attempt failed or timed out (its timeout is disarmed): retry, or fail."""
        task_id, run, status, error = failed
        if status is TaskStatus.UNKNOWN:
            why = "status UNKNOWN (not retried)"
        elif error is None or not error.retryable:
            why = "not retryable"
        elif run.attempt <= step.retries:
            # Only this element is re-sent; its siblings keep running undisturbed.
            delay = backoff_ms(step.backoff_s, step.max_backoff_s, task_id, run.attempt)
            if delay > 0:
                # The next attempt waits in the durable state, not in a sleeping thread:
                # its RETRY timer (rebuilt on restore) dispatches it once, from tick.
                self._store.schedule_retry(state.workflow_id, task_id, run, now_ms + delay)
            else:
                run.attempt += 1
                fx.tasks.append(self._store.dispatch(state, step, task_id, run, now_ms))
            return
        else:
            why = f"retries exhausted ({step.retries} allowed)"
        cause = error.message if error is not None else f"task ended with {status.value}"
        raise _WorkflowFailed(
            WorkflowError(
                type=error.type if error is not None else "TaskFailed",
                message=f"task {task_id} attempt {run.attempt} failed, {why}: {cause}",
                step_id=step.id,
                attempt=run.attempt,
            )
        )

    def _advance(self, state: WorkflowState, now_ms: int, fx: Effects) -> None:
        """Start every step whose needs are complete; repeat while steps complete at once
        (empty fan-outs); finish the workflow when every step is complete."""
        while ready := state.ready_steps():
            for step in ready:
                self._start_step(state, step, now_ms, fx)
        if len(state.outputs) < len(state.spec.steps):
            return
        try:
            output = resolve(state.spec.output, state.context())
        except ResolutionError as exc:
            raise _WorkflowFailed(
                WorkflowError(type="ResolutionError", message=f"workflow output: {exc}")
            ) from exc
        fx.events.append(state_event(state, EventKind.COMPLETED, now_ms, output=output))
        self._store.finish(state.workflow_id, EventKind.COMPLETED, now_ms)

    def _start_step(self, state: WorkflowState, step: StepSpec, now_ms: int, fx: Effects) -> None:
        ctx = state.context()
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
            run = TaskRun(step.id, index, 1, now_ms, now_ms, task_input)
            state.tasks[task_id] = run
            task_ids.append(task_id)
            fx.tasks.append(self._store.dispatch(state, step, task_id, run, now_ms))
        state.running[step.id] = StepRun(task_ids, len(task_ids), step.for_each is not None)

    def _complete_step(
        self, state: WorkflowState, step_id: str, output: JsonValue, now_ms: int, fx: Effects
    ) -> None:
        state.outputs[step_id] = output
        fx.events.append(
            state_event(state, EventKind.STEP_COMPLETED, now_ms, step_id=step_id, output=output)
        )


def _resolve_or_fail(step: StepSpec, value: JsonValue, ctx: Context) -> JsonValue:
    """``resolve`` for a step, turning a broken reference into the workflow's failure."""
    try:
        return resolve(value, ctx)
    except ResolutionError as exc:
        element = f"element {ctx.index}: " if ctx.index is not None else ""
        raise _WorkflowFailed(
            WorkflowError(type="ResolutionError", message=f"{element}{exc}", step_id=step.id)
        ) from exc
