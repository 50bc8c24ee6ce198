"""The workflow side of the market: what a task's owner sends to auctioneers.

A step with resources acquires them one pool at a time, in the global order of
``StepSpec.acquire_order`` (by pool name), before its attempt is dispatched. A task
holding pool p only ever waits for a pool after p, so no cycle of waits can form
(ordered resources; a pool's units come in one all-or-nothing award, so several units
of one pool never wait on each other). When a task loses a lease while it still waits
for others, it gives back everything and starts again from the first pool, keeping the
order.

Every bid first gets a hold on the workflow's budget for price x units; the bid id is
the hold id, and it names the task, the attempt and the pool, so a bid re-sent after a
restore is the same bid (the auctioneer drops the duplicate).

The engine's market transitions live here too: :func:`launch` (acquire, then dispatch),
the auctioneer's answers (:func:`granted`, :func:`lost`, :func:`ended`) and
:func:`abandon` when a workflow ends. A lost bid or an ended lease comes back as an
:class:`~orchestrator.transition.AttemptFailure` for the retry decision
(``orchestrator.retry``).
"""

from __future__ import annotations

from fleet.messages import (
    CancelReason,
    LeaseGrant,
    LostReason,
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    TaskError,
    TaskStatus,
    WorkflowError,
)
from orchestrator import cancellation, escalation, waiting
from orchestrator.effects import FinishedTask, started_event
from orchestrator.market.budget import Budget, Denied
from orchestrator.market.policy import MarketPolicy, micro_to_credits
from orchestrator.spec import StepSpec
from orchestrator.state import TaskRun, WorkflowState
from orchestrator.transition import AttemptFailure, Transition, WorkflowFailed

# -- transitions ------------------------------------------------------------------------


def launch(
    t: Transition,
    state: WorkflowState,
    step: StepSpec,
    task_id: str,
    run: TaskRun,
    *,
    admitted: bool = False,
) -> None:
    """Dispatch ``run.attempt``, once it holds a lease on every pool its step needs, and
    announce it with a STEP_STARTED event. Unless no live agent would take it: then it
    waits first (``orchestrator.waiting``), before it bids for anything. ``admitted``:
    the caller asked already, and got yes (asking twice would spend two of a half-open
    circuit breaker's trials on one task)."""
    if not run.acquiring and not admitted and waiting.hold(t, state, step, task_id, run):
        return
    if step.resources:
        run.acquiring = True
        pool = next_pool(step, run)
        if pool is not None:
            try:
                t.fx.market.append(
                    bid(t.policy, state, step, task_id, run, pool=pool, now_ms=t.now_ms)
                )
            except BudgetDenied as denied:
                t.fx.budget_denials += 1
                raise WorkflowFailed(
                    WorkflowError(type="BudgetExhausted", message=str(denied), step_id=step.id)
                ) from denied
            return
        run.acquiring = False
    task = t.store.dispatch(state, step, task_id, run, t.now_ms)
    t.fx.tasks.append(task)
    started = started_event(state, task)
    if (why := escalation.escalated_reason(step, run)) is not None:
        started = started.model_copy(update={"reason": why})
    t.fx.events.append(started)


def granted(
    t: Transition, state: WorkflowState, run: TaskRun | None, outcome: MarketOutcome
) -> None:
    """A bid won: settle it, then claim the lease and go on acquiring (or dispatch)."""
    lease = outcome.lease
    if lease is None:
        t.fx.dropped.append(f"grant {outcome.bid_id}: carries no lease")
        return
    # The settlement: the clearing price is charged, the rest of the hold released.
    settle(state.budget, outcome.bid_id, lease.unit_price * len(lease.units))
    t.fx.settlement_lags_ms.append(max(0, t.now_ms - outcome.at_ms))
    if run is None or run.bid != outcome.bid_id:
        t.fx.market.append(release_one(lease, t.now_ms))
        t.fx.dropped.append(f"grant {outcome.bid_id}: no longer wanted; released")
        return
    run.bid = None
    run.leases[lease.resource] = lease
    t.fx.market.append(claim(lease, t.now_ms))
    launch(t, state, state.spec.step(run.step_id), outcome.task_id, run)


def lost(
    t: Transition, state: WorkflowState, run: TaskRun | None, outcome: MarketOutcome
) -> AttemptFailure | None:
    """A bid was turned away: the attempt fails (None: the bid was no longer out)."""
    settle(state.budget, outcome.bid_id, 0)
    if run is None or run.bid != outcome.bid_id:
        t.fx.dropped.append(f"bid {outcome.bid_id} lost ({outcome.reason}): not out any more")
        return None
    run.bid = None
    error = TaskError(
        type="ResourceUnavailable",
        message=f"bid on {outcome.resource} {outcome.reason}",
        # Only a bid that waited too long may win another time; below the reserve or
        # for an unknown pool it loses for good.
        retryable=outcome.lost_reason is LostReason.EXPIRED,
    )
    return _attempt_ended(t, state, AttemptFailure(outcome.task_id, run, TaskStatus.FAILED, error))


def ended(
    t: Transition, state: WorkflowState, run: TaskRun | None, outcome: MarketOutcome
) -> AttemptFailure | None:
    """A lease the attempt holds ended: the attempt fails (None: it held no such lease)."""
    lease = outcome.lease
    held = None if run is None else run.leases.get(outcome.resource)
    if run is None or lease is None or held is None or held.token != lease.token:
        t.fx.dropped.append(f"lease {outcome.bid_id} ended ({outcome.reason}): not held")
        return None
    del run.leases[outcome.resource]
    error = TaskError(
        type="LeaseEnded",
        message=f"lease on {outcome.resource} {outcome.reason}",
        retryable=True,
    )
    return _attempt_ended(t, state, AttemptFailure(outcome.task_id, run, TaskStatus.FAILED, error))


