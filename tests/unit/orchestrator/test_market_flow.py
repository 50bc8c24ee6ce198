"""The engine and the auctioneer wired together in memory, with simulated workers.

The pure parts talk through the same messages the Kafka shell carries (MarketInput,
MarketOutcome, TaskAssigned, TaskResult), so whole acquisitions can be run and checked
quickly: here the deadlock that ordered acquisition rules out, shown by turning the
order off.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.messages import (
    EventKind,
    MarketInput,
    MarketOutcome,
    TaskAssigned,
    TaskResult,
    TaskStatus,
    WorkflowSubmitted,
)
from orchestrator.engine import Effects, Engine
from orchestrator.market.auctioneer import Auctioneer, Output
from orchestrator.market.policy import MarketPolicy, Pool, Tenant
from orchestrator.spec import StepSpec

pytestmark = pytest.mark.unit

CREDIT = 1_000_000
POLICY = MarketPolicy(
    pools={
        "alpha": Pool("alpha", 1, CREDIT, lease_ttl_ms=600_000),
        "beta": Pool("beta", 1, CREDIT, lease_ttl_ms=600_000),
    },
    bands=("low",),
    tenants={
        "default": Tenant("default", ("low",), "low", 2 * CREDIT, budget_default=100 * CREDIT)
    },
    default_tenant="default",
    round_ms=100,
    claim_timeout_ms=600_000,
    bid_valid_rounds=100_000,
)


class Market:
    """One engine, one auctioneer, and workers that take ``work_ms`` per task."""

    def __init__(self, policy: MarketPolicy, work_ms: int = 200) -> None:
        self.engine = Engine(has_capability=lambda _c: True, policy=policy)
        self.auctioneer = Auctioneer(policy)
        self.work_ms = work_ms
        self.now = 0
        self.offset = 0
        self.inputs: deque[MarketInput] = deque()
        self.outcomes: deque[MarketOutcome] = deque()
        self.running: list[tuple[int, int, TaskAssigned]] = []  # (done at, n, task)
        self.ended: dict[str, EventKind] = {}
        self._n = 0

    def submit(self, workflow_id: str, spec: dict[str, Any]) -> None:
        request = WorkflowSubmitted(workflow_id=workflow_id, spec=spec, submitted_at_ms=self.now)
        self._effects(self.engine.submit(request, self.now))

    def run(self, until_ms: int, step_ms: int = 50) -> None:
        while self.now < until_ms:
            self._drain()
            while self.running and self.running[0][0] <= self.now:
                _at, _n, task = heapq.heappop(self.running)
                self._effects(self.engine.on_result(_result(task), self.now))
                self._drain()
            self._out(self.auctioneer.tick(self.now))
            self._effects(self.engine.tick(self.now))
            self._drain()
            self.now += step_ms

    def holders(self) -> dict[str, dict[str, str]]:
        """Per workflow: pools it holds a lease on, and the pool it is bidding for."""
        held: dict[str, dict[str, str]] = {}
        for pool in POLICY.pools:
            book = self.auctioneer.book(pool)
            for lease in book.leases.values() if book else []:
                held.setdefault(lease.workflow_id, {})[pool] = "holds"
            for waiting in book.waiting.values() if book else []:
                held.setdefault(waiting.request.workflow_id, {})[pool] = "waits"
        return held

    def _drain(self) -> None:
        while self.inputs or self.outcomes:
            while self.inputs:
                self.offset += 1
                self._out(self.auctioneer.on_input(self.inputs.popleft(), self.offset, self.now))
            while self.outcomes:
                self._effects(self.engine.on_market(self.outcomes.popleft(), self.now))

    def _out(self, out: Output) -> None:
        self.outcomes.extend(out.outcomes)

    def _effects(self, fx: Effects) -> None:
        self.inputs.extend(fx.market)
        for task in fx.tasks:
            self._n += 1
            heapq.heappush(self.running, (self.now + self.work_ms, self._n, task))
        for event in fx.events:
            if event.kind.terminal:
                self.ended[event.workflow_id] = event.kind


def _result(task: TaskAssigned) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        workflow_id=task.workflow_id,
        step_id=task.step_id,
        capability=task.capability,
        attempt=task.attempt,
        status=TaskStatus.SUCCEEDED,
        output={"leases": [lease.resource for lease in task.leases]},
        duration_ms=1,
        worker_id="sim",
        finished_at_ms=0,
    )


def _needs(*pools: str) -> dict[str, Any]:
    step = {"id": "use", "capability": "work", "resources": {p: 1 for p in pools}}
    return {"name": "both", "steps": [step], "output": "$.steps.use.output"}


def _two_opposite_workflows(market: Market) -> None:
    # Declared in opposite orders: alpha then beta, and beta then alpha.
    market.submit("wf-ab", _needs("alpha", "beta"))
    market.submit("wf-ba", _needs("beta", "alpha"))


def test_opposite_needs_both_finish_with_ordered_acquisition() -> None:
    market = Market(POLICY)
    _two_opposite_workflows(market)
    market.run(until_ms=5_000)
    assert market.ended == {"wf-ab": EventKind.COMPLETED, "wf-ba": EventKind.COMPLETED}


def test_without_the_global_order_the_same_workflows_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: acquiring in each step's declared order lets each workflow take one
    pool and wait for the other's, a cycle nothing breaks (bids and leases here outlive
    the run). This is what StepSpec.acquire_order's sorting prevents."""

    def declared_order(step: StepSpec) -> list[tuple[str, int]]:
        return list(step.resources.items())

    monkeypatch.setattr(StepSpec, "acquire_order", declared_order)
    market = Market(POLICY)
    _two_opposite_workflows(market)
    market.run(until_ms=60_000)
    assert market.ended == {}
    assert market.holders() == {
        "wf-ab": {"alpha": "holds", "beta": "waits"},
        "wf-ba": {"beta": "holds", "alpha": "waits"},
    }


POOLS3 = MarketPolicy(
    pools={
        "alpha": Pool("alpha", 1, CREDIT, lease_ttl_ms=600_000),
        "beta": Pool("beta", 2, CREDIT, lease_ttl_ms=600_000),
        "gamma": Pool("gamma", 3, CREDIT, lease_ttl_ms=600_000),
    },
    bands=("low", "high"),
    tenants={
        "default": Tenant(
            "default", ("low", "high"), "low", 2 * CREDIT, budget_default=100 * CREDIT
        )
    },
    default_tenant="default",
    round_ms=100,
    claim_timeout_ms=600_000,
    bid_valid_rounds=100_000,
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from(["alpha", "beta", "gamma"]), min_size=1),
            st.sampled_from(["low", "high"]),
            st.integers(1, 3),  # max price, credits
        ),
        min_size=1,
        max_size=12,
    )
)
def test_any_mix_of_multi_pool_steps_all_finish_within_capacity(
    workload: list[tuple[set[str], str, int]],
) -> None:
    market = Market(POOLS3, work_ms=150)
    for n, (pools, band, price) in enumerate(workload):
        spec = _needs(*pools)  # in set order: steps declare pools in any order
        spec["priority"] = band
        spec["steps"][0]["max_price"] = price
        market.submit(f"wf-{n}", spec)
    for until in range(500, 60_000, 500):
        market.run(until_ms=until)
        for name, pool in POOLS3.pools.items():
            book = market.auctioneer.book(name)
            if book is not None:
                assert book.leased_units() <= pool.capacity
        if len(market.ended) == len(workload):
            break
    assert market.ended == {f"wf-{n}": EventKind.COMPLETED for n in range(len(workload))}
