"""The retry decision: after a failed attempt, the next one (now or after a backoff), or
the workflow's failure.

An attempt fails by a failed result, by a timeout (no result by its deadline) or by the
market (its bid turned away, its lease ended: ``orchestrator.acquire``). A step's
``retries`` bound how many attempts follow the first; only an error marked retryable
is retried, and an UNKNOWN status never is. Only the failed element of a fan-out is
re-sent; its siblings keep running undisturbed.

The wait before the next attempt (:func:`backoff_ms`) lives in the durable state, not in
a sleeping thread: ``store.schedule_retry`` arms a RETRY timer (rebuilt on restore), and
:func:`due` dispatches the attempt once, from the engine's tick.
"""

from __future__ import annotations

import hashlib

from fleet.messages import CancelReason, TaskError, TaskStatus, WorkflowError
from orchestrator import acquire, cancellation, escalation
from orchestrator.effects import FinishedTask, seconds
from orchestrator.state import WorkflowState
from orchestrator.transition import AttemptFailure, Transition, WorkflowFailed

# 2**63 times any allowed backoff_s is still a finite float; larger exponents overflow.
_MAX_DOUBLINGS = 63


def backoff_ms(backoff_s: float, max_backoff_s: float, task_id: str, attempt: int) -> int:
    """How long to wait after failed ``attempt`` before dispatching the next one.

    ``min(max_backoff_s, backoff_s * 2**(attempt-1))`` scaled by a jitter in [0.5, 1)
    that spreads retries of many tasks failing together. The jitter comes from a hash of
    ``(task_id, attempt)``, not from a random draw, so a replay waits exactly as long.
    """
    base_s = min(max_backoff_s, backoff_s * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    digest = hashlib.blake2b(f"{task_id}\x00{attempt}".encode(), digest_size=8).digest()
    fraction = (int.from_bytes(digest, "big") >> 11) / 2**53  # 53 bits: exact, in [0, 1)
    jitter = 0.5 + 0.5 * fraction
    return round(base_s * jitter * 1000)


def after_failure(t: Transition, state: WorkflowState, failed: AttemptFailure) -> None:
    """An attempt failed or timed out (its timeout is disarmed): retry, or fail the
    workflow (raises :class:`~orchestrator.transition.WorkflowFailed`)."""
    task_id, run, status, error = failed
    step = state.spec.step(run.step_id)
    if status is TaskStatus.UNKNOWN:
        why = "status UNKNOWN (not retried)"
    elif error is None or not error.retryable:
        why = "not retryable"
    elif escalation.attempts_on_link(run) <= step.retries:
        # Only this element is re-sent; its siblings keep running undisturbed.
        delay = backoff_ms(step.backoff_s, step.max_backoff_s, task_id, run.attempt)
        if delay > 0:
            # The next attempt waits in the durable state, not in a sleeping thread:
            # its RETRY timer (rebuilt on restore) dispatches it once, from tick.
            t.store.schedule_retry(state.workflow_id, task_id, run, t.now_ms + delay)
        else:
            run.attempt += 1
            acquire.launch(t, state, step, task_id, run)
        return
    else:
        why = f"retries exhausted ({step.retries} allowed)"
    cause = error.message if error is not None else f"task ended with {status.value}"
    if escalation.fall_back(
        t, state, step, task_id, run, why=f"attempt {run.attempt} {why}: {cause}"
    ):
        return
    last = WorkflowError(
        type=error.type if error is not None else "TaskFailed",
        message=f"task {task_id} attempt {run.attempt} failed, {why}: {cause}",
        step_id=step.id,
        attempt=run.attempt,
    )
    raise WorkflowFailed(escalation.chain_failed(step, task_id, run, last))


def due(t: Transition, state: WorkflowState, task_id: str) -> None:
    """A task's RETRY timer fired: its backoff is over, the next attempt starts."""
    run = state.tasks[task_id]
    run.attempt += 1
    run.retry_at_ms = None
    acquire.launch(t, state, state.spec.step(run.step_id), task_id, run)


def timed_out(t: Transition, state: WorkflowState, task_id: str) -> None:
    """A task's TIMEOUT timer fired: its attempt has no result by its deadline, which
    is a retryable failure. The workers are told to stop that attempt (its result would
    be dropped now), before the retry decision moves the task to its next attempt."""
    run = state.tasks[task_id]
    step = state.spec.step(run.step_id)
    latency = t.now_ms - run.dispatched_at_ms
    t.fx.finished.append(FinishedTask(step.capability_at(run.link), latency, False))
    # Its leases are not given back: the worker may still be using them. They end at
    # their expiry, which the worker's handler deadline never outlives.
    run.leases = {}
    timeout = TaskError(
        type="TimeoutError",
        message=f"no result within {seconds(step.timeout_s)} s",
        retryable=True,
    )
    cancellation.attempt(t, state, task_id, CancelReason.TIMED_OUT, timeout.message)
    after_failure(t, state, AttemptFailure(task_id, run, TaskStatus.FAILED, timeout))