def _attempt_ended(t: Transition, state: WorkflowState, failed: AttemptFailure) -> AttemptFailure:
    """The market ended an attempt (acquiring or in flight): tidy its market side up,
    and hand it on to the retry decision."""
    task_id, run = failed.task_id, failed.run
    if run.in_flight:
        step = state.spec.step(run.step_id)
        message = failed.error.message if failed.error else ""
        cancellation.attempt(t, state, task_id, CancelReason.LEASE_ENDED, message)
        t.store.attempt_ended(state.workflow_id, task_id)
        latency = t.now_ms - run.dispatched_at_ms
        t.fx.finished.append(
            FinishedTask(step.capability_at(run.link), latency, False, counts_for_breaker=False)
        )
        run.leases = {}  # left to expire: its worker may be using them
    else:
        # Acquiring: what it holds goes back, and the next attempt starts from the
        # first pool again (the global order).
        if (withdrawn := withdraw(run, t.now_ms)) is not None:
            t.fx.market.append(withdrawn)
        t.fx.market += release(run, t.now_ms)
        run.acquiring = False
    return failed


def abandon(t: Transition, state: WorkflowState) -> None:
    """The workflow ends: bids out are withdrawn, leases of undispatched tasks given
    back. Dispatched tasks keep theirs until expiry (their workers may be running)."""
    for run in state.tasks.values():
        if (withdrawn := withdraw(run, t.now_ms)) is not None:
            t.fx.market.append(withdrawn)
        if run.acquiring:
            t.fx.market += release(run, t.now_ms)


# -- messages to the auctioneer ---------------------------------------------------------


class BudgetDenied(Exception):  # noqa: N818 - internal control flow, turned into a failure
    def __init__(self, pool: str, amount: int, available: int) -> None:
        # In credits, as users give them (`budget`, `fleet budget top-up`); the terminal
        # event's budget carries the exact micro-credits.
        super().__init__(
            f"budget_exhausted: a bid on {pool} needs {micro_to_credits(amount)} credits, "
            f"{micro_to_credits(available)} left"
        )


def bid_id(task_id: str, attempt: int, pool: str) -> str:
    return f"{task_id}#{attempt}#{pool}"


def pool_of(bid: str) -> str:
    return bid.rsplit("#", 1)[1]


def next_pool(step: StepSpec, run: TaskRun) -> tuple[str, int] | None:
    """The first pool, in the global order, this attempt does not hold yet."""
    return next(((p, u) for p, u in step.acquire_order() if p not in run.leases), None)


def bid(
    policy: MarketPolicy,
    state: WorkflowState,
    step: StepSpec,
    task_id: str,
    run: TaskRun,
    *,
    pool: tuple[str, int],
    now_ms: int,
) -> MarketInput:
    """Hold the money and build the bid for ``pool``; raises BudgetDenied."""
    name, units = pool
    assert state.budget is not None  # admission gives every workflow with resources one
    price = step.max_price
    if price is None:
        price = policy.tenant_of(state.spec.tenant).default_max_price
    this = bid_id(task_id, run.attempt, name)
    hold = state.budget.grant_hold(this, price * units)
    if isinstance(hold, Denied):
        raise BudgetDenied(name, price * units, state.budget.available)
    run.bid = this
    return MarketInput(
        kind=MarketInputKind.BID,
        resource=name,
        bid_id=this,
        workflow_id=state.workflow_id,
        task_id=task_id,
        band=state.band,
        price=price,
        units=units,
        lease_ttl_ms=policy.pools[name].lease_ttl_ms,
        valid_rounds=policy.bid_valid_rounds,
        at_ms=now_ms,
    )


def settle(budget: Budget | None, hold_id: str, charge: int) -> None:
    """Apply a settlement once: a hold already settled (or never ours) is left alone."""
    if budget is not None and hold_id in budget.holds:
        budget.settle(hold_id, charge)


def withdraw(run: TaskRun, now_ms: int) -> MarketInput | None:
    """Take back the bid out now, if any.

    Its hold stays open until the auctioneer answers: the withdrawal may cross an award
    already made, and then the award is charged at its price (and the unit given back
    at once), so what a workflow spent always matches what the ledger sold it. Settling
    at 0 here made a sale no budget paid for (market fault run, seed 5)."""
    if run.bid is None:
        return None
    this, run.bid = run.bid, None
    return MarketInput(
        kind=MarketInputKind.WITHDRAW, resource=pool_of(this), bid_id=this, at_ms=now_ms
    )


def release(run: TaskRun, now_ms: int) -> list[MarketInput]:
    """Give back every lease the attempt holds."""
    inputs = [_about(MarketInputKind.RELEASE, lease, now_ms) for lease in run.leases.values()]
    run.leases = {}
    return inputs


def claim(lease: LeaseGrant, now_ms: int) -> MarketInput:
    return _about(MarketInputKind.CLAIM, lease, now_ms)


def release_one(lease: LeaseGrant, now_ms: int) -> MarketInput:
    return _about(MarketInputKind.RELEASE, lease, now_ms)


def _about(kind: MarketInputKind, lease: LeaseGrant, now_ms: int) -> MarketInput:
    return MarketInput(
        kind=kind,
        resource=lease.resource,
        bid_id=lease.lease_id,
        epoch=lease.epoch,
        seq=lease.seq,
        at_ms=now_ms,
    )
