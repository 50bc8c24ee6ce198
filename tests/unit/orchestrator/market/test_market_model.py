"""A stateful model of one resource's book and its bidders' budgets (docs/market.md S1-S5, S7).

Hypothesis drives bids, rounds, claims, releases, expiry, revocation, capacity changes,
top-ups, crashes (the book and the budgets go through their JSON form and the book gets
a new epoch), duplicate bids and settlements, and zombie writes carrying old tokens. The
shell's glue is spelled out here as the orchestrator will do it: a hold before the bid,
a settlement per resolved bid, applied once by hold id.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from orchestrator.market.book import BidRequest, Book, Lease, Token
from orchestrator.market.budget import AlreadySettled, Budget, Denied, Hold, Settled
from orchestrator.market.clearing import Pricing

pytestmark = pytest.mark.unit

WORKFLOWS = ("wf-a", "wf-b", "wf-c")
RESERVE = 5


def _through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


class MarketModel(RuleBasedStateMachine):
    @initialize(
        capacity=st.integers(1, 4),
        limits=st.lists(st.integers(0, 400), min_size=3, max_size=3),
        aging=st.integers(0, 3),
    )
    def start(self, capacity: int, limits: list[int], aging: int) -> None:
        self.now = 0
        self.book = Book(
            "gpu",
            capacity,
            Pricing(RESERVE, aging_per_round=aging, aging_cap=3 * aging),
            epoch=1,
            claim_timeout_ms=300,
            expiry_grace_ms=50,
        )
        self.budgets = {wf: Budget(limit) for wf, limit in zip(WORKFLOWS, limits, strict=True)}
        self.next_offset = 0
        self.bids_made = 0
        self.sent: list[tuple[BidRequest, int]] = []
        self.charges: dict[str, int] = {}  # hold id -> charge the model applied
        self.settlements: list[tuple[str, str, int]] = []  # (workflow, hold, charge)
        self.old_leases: list[Lease] = []
        self.last_token = Token(0, 0)
        self.top_ups: list[tuple[str, str, int]] = []
        self.capacity_at: dict[str, int] = {}  # lease id -> capacity when granted

    # -- bidders -------------------------------------------------------------------
    @rule(
        workflow=st.sampled_from(WORKFLOWS),
        price=st.integers(0, 40),
        units=st.integers(1, 3),
        band=st.integers(0, 1),
        valid=st.integers(1, 4),
    )
    def bid(self, workflow: str, price: int, units: int, band: int, valid: int) -> None:
        self.bids_made += 1
        bid_id = f"bid-{self.bids_made}"
        hold = self.budgets[workflow].grant_hold(bid_id, max(1, price * units))
        if isinstance(hold, Denied):
            return  # no hold, no bid: the step waits for a top-up or fails
        assert isinstance(hold, Hold)
        request = BidRequest(bid_id, workflow, f"task-{bid_id}", band, price, units, 500, valid)
        offset, self.next_offset = self.next_offset, self.next_offset + 1
        self.sent.append((request, offset))
        if self.book.bid(request, offset):
            self._round()

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10_000))
    def duplicate_bid(self, pick: int) -> None:
        request, offset = self.sent[pick % len(self.sent)]
        before = self.book.to_json()
        assert not self.book.bid(request, offset)
        assert self.book.to_json() == before

    @precondition(lambda self: self.book.waiting)
    @rule(pick=st.integers(0, 10_000))
    def withdraw(self, pick: int) -> None:
        bid_id = sorted(self.book.waiting)[pick % len(self.book.waiting)]
        assert self.book.withdraw(bid_id)

    @rule(workflow=st.sampled_from(WORKFLOWS), amount=st.integers(1, 100))
    def top_up(self, workflow: str, amount: int) -> None:
        top_up_id = f"top-{len(self.top_ups)}"
        assert self.budgets[workflow].top_up(top_up_id, amount)
        self.top_ups.append((workflow, top_up_id, amount))

    @precondition(lambda self: self.top_ups)
    @rule(pick=st.integers(0, 10_000))
    def duplicate_top_up(self, pick: int) -> None:
        workflow, top_up_id, amount = self.top_ups[pick % len(self.top_ups)]
        limit = self.budgets[workflow].limit
        assert not self.budgets[workflow].top_up(top_up_id, amount)
        assert self.budgets[workflow].limit == limit

    # -- the auctioneer --------------------------------------------------------------
    @rule(advance=st.integers(0, 400))
    def round(self, advance: int) -> None:
        self.now += advance
        self._round()

    def _round(self) -> None:
        result = self.book.close_round(self.now, (self.next_offset, self.next_offset))
        for lease in result.granted:
            assert lease.token > self.last_token  # S2: tokens strictly increase
            self.last_token = lease.token
            assert all(u < self.book.capacity for u in lease.units)
            self.capacity_at[lease.lease_id] = self.book.capacity
            units = len(lease.units)
            self._settle(lease.workflow_id, lease.lease_id, lease.unit_price * units)
        for request, _why in result.lost:
            self._settle(request.workflow_id, request.bid_id, 0)
        for lease, _ended_why in result.ended:
            self.old_leases.append(lease)

    def _settle(self, workflow: str, hold_id: str, charge: int) -> None:
        held = self.budgets[workflow].holds[hold_id]
        assert RESERVE * 0 <= charge <= held  # charge never above the hold (S4/S5)
        outcome = self.budgets[workflow].settle(hold_id, charge)
        assert isinstance(outcome, Settled)
        assert hold_id not in self.charges  # S3: one final outcome per bid
        self.charges[hold_id] = charge
        self.settlements.append((workflow, hold_id, charge))

    @precondition(lambda self: self.settlements)
    @rule(pick=st.integers(0, 10_000))
    def duplicate_settlement(self, pick: int) -> None:
        workflow, hold_id, charge = self.settlements[pick % len(self.settlements)]
        spent = self.budgets[workflow].spent
        assert isinstance(self.budgets[workflow].settle(hold_id, charge), AlreadySettled)
        assert self.budgets[workflow].spent == spent

    @precondition(lambda self: self.book.leases)
    @rule(pick=st.integers(0, 10_000), release=st.booleans())
    def claim_or_release(self, pick: int, release: bool) -> None:
        lease = sorted(self.book.leases.values(), key=lambda x: x.lease_id)[
            pick % len(self.book.leases)
        ]
        if release:
            assert self.book.release(lease.lease_id, lease.token)
            assert lease.lease_id not in self.book.leases
        else:
            assert self.book.claim(lease.lease_id, lease.token)

    @precondition(lambda self: self.book.leases)
    @rule(pick=st.integers(0, 10_000))
    def zombie_write(self, pick: int) -> None:
        """A write carrying a token the live lease does not have (an older epoch, or a
        previous lease's) changes nothing (S7)."""
        lease = sorted(self.book.leases.values(), key=lambda x: x.lease_id)[
            pick % len(self.book.leases)
        ]
        stale = Token(lease.token.epoch - 1, lease.token.seq)
        before = self.book.to_json()
        assert not self.book.release(lease.lease_id, stale)
        assert not self.book.claim(lease.lease_id, stale)
        assert self.book.to_json() == before

    @precondition(lambda self: self.old_leases)
    @rule(pick=st.integers(0, 10_000))
    def late_release_of_an_ended_lease(self, pick: int) -> None:
        old = self.old_leases[pick % len(self.old_leases)]
        before = self.book.to_json()
        assert not self.book.release(old.lease_id, old.token)
        assert self.book.to_json() == before

    @rule()
    def revoke_all(self) -> None:
        self.book.revoke()
        assert self.book.leases == {}

    @rule(capacity=st.integers(0, 4))
    def change_capacity(self, capacity: int) -> None:
        self.book.set_capacity(capacity)

    @rule()
    def crash_and_restore(self) -> None:
        """A new owner restores the book and the budgets from their changelog form."""
        self.book = Book.from_json(_through_json(self.book.to_json()))
        self.book.new_epoch(self.book.epoch + 1)
        self.budgets = {
            wf: Budget.from_json(_through_json(b.to_json())) for wf, b in self.budgets.items()
        }

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def no_unit_is_leased_twice_and_none_beyond_capacity_at_grant(self) -> None:
        units = [u for lease in self.book.leases.values() for u in lease.units]
        assert len(units) == len(set(units))  # S2: one live lease per unit
        for lease in self.book.leases.values():
            assert all(u < self.capacity_at[lease.lease_id] for u in lease.units)  # S1

    @invariant()
    def budgets_hold_with_zero_drift(self) -> None:
        for workflow, budget in self.budgets.items():
            assert budget.spent + budget.held <= budget.limit  # S5
            mine = [c for wf, _h, c in self.settlements if wf == workflow]
            assert budget.spent == sum(mine)  # spend = sum of settled charges

    @invariant()
    def every_open_hold_is_a_waiting_bid(self) -> None:
        """Holds and bids agree: a bid holds money exactly until it resolves (L4)."""
        if not hasattr(self, "book"):
            return
        holds = {h for b in self.budgets.values() for h in b.holds}
        resolving = {request.bid_id for request, _why in self.book.lost}  # settle at the round
        assert holds == set(self.book.waiting) | resolving

    @invariant()
    def no_bid_outlives_its_valid_rounds(self) -> None:
        for waiting in self.book.waiting.values():
            assert self.book.round_no - waiting.first_round <= waiting.request.valid_rounds


MarketModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_market_model = MarketModel.TestCase
