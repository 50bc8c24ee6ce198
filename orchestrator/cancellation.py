"""Cancellation: which dispatched attempts the workers are told to stop, and when.

The rule is one sentence: whenever the engine stops waiting for an attempt that was
dispatched and has no result yet, it says so with a :class:`~fleet.messages.TaskCancelled`
for that ``(task_id, attempt)``. That happens when the attempt times out (``retry``), when
a lease it holds ends (``acquire``), when its workflow is cancelled, and when its
workflow fails with the attempt still running (a sibling failed for good, the workflow's
deadline passed): in each case its result would only be dropped, and in an agent fleet
the handler spends money until it ends.

Why per attempt and not per workflow: a timed-out attempt is stopped while the next
attempt of the same task runs (``attempt`` tells them apart), and a worker matches what
it runs by ``(task_id, attempt)`` without knowing workflows. Attempts that were never
sent (acquiring leases, backing off, withdrawn in this very input) are not cancelled:
nobody runs them; nor is one whose result came (it ended on its worker).

Why it is safe: the message is an effect like the others, produced in the transaction
that records the decision (read_committed workers never see the cancellation of a
decision that was rolled back), and it only ever names attempts whose results the engine
now drops. A worker that misses it (it started after, the record expired) runs the
attempt to its end and the result is dropped, as before: cancellation saves work, it is
never needed for correctness. What workers do with it is :mod:`workers.cancellation`.
"""

from __future__ import annotations

from collections.abc import Set

from fleet.messages import CancelReason, TaskCancelled
from orchestrator.state import WorkflowState
from orchestrator.timers import TimerKind
from orchestrator.transition import Transition


def attempt(
    t: Transition, state: WorkflowState, task_id: str, reason: CancelReason, detail: str
) -> None:
    """Cancel ``task_id``'s current attempt (call it before a retry moves to the next)."""
    run = state.tasks[task_id]
    t.fx.cancellations.append(
        TaskCancelled(
            task_id=task_id,
            workflow_id=state.workflow_id,
            capability=state.spec.step(run.step_id).capability_at(run.link),
            attempt=run.attempt,
            reason=reason.value,
            detail=detail,
            at_ms=t.now_ms,
        )
    )


def workflow_ended(
    t: Transition,
    state: WorkflowState,
    reason: CancelReason,
    detail: str,
    unsent: Set[tuple[str, int]] = frozenset(),
) -> None:
    """The workflow ends: cancel every attempt of it still in flight, but for those in
    ``unsent`` (dispatched by this same input and withdrawn before they were sent).

    In flight means its TIMEOUT timer is armed: disarmed when its result came (even a
    failure that now fails the workflow) or when it timed out (cancelled then)."""
    for task_id, run in state.tasks.items():
        timer = t.store.timers.get(state.workflow_id, task_id)
        if timer is None or timer.kind is not TimerKind.TIMEOUT:
            continue  # backing off, acquiring leases, or its attempt already ended
        if (task_id, run.attempt) not in unsent:
            attempt(t, state, task_id, reason, detail)
