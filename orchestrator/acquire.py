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
"""

from __future__ import annotations

from fleet.messages import LeaseGrant, MarketInput, MarketInputKind
from orchestrator.market.budget import Budget, Denied
from orchestrator.market.policy import MarketPolicy
from orchestrator.spec import StepSpec
from orchestrator.state import TaskRun, WorkflowState


class BudgetDenied(Exception):  # noqa: N818 - internal control flow, turned into a failure
    def __init__(self, pool: str, amount: int, available: int) -> None:
        super().__init__(f"budget_exhausted: a bid on {pool} needs {amount}, {available} left")


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
