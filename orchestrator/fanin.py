"""Fan-in: collecting the results of a step's tasks, completing the step, and the
workflow's output once every step is complete.

A plain step completes with its one task's output; a ``for_each`` step with the list of
its elements' outputs, in element order, once the last of them succeeds (an empty
fan-out completes at once, with ``[]``). Each completed step is announced by a
STEP_COMPLETED event; the last one makes the workflow's output, resolved from the
spec's ``output`` references, and its COMPLETED event.
"""

from __future__ import annotations

from pydantic import JsonValue

from fleet.errors import ResolutionError
from fleet.messages import EventKind, WorkflowError
from orchestrator.effects import Attempt, state_event
from orchestrator.refs import resolve
from orchestrator.state import TaskRun, WorkflowState
from orchestrator.transition import Transition, WorkflowFailed


def task_succeeded(
    t: Transition, state: WorkflowState, run: TaskRun, output: JsonValue, worker_id: str
) -> bool:
    """Accept ``run``'s output (from ``worker_id``); True when it was its step's last task,
    so the step is complete (its dependents may start: ``decompose.advance``)."""
    run.succeeded, run.output = True, output
    step_run = state.running[run.step_id]
    step_run.remaining -= 1
    if step_run.remaining > 0:
        return False
    runs = [state.tasks.pop(task_id) for task_id in step_run.task_ids]
    del state.running[run.step_id]
    if step_run.fan_out:
        complete_step(t, state, run.step_id, [r.output for r in runs])
    else:
        # A plain step is one task: its event names the attempt and the worker that did
        # it. A fan-out's elements may each have had several (their STEP_STARTED events).
        by = Attempt(step_run.task_ids[0], run.attempt, worker_id=worker_id)
        step = state.spec.step(run.step_id)
        # Done by a fallback: the event says which (a fan-out's STEP_STARTED events do).
        fell_back = f"done by fallback {step.capability_at(run.link)}" if run.link else None
        complete_step(t, state, run.step_id, runs[0].output, by, reason=fell_back)
    return True


def complete_step(
    t: Transition,
    state: WorkflowState,
    step_id: str,
    output: JsonValue,
    by: Attempt | None = None,
    *,
    reason: str | None = None,
) -> None:
    state.outputs[step_id] = output
    done = state_event(
        state, EventKind.STEP_COMPLETED, t.now_ms, step_id=step_id, output=output, attempt=by
    )
    t.fx.events.append(done if reason is None else done.model_copy(update={"reason": reason}))


def finish_if_complete(t: Transition, state: WorkflowState) -> None:
    """Once every step is complete: resolve the workflow's output and finish it."""
    if len(state.outputs) < len(state.spec.steps):
        return
    try:
        output = resolve(state.spec.output, state.context())
    except ResolutionError as exc:
        raise WorkflowFailed(
            WorkflowError(type="ResolutionError", message=f"workflow output: {exc}")
        ) from exc
    t.fx.events.append(state_event(state, EventKind.COMPLETED, t.now_ms, output=output))
    t.store.finish(state.workflow_id, EventKind.COMPLETED, t.now_ms)
