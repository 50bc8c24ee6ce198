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

This module is the facade (submit, cancel, results, market answers, ticks, the agents'
view); each concept an input leads to has its own module: ``admission`` (what the
market policy allows, band and budget), ``decompose`` (starting steps as tasks),
``fanin`` (collecting them, the workflow output), ``retry`` (after a failed attempt),
``acquire`` (the workflow side of the market), ``waiting`` (holding back what no live
agent would take), ``lifecycle`` (timers firing, waiting tasks going on, a workflow
failing) and ``store`` (memory and timers), the transitions sharing a
:class:`~orchestrator.transition.Transition`.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import JsonValue

from fleet import usage
from fleet.errors import ConfigError, SpecError
from fleet.messages import (
    BudgetTopUpRequested,
    CancelReason,
    EventKind,
    MarketOutcome,
    MarketOutcomeKind,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowError,
    WorkflowSubmitted,
)
from orchestrator import acquire, admission, cancellation, decompose, escalation, fanin, retry
from orchestrator.effects import Effects, FinishedTask, deadline_error, event, state_event
from orchestrator.lifecycle import fail, fire, recheck
from orchestrator.market.policy import MarketPolicy
from orchestrator.spec import parse_spec
from orchestrator.state import FinishedWorkflow, StepRun, TaskRun, WorkflowState, task_id_for
from orchestrator.store import WorkflowStore
from orchestrator.timers import Timer
from orchestrator.transition import AttemptFailure, Transition, WorkflowFailed
from orchestrator.waiting import EVERY_CAPABILITY, Agents

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


