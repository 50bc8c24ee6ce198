"""How a workflow's timers fire, how waiting tasks go on, and how a workflow fails.

The engine's inputs (``orchestrator.engine``) end here when they are not about one
result or one market answer: a due timer (a deadline, a task's timeout, its retry, a
record's expiry, a wait for a live agent that ran out), a change of the agents that
lets waiting tasks go (``orchestrator.waiting``), and the one FAILED event of a workflow
that something inside a transition failed.
"""

from __future__ import annotations

from fleet.messages import CancelReason, EventKind, WorkflowError, WorkflowEvent
from orchestrator import acquire, cancellation, escalation, retry, waiting
from orchestrator.effects import deadline_error, state_event
from orchestrator.state import WorkflowState
from orchestrator.timers import Timer, TimerKind
from orchestrator.transition import Transition, WorkflowFailed


def fire(t: Transition, timer: Timer) -> None:
    workflow_id = timer.workflow_id
    if timer.kind is TimerKind.EXPIRY:
        t.store.expire(workflow_id)
        return
    # Timers live and die with their workflow's state, so both exist here.
    state = t.store.get(workflow_id)
    assert state is not None
    t.store.touch(workflow_id)
    try:
        if timer.kind is TimerKind.DEADLINE:
            raise WorkflowFailed(deadline_error(state))
        if timer.kind is TimerKind.RETRY:
            retry.due(t, state, timer.task_id)
        elif timer.kind is TimerKind.NO_AGENT:
            _waited_out(t, state, timer.task_id)
        else:
            retry.timed_out(t, state, timer.task_id)
    except WorkflowFailed as failure:
        fail(t, state, failure.error)


def recheck(t: Transition) -> None:
    """The agents changed: every waiting task whose capability is served now goes on,
    longest waiting first (a deterministic order, so a replay dispatches the same)."""
    for workflow_id, task_id, capability in t.store.waiting():
        if not t.agents.serves(capability):
            continue
        state = t.store.get(workflow_id)
        if state is None:  # failed while an earlier task of it went on
            continue
        t.store.touch(workflow_id)
        try:
            _go_on(t, state, task_id)
        except WorkflowFailed as failure:
            fail(t, state, failure.error)


def _go_on(t: Transition, state: WorkflowState, task_id: str) -> None:
    run = state.tasks[task_id]
    t.store.stop_waiting(state.workflow_id, task_id, run)
    acquire.launch(t, state, state.spec.step(run.step_id), task_id, run, admitted=True)


def _waited_out(t: Transition, state: WorkflowState, task_id: str) -> None:
    """A task's NO_AGENT timer fired: dispatch it if an agent serves it after all, else
    pass it on to the next link of its chain, else fail."""
    run = state.tasks[task_id]
    step = state.spec.step(run.step_id)
    if t.agents.serves(step.capability_at(run.link)):
        _go_on(t, state, task_id)
        return
    error_type, why = waiting.no_live_agent(t, step, run)
    t.store.stop_waiting(state.workflow_id, task_id, run)
    if escalation.fall_back(t, state, step, task_id, run, why=why):
        return
    error = WorkflowError(
        type=error_type, message=f"task {task_id}: {why}", step_id=step.id, attempt=run.attempt
    )
    raise WorkflowFailed(escalation.chain_failed(step, task_id, run, error))


def fail(t: Transition, state: WorkflowState, error: WorkflowError) -> None:
    """Emit the workflow's one FAILED event and finish it."""
    # Tasks this workflow produced earlier in the same call would only do orphaned
    # work, so they are withdrawn before the shell sees them.
    unsent = {(task.task_id, task.attempt) for task in t.fx.tasks}
    t.fx.tasks[:] = [task for task in t.fx.tasks if task.workflow_id != state.workflow_id]
    t.fx.events[:] = [e for e in t.fx.events if not _started_of(e, state.workflow_id)]
    cancellation.workflow_ended(t, state, CancelReason.WORKFLOW_FAILED, error.message, unsent)
    acquire.abandon(t, state)
    t.fx.events.append(state_event(state, EventKind.FAILED, t.now_ms, error=error))
    t.store.finish(state.workflow_id, EventKind.FAILED, t.now_ms)


def _started_of(event: WorkflowEvent, workflow_id: str) -> bool:
    """A STEP_STARTED of ``workflow_id``: withdrawn with the task it announced."""
    return event.kind is EventKind.STEP_STARTED and event.workflow_id == workflow_id
