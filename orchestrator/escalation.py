"""Escalation chains: when a step's capability cannot do a task, the next one in its chain.

A step names fallbacks (``fallback: [summarize-lite, summarize-rules]``); with its own
capability they make its chain. The task escalates to the next link when:

* its capability's circuit breaker is open (at once: the breaker says it would fail);
* no live agent of it appeared within ``no_agent_timeout_s``;
* its attempts on this link failed for good (retries exhausted, or an error that is
  not retried: a permanent error from one agent need not be another's);
* a result reported a confidence below the step's ``min_confidence``.

An escalation is a new attempt of the same task (so a late result of the link left
behind is stale and dropped), on the next capability, with the step's ``retries``
afresh; its STEP_STARTED event names the link and why the last one was left. The
chain's end fails the step with every link's cause. A step without fallbacks fails
exactly as before.
"""

from __future__ import annotations

from fleet.messages import WorkflowError
from orchestrator import acquire
from orchestrator.spec import StepSpec
from orchestrator.state import TaskRun, WorkflowState
from orchestrator.transition import Transition, WorkflowFailed


def escalate(
    t: Transition, state: WorkflowState, step: StepSpec, task_id: str, run: TaskRun, *, why: str
) -> bool:
    """Move ``task_id`` to the next link of its chain, its next attempt, for the caller
    to launch (``acquire.launch``); False (nothing changed) at the chain's end."""
    if run.link + 1 >= len(step.chain):
        return False
    run.causes.append(f"{step.capability_at(run.link)}: {why}")
    if run.waiting_since_ms is not None:
        t.store.stop_waiting(state.workflow_id, task_id, run)
    run.retry_at_ms = None
    run.link += 1
    run.link_base = run.attempt
    run.attempt += 1
    return True


def fall_back(
    t: Transition, state: WorkflowState, step: StepSpec, task_id: str, run: TaskRun, *, why: str
) -> bool:
    """:func:`escalate`, then launch the task on its new link; False at the chain's end."""
    if not escalate(t, state, step, task_id, run, why=why):
        return False
    acquire.launch(t, state, step, task_id, run)
    return True


def doubt(wanted: float | None, said: float | None) -> str | None:
    """Why a succeeded result is not accepted: its confidence is under the step's
    ``min_confidence`` (a result that says none is accepted)."""
    if wanted is None or said is None or said >= wanted:
        return None
    return f"confidence {said:g} below min_confidence {wanted:g}"


def unsure(
    t: Transition, state: WorkflowState, step: StepSpec, task_id: str, run: TaskRun, *, doubt: str
) -> None:
    """A result succeeded with too little confidence: the next link, or the step fails."""
    if fall_back(t, state, step, task_id, run, why=f"attempt {run.attempt}: {doubt}"):
        return
    error = WorkflowError(
        type="LowConfidence",
        message=f"task {task_id} attempt {run.attempt}: {doubt}",
        step_id=step.id,
        attempt=run.attempt,
    )
    raise WorkflowFailed(chain_failed(step, task_id, run, error))


def attempts_on_link(run: TaskRun) -> int:
    """Attempts made on the current link, this one included (retries count per link)."""
    return run.attempt - run.link_base


def chain_failed(step: StepSpec, task_id: str, run: TaskRun, error: WorkflowError) -> WorkflowError:
    """The step's failure at its chain's end: ``error`` (the last link's, as a step
    without fallbacks fails) with every earlier link's cause before it."""
    if not run.causes:
        return error
    causes = [*run.causes, f"{step.capability_at(run.link)}: {error.message}"]
    message = f"task {task_id} failed on every link of its chain: " + "; ".join(causes)
    return error.model_copy(update={"message": message})


def escalated_reason(step: StepSpec, run: TaskRun) -> str | None:
    """What a STEP_STARTED event says of an escalated task's first attempt on its link."""
    if run.link == 0 or run.attempt != run.link_base + 1:
        return None
    return (
        f"escalated to {step.capability_at(run.link)} (fallback {run.link} of "
        f"{len(step.fallback)}) after {run.causes[-1]}"
    )
