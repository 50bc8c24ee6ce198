"""The engine's memory: workflows, their timers and what the changelog has not seen yet.

:class:`WorkflowStore` keeps four things consistent that would drift if each caller
updated them by hand: active workflows, finished records, the timers that follow from
both (a task's timeout or retry, a workflow's deadline, a record's expiry) and the set
of workflows changed since the last ``take_changes``. The in-flight count is the number
of live TIMEOUT timers, so it cannot disagree with the state either.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import JsonValue

from fleet.messages import EventKind, TaskAssigned
from orchestrator import snapshot
from orchestrator.effects import assign
from orchestrator.spec import StepSpec
from orchestrator.state import FinishedWorkflow, TaskRun, WorkflowState, duration_ms
from orchestrator.timers import WORKFLOW, Timer, TimerKind, Timers


class WorkflowStore:
    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms  # how long a finished record is kept
        self._workflows: dict[str, WorkflowState] = {}
        self._finished: dict[str, FinishedWorkflow] = {}
        self._timers = Timers()
        self._changed: dict[str, None] = {}  # an ordered set: records come out in order
        # Tasks held back for want of a live agent: (workflow, task) -> (since, capability).
        self._waiting: dict[tuple[str, str], tuple[int, str]] = {}

    # -- queries ------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._workflows)

    @property
    def retained(self) -> int:
        return len(self._finished)

    @property
    def in_flight(self) -> int:
        return self._timers.count(TimerKind.TIMEOUT)

    @property
    def timers(self) -> Timers:
        """Read-only use: every change goes through the store's methods."""
        return self._timers

    def waiting(self) -> list[tuple[str, str, str]]:
        """``(workflow_id, task_id, capability)`` of every waiting task, longest first."""
        ordered = sorted((since, key, cap) for key, (since, cap) in self._waiting.items())
        return [(workflow_id, task_id, cap) for _, (workflow_id, task_id), cap in ordered]

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def waiting_since_ms(self) -> int | None:
        """When the longest-waiting task started waiting (None: none waits)."""
        return min((since for since, _ in self._waiting.values()), default=None)

    def get(self, workflow_id: str) -> WorkflowState | None:
        return self._workflows.get(workflow_id)

    def finished(self, workflow_id: str) -> FinishedWorkflow | None:
        return self._finished.get(workflow_id)

    # -- changes ------------------------------------------------------------------------

    def touch(self, workflow_id: str) -> None:
        """Mark a workflow changed: its record goes out with the next take_changes."""
        self._changed[workflow_id] = None

    def add(self, state: WorkflowState) -> None:
        workflow_id = state.workflow_id
        self._workflows[workflow_id] = state
        if (deadline := state.deadline_ms) is not None:
            self._timers.set(Timer(deadline, TimerKind.DEADLINE, workflow_id, WORKFLOW))
        self.touch(workflow_id)

    def dispatch(
        self, state: WorkflowState, step: StepSpec, task_id: str, run: TaskRun, now_ms: int
    ) -> TaskAssigned:
        """Send ``run.attempt`` (a new one: never in flight yet) with a fresh deadline,
        and arm its timeout."""
        run.dispatched_at_ms = now_ms
        run.deadline_ms = now_ms + duration_ms(step.timeout_s)
        run.retry_at_ms = None
        self.stop_waiting(state.workflow_id, task_id, run)
        self._timers.set(Timer(run.deadline_ms, TimerKind.TIMEOUT, state.workflow_id, task_id))
        return assign(state.workflow_id, step, task_id, run)

    def wait(self, state: WorkflowState, task_id: str, run: TaskRun, now_ms: int) -> bool:
        """Hold ``run.attempt`` back until a live agent serves its step, at most the step's
        ``no_agent_timeout_s`` (its NO_AGENT timer). False if it was waiting already."""
        if run.waiting_since_ms is not None:
            return False
        run.waiting_since_ms = now_ms
        self._arm_wait(state, task_id, run)
        return True

    def stop_waiting(self, workflow_id: str, task_id: str, run: TaskRun) -> None:
        """The task goes on (dispatched, or to the market): no longer waiting."""
        if run.waiting_since_ms is None:
            return
        run.waiting_since_ms = None
        self._waiting.pop((workflow_id, task_id), None)
        timer = self._timers.get(workflow_id, task_id)
        if timer is not None and timer.kind is TimerKind.NO_AGENT:
            self._timers.cancel(workflow_id, task_id)

    def _arm_wait(self, state: WorkflowState, task_id: str, run: TaskRun) -> None:
        assert run.waiting_since_ms is not None
        workflow_id = state.workflow_id
        step = state.spec.step(run.step_id)
        due = run.waiting_since_ms + duration_ms(step.no_agent_timeout_s)
        self._timers.set(Timer(due, TimerKind.NO_AGENT, workflow_id, task_id))
        capability = step.capability_at(run.link)
        self._waiting[(workflow_id, task_id)] = (run.waiting_since_ms, capability)

    def attempt_ended(self, workflow_id: str, task_id: str) -> None:
        """The in-flight attempt of a task got its result: disarm its timeout."""
        self._timers.cancel(workflow_id, task_id)

    def schedule_retry(self, workflow_id: str, task_id: str, run: TaskRun, due_ms: int) -> None:
        """Arm the RETRY timer of a failed attempt (when: ``orchestrator.retry``)."""
        run.retry_at_ms = due_ms
        self._timers.set(Timer(due_ms, TimerKind.RETRY, workflow_id, task_id))

    def finish(
        self, workflow_id: str, kind: EventKind, now_ms: int, *, announced: bool = True
    ) -> None:
        """Replace an active workflow (or nothing, for a rejected one) by its finished
        record, kept ``retention_ms`` so a repeated submission is recognised."""
        self._drop(workflow_id)
        self._finished[workflow_id] = FinishedWorkflow(kind, now_ms, announced)
        expiry = now_ms + self.retention_ms
        self._timers.set(Timer(expiry, TimerKind.EXPIRY, workflow_id, WORKFLOW))
        self.touch(workflow_id)

    def expire(self, workflow_id: str) -> None:
        del self._finished[workflow_id]
        self.touch(workflow_id)

    def pop_due(self, now_ms: int) -> Timer | None:
        return self._timers.pop_due(now_ms)

    # -- durability ---------------------------------------------------------------------

    def take_changes(self) -> dict[str, JsonValue | None]:
        changes = {workflow_id: self.record_of(workflow_id) for workflow_id in self._changed}
        self._changed.clear()
        return changes

    def record_of(self, workflow_id: str) -> JsonValue | None:
        if (state := self._workflows.get(workflow_id)) is not None:
            return snapshot.encode_active(state)
        if (finished := self._finished.get(workflow_id)) is not None:
            return snapshot.encode_finished(finished)
        return None

    def restore(self, workflow_id: str, record: JsonValue) -> None:
        loaded = snapshot.decode(workflow_id, record)  # raises before anything changes
        self._drop(workflow_id)
        if isinstance(loaded, FinishedWorkflow):
            self._finished[workflow_id] = loaded
            expiry = loaded.at_ms + self.retention_ms
            self._timers.set(Timer(expiry, TimerKind.EXPIRY, workflow_id, WORKFLOW))
            return
        self._workflows[workflow_id] = loaded
        if (deadline := loaded.deadline_ms) is not None:
            self._timers.set(Timer(deadline, TimerKind.DEADLINE, workflow_id, WORKFLOW))
        for task_id, run in loaded.tasks.items():
            if run.waiting_since_ms is not None:
                self._arm_wait(loaded, task_id, run)
            elif run.retry_at_ms is not None:
                self._timers.set(Timer(run.retry_at_ms, TimerKind.RETRY, workflow_id, task_id))
            elif run.in_flight:  # acquiring tasks have no timeout until they are dispatched
                self._timers.set(Timer(run.deadline_ms, TimerKind.TIMEOUT, workflow_id, task_id))

    def forget(self, keep: Callable[[str], bool]) -> None:
        for workflow_id in [*self._workflows, *self._finished, *self._changed]:
            if not keep(workflow_id):
                self._drop(workflow_id)

    def _drop(self, workflow_id: str) -> None:
        """Forget a workflow entirely: state, record, timers and unreported change."""
        state = self._workflows.pop(workflow_id, None)
        if state is not None:
            for task_id in state.tasks:
                self._timers.cancel(workflow_id, task_id)
                self._waiting.pop((workflow_id, task_id), None)
        self._finished.pop(workflow_id, None)
        self._timers.cancel(workflow_id, WORKFLOW)
        self._changed.pop(workflow_id, None)