class Engine:
    """Every owned workflow's state, advanced one input at a time.

    Each input call handles one workflow and returns its effects; the shell must produce
    them (in one transaction with the input's offset and ``take_changes``) before it
    feeds the next input. ``tick`` may touch many workflows at once.
    """

    def __init__(
        self,
        has_capability: Callable[[str], bool],
        *,
        finished_retention_ms: int = 3_600_000,
        policy: MarketPolicy | None = None,
        agents: Agents = EVERY_CAPABILITY,
    ) -> None:
        if finished_retention_ms < 0:
            raise ConfigError(f"finished_retention_ms must be >= 0, got {finished_retention_ms}")
        self._has_capability = has_capability
        self._store = WorkflowStore(finished_retention_ms)
        self._policy = policy or MarketPolicy.empty()
        self._agents = agents
        self._seen: int | None = None  # the agents' generation waiting tasks were checked at

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
        """When ``tick`` next has something to do (None: nothing pending). Waiting tasks
        are due again, from when they started waiting, once the agents changed."""
        due = self._store.timers.next_due_ms()
        if self._store.waiting_count and self._agents.generation != self._seen:
            since = self._store.waiting_since_ms()
            assert since is not None
            due = since if due is None else min(due, since)
        return due

    @property
    def waiting(self) -> int:
        """Tasks held back for want of a live agent (``orchestrator.waiting``)."""
        return self._store.waiting_count

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
            if problems := admission.check_market(spec, self._policy):
                raise SpecError(problems)
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
        admission.admit(state, self._policy)
        self._store.add(state)
        effects.events.append(state_event(state, EventKind.ACCEPTED, now_ms))
        t = self._transition(now_ms, effects)
        try:
            deadline = state.deadline_ms
            if deadline is not None and deadline <= now_ms:
                # Already too late: do not dispatch work whose outcome is moot.
                raise WorkflowFailed(deadline_error(state))
            decompose.advance(t, state)
        except WorkflowFailed as failure:
            fail(t, state, failure.error)
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
        if run.retry_at_ms is not None or run.waiting_since_ms is not None:
            # A duplicate of the failure, or a late answer after the attempt timed out;
            # or an attempt never sent (it waits for a live agent).
            effects.dropped.append(f"{where}: {_not_awaited(run)}")
            return effects
        self._store.touch(workflow_id)
        self._store.attempt_ended(workflow_id, result.task_id)
        effects.market += acquire.release(run, now_ms)  # the worker is done with them
        step = state.spec.step(run.step_id)
        succeeded = result.status is TaskStatus.SUCCEEDED
        latency = max(0, now_ms - run.dispatched_at_ms)
        effects.finished.append(
            FinishedTask(
                result.capability,
                latency,
                succeeded,
                version=result.version,
                tenant=state.spec.tenant or self._policy.default_tenant,
                usage=result.usage,
            )
        )
        if result.usage:
            # Past the checks above: each attempt's result is accepted once, so counted once.
            state.usage = usage.merge(state.usage, result.usage)
        t = self._transition(now_ms, effects)
        try:
            if succeeded and (doubt := escalation.doubt(step.min_confidence, result.confidence)):
                escalation.unsure(t, state, step, result.task_id, run, doubt=doubt)
            elif succeeded:
                if fanin.task_succeeded(t, state, run, result.output, result.worker_id):
                    decompose.advance(t, state)
            else:
                failed = AttemptFailure(result.task_id, run, result.status, result.error)
                retry.after_failure(t, state, failed)
        except WorkflowFailed as failure:
            fail(t, state, failure.error)
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
        t = self._transition(now_ms, effects)
        cancellation.workflow_ended(t, state, CancelReason.WORKFLOW_CANCELLED, error.message)
        acquire.abandon(t, state)
        effects.events.append(state_event(state, EventKind.CANCELLED, now_ms, error=error))
        # Dropping the state drops its timers: no retry or timeout can dispatch again.
        self._store.finish(workflow_id, EventKind.CANCELLED, now_ms)
        return effects

    def on_market(self, outcome: MarketOutcome, now_ms: int) -> Effects:
        """An auctioneer's answer about one of this workflow's bids or leases."""
        effects = Effects()
        state = self._store.get(outcome.workflow_id)
        if state is None:
            if outcome.kind is MarketOutcomeKind.GRANTED and outcome.lease is not None:
                effects.market.append(acquire.release_one(outcome.lease, now_ms))  # unwanted
            effects.dropped.append(
                f"market {outcome.kind.value} {outcome.bid_id}: workflow not active"
            )
            return effects
        self._store.touch(outcome.workflow_id)
        run = state.tasks.get(outcome.task_id)
        t = self._transition(now_ms, effects)
        try:
            failed: AttemptFailure | None = None
            if outcome.kind is MarketOutcomeKind.GRANTED:
                acquire.granted(t, state, run, outcome)
            elif outcome.kind is MarketOutcomeKind.LOST:
                failed = acquire.lost(t, state, run, outcome)
            elif outcome.kind is MarketOutcomeKind.ENDED:
                failed = acquire.ended(t, state, run, outcome)
            else:
                effects.dropped.append(f"market outcome {outcome.bid_id}: unknown kind")
            if failed is not None:
                retry.after_failure(t, state, failed)
        except WorkflowFailed as failure:
            fail(t, state, failure.error)
        return effects

    def top_up(self, request: BudgetTopUpRequested, now_ms: int) -> Effects:
        """Raise a running workflow's budget (once per top-up id)."""
        effects = Effects()
        state = self._store.get(request.workflow_id)
        if state is None or state.budget is None:
            why = "not active" if state is None else "has no budget (no step needs resources)"
            effects.dropped.append(f"top-up of workflow {request.workflow_id}: {why}")
            return effects
        if state.budget.top_up(request.top_up_id, request.amount):
            self._store.touch(request.workflow_id)
        else:
            effects.dropped.append(f"top-up {request.top_up_id}: already applied")
        return effects

    def tick(self, now_ms: int) -> Effects:
        """Fire every timer due at or before ``now_ms``, in (due, kind, workflow, task)
        order: record expiry, workflow deadlines, task timeouts, scheduled retries."""
        t = self._transition(now_ms, Effects())
        if self._store.waiting_count and self._agents.generation != self._seen:
            self._recheck(t)
        while (timer := self._store.pop_due(now_ms)) is not None:
            fire(t, timer)
        return t.fx

    def route_by(self, agents: Agents) -> None:
        """Take the agents' view the shell keeps (``orchestrator.shell.agents``)."""
        self._agents = agents
        self._seen = None

    def agents_changed(self, now_ms: int) -> Effects:
        """Dispatch every waiting task a live agent serves now (``tick`` does it too,
        whenever the agents' generation moved)."""
        t = self._transition(now_ms, Effects())
        self._recheck(t)
        return t.fx

    def _recheck(self, t: Transition) -> None:
        # The generation first: the answers read after it are at least as new.
        self._seen = self._agents.generation
        recheck(t)

    def _transition(self, now_ms: int, effects: Effects) -> Transition:
        return Transition(self._store, self._policy, now_ms, effects, self._agents)

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
        self._seen = None  # a restored waiting task may be served by now: check again

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop every workflow, active or finished, for which ``keep`` is False, with its
        timers and unreported changes (its partition now belongs to someone else)."""
        self._store.forget(keep)


def _not_awaited(run: TaskRun) -> str:
    """Why a result of the task's current attempt is not awaited."""
    if run.waiting_since_ms is not None:
        return f"attempt {run.attempt} was never dispatched, it waits for a live agent"
    return (
        f"stale, attempt {run.attempt} already ended; "
        f"attempt {run.attempt + 1} is due at {run.retry_at_ms}"
    )
