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
    BudgetTopUpRequested,
    EventKind,
    MarketOutcome,
    MarketOutcomeKind,
    TaskError,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowError,
    WorkflowSubmitted,
)
from orchestrator import acquire
from orchestrator.effects import (
    Effects,
    FinishedTask,
    deadline_error,
    event,
    seconds,
    state_event,
)
from orchestrator.market.budget import Budget
from orchestrator.market.policy import MarketPolicy
from orchestrator.refs import Context, json_kind, resolve
from orchestrator.spec import StepSpec, check_market, parse_spec
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
        self,
        has_capability: Callable[[str], bool],
        *,
        finished_retention_ms: int = 3_600_000,
        policy: MarketPolicy | None = None,
    ) -> None:
        if finished_retention_ms < 0:
            raise ConfigError(f"finished_retention_ms must be >= 0, got {finished_retention_ms}")
        self._has_capability = has_capability
        self._store = WorkflowStore(finished_retention_ms)
        self._policy = policy or MarketPolicy.empty()

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
            if problems := check_market(spec, self._policy):
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
        if any(step.resources for step in spec.steps):
            # Band and budget are decided now, from the policy in force at submission.
            tenant = self._policy.tenant_of(spec.tenant)
            state.band = self._policy.band_of(tenant.name, spec.priority)
            limit = spec.budget if spec.budget is not None else tenant.budget_default
            state.budget = Budget(limit or 0)
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
        effects.market += acquire.release(run, now_ms)  # the worker is done with them
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
        self._abandon_market(state, now_ms, effects)
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
        try:
            if outcome.kind is MarketOutcomeKind.GRANTED:
                self._granted(state, run, outcome, now_ms, effects)
            elif outcome.kind is MarketOutcomeKind.LOST:
                self._lost(state, run, outcome, now_ms, effects)
            elif outcome.kind is MarketOutcomeKind.ENDED:
                self._lease_ended(state, run, outcome, now_ms, effects)
            else:
                effects.dropped.append(f"market outcome {outcome.bid_id}: unknown kind")
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, effects)
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
                run.retry_at_ms = None
                self._launch(state, step, timer.task_id, run, now_ms=now_ms, fx=fx)
                return
            fx.finished.append(FinishedTask(step.capability, now_ms - run.dispatched_at_ms, False))
            # Its leases are not given back: the worker may still be using them. They end
            # at their expiry, which the worker's handler deadline never outlives.
            run.leases = {}
            timeout = TaskError(
                type="TimeoutError",
                message=f"no result within {seconds(step.timeout_s)} s",
                retryable=True,
            )
            failed = _Failure(timer.task_id, run, TaskStatus.FAILED, timeout)
            self._on_failure(state, step, failed, now_ms, fx)
        except _WorkflowFailed as failure:
            self._fail(state, failure.error, now_ms, fx)

    def _launch(
        self,
        state: WorkflowState,
        step: StepSpec,
        task_id: str,
        run: TaskRun,
        *,
        now_ms: int,
        fx: Effects,
    ) -> None:
        """Dispatch ``run.attempt``, once it holds a lease on every pool its step needs."""
        if step.resources:
            run.acquiring = True
            pool = acquire.next_pool(step, run)
            if pool is not None:
                try:
                    fx.market.append(
                        acquire.bid(
                            self._policy, state, step, task_id, run, pool=pool, now_ms=now_ms
                        )
                    )
                except acquire.BudgetDenied as denied:
                    fx.budget_denials += 1
                    raise _WorkflowFailed(
                        WorkflowError(type="BudgetExhausted", message=str(denied), step_id=step.id)
                    ) from denied
                return
            run.acquiring = False
        fx.tasks.append(self._store.dispatch(state, step, task_id, run, now_ms))

    def _granted(
        self,
        state: WorkflowState,
        run: TaskRun | None,
        outcome: MarketOutcome,
        now_ms: int,
        fx: Effects,
    ) -> None:
        lease = outcome.lease
        if lease is None:
            fx.dropped.append(f"grant {outcome.bid_id}: carries no lease")
            return
        # The settlement: the clearing price is charged, the rest of the hold released.
        acquire.settle(state.budget, outcome.bid_id, lease.unit_price * len(lease.units))
        fx.settlement_lags_ms.append(max(0, now_ms - outcome.at_ms))
        if run is None or run.bid != outcome.bid_id:
            fx.market.append(acquire.release_one(lease, now_ms))
            fx.dropped.append(f"grant {outcome.bid_id}: no longer wanted; released")
            return
        run.bid = None
        run.leases[lease.resource] = lease
        fx.market.append(acquire.claim(lease, now_ms))
        step = state.spec.step(run.step_id)
        self._launch(state, step, outcome.task_id, run, now_ms=now_ms, fx=fx)

    def _lost(
        self,
        state: WorkflowState,
        run: TaskRun | None,
        outcome: MarketOutcome,
        now_ms: int,
        fx: Effects,
    ) -> None:
        acquire.settle(state.budget, outcome.bid_id, 0)
        if run is None or run.bid != outcome.bid_id:
            fx.dropped.append(f"bid {outcome.bid_id} lost ({outcome.reason}): not out any more")
            return
        run.bid = None
        error = TaskError(
            type="ResourceUnavailable",
            message=f"bid on {outcome.resource} {outcome.reason}",
            retryable=outcome.reason == "expired",  # below reserve, unknown pool: for good
        )
        self._attempt_failed(
            state, _Failure(outcome.task_id, run, TaskStatus.FAILED, error), now_ms, fx
        )

    def _lease_ended(
        self,
        state: WorkflowState,
        run: TaskRun | None,
        outcome: MarketOutcome,
        now_ms: int,
        fx: Effects,
    ) -> None:
        lease = outcome.lease
        held = None if run is None else run.leases.get(outcome.resource)
        if run is None or lease is None or held is None or held.token != lease.token:
            fx.dropped.append(f"lease {outcome.bid_id} ended ({outcome.reason}): not held")
            return
        del run.leases[outcome.resource]
        error = TaskError(
            type="LeaseEnded",
            message=f"lease on {outcome.resource} {outcome.reason}",
            retryable=True,
        )
        self._attempt_failed(
            state, _Failure(outcome.task_id, run, TaskStatus.FAILED, error), now_ms, fx
        )

    def _attempt_failed(
        self, state: WorkflowState, failed: _Failure, now_ms: int, fx: Effects
    ) -> None:
        """The market ended an attempt (acquiring or in flight): retry it, or fail."""
        task_id, run = failed.task_id, failed.run
        step = state.spec.step(run.step_id)
        if run.in_flight:
            self._store.attempt_ended(state.workflow_id, task_id)
            fx.finished.append(FinishedTask(step.capability, now_ms - run.dispatched_at_ms, False))
            run.leases = {}  # left to expire: its worker may be using them
        else:
            # Acquiring: what it holds goes back, and the next attempt starts from the
            # first pool again (the global order).
            if (withdrawn := acquire.withdraw(run, now_ms)) is not None:
                fx.market.append(withdrawn)
            fx.market += acquire.release(run, now_ms)
            run.acquiring = False
        self._on_failure(state, step, failed, now_ms, fx)

    def _abandon_market(self, state: WorkflowState, now_ms: int, fx: Effects) -> None:
        """The workflow ends: bids out are withdrawn, leases of undispatched tasks given
        back. Dispatched tasks keep theirs until expiry (their workers may be running)."""
        for run in state.tasks.values():
            if (withdrawn := acquire.withdraw(run, now_ms)) is not None:
                fx.market.append(withdrawn)
            if run.acquiring:
                fx.market += acquire.release(run, now_ms)

    def _fail(self, state: WorkflowState, error: WorkflowError, now_ms: int, fx: Effects) -> None:
        """Emit the workflow's one FAILED event and finish it."""
        # Tasks this workflow produced earlier in the same call would only do orphaned
        # work, so they are withdrawn before the shell sees them.
        fx.tasks[:] = [task for task in fx.tasks if task.workflow_id != state.workflow_id]
        self._abandon_market(state, now_ms, fx)
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
                self._launch(state, step, task_id, run, now_ms=now_ms, fx=fx)
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
            self._launch(state, step, task_id, run, now_ms=now_ms, fx=fx)
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
