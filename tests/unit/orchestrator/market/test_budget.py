"""Budgets: hold-then-charge escrow, each operation applied once, and the S5 invariants."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fleet.errors import DecodeError, FleetError
from orchestrator.market.budget import (
    AlreadySettled,
    Budget,
    BudgetError,
    Denied,
    Hold,
    Settled,
    UnknownHold,
)

pytestmark = pytest.mark.unit


def replayed(budget: Budget) -> Budget:
    """The budget after a trip through the changelog (JSON text and back)."""
    return Budget.from_json(json.loads(json.dumps(budget.to_json())))


# --- holds


def test_a_hold_within_the_limit_is_granted_and_reduces_what_is_available() -> None:
    b = Budget(100)
    assert b.grant_hold("h1", 60) == Hold("h1", 60)
    assert (b.held, b.spent, b.available) == (60, 0, 40)


def test_a_hold_over_what_is_available_is_denied_and_holds_nothing() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    assert b.grant_hold("h2", 41) == Denied("h2", 41)
    assert (b.held, b.available) == (60, 40)
    assert b.grant_hold("h3", 40) == Hold("h3", 40)  # exactly what is left is fine
    assert b.available == 0


def test_a_duplicate_hold_returns_the_first_outcome_and_holds_nothing_more() -> None:
    b = Budget(100)
    assert b.grant_hold("h1", 60) == Hold("h1", 60)
    assert b.grant_hold("h1", 60) == Hold("h1", 60)
    assert b.held == 60
    b.settle("h1", 10)
    assert b.grant_hold("h1", 60) == Hold("h1", 60)  # settled: still no second hold
    assert (b.held, b.spent) == (0, 10)


def test_a_denied_hold_stays_denied_after_a_top_up() -> None:
    # Granting the redelivered request would give one bid id two outcomes.
    b = Budget(10)
    assert b.grant_hold("h1", 20) == Denied("h1", 20)
    b.top_up("t1", 100)
    assert b.grant_hold("h1", 20) == Denied("h1", 20)
    assert b.held == 0
    assert b.grant_hold("h2", 20) == Hold("h2", 20)


def test_a_hold_id_reused_with_another_amount_is_an_error_and_changes_nothing() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    b.grant_hold("h2", 70)  # denied
    before = replayed(b)
    with pytest.raises(BudgetError, match="h1"):
        b.grant_hold("h1", 50)
    with pytest.raises(BudgetError, match="h2"):
        b.grant_hold("h2", 10)
    assert b == before


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
def test_a_hold_amount_must_be_a_positive_integer(amount: int) -> None:
    b = Budget(100)
    with pytest.raises(BudgetError):
        b.grant_hold("h1", amount)
    assert b == Budget(100)


def test_budget_errors_are_fleet_errors_and_value_errors() -> None:
    with pytest.raises(FleetError):
        Budget(-1)
    with pytest.raises(ValueError, match="integer"):
        Budget(100).top_up("t1", 0)


# --- settlements


def test_settling_charges_the_charge_and_releases_the_rest() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    assert b.settle("h1", 25) == Settled("h1", 25, 35)
    assert (b.spent, b.held, b.available) == (25, 0, 75)


def test_settling_at_zero_releases_the_whole_hold() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    assert b.settle("h1", 0) == Settled("h1", 0, 60)
    assert (b.spent, b.held, b.available) == (0, 0, 100)


def test_settling_at_the_full_hold_releases_nothing() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    assert b.settle("h1", 60) == Settled("h1", 60, 0)
    assert (b.spent, b.held, b.available) == (60, 0, 40)


def test_a_hold_is_settled_once_and_a_duplicate_reports_the_first_settlement() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    assert b.settle("h1", 25) == Settled("h1", 25, 35)
    assert b.settle("h1", 25) == AlreadySettled(Settled("h1", 25, 35))
    assert b.settle("h1", 25) == AlreadySettled(Settled("h1", 25, 35))
    assert (b.spent, b.held) == (25, 0)


def test_a_second_settlement_with_another_charge_is_an_error_and_changes_nothing() -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    b.settle("h1", 25)
    with pytest.raises(BudgetError, match="settled at 25"):
        b.settle("h1", 30)
    assert (b.spent, b.settled["h1"]) == (25, Settled("h1", 25, 35))


@pytest.mark.parametrize("charge", [61, -1, 2.0])
def test_a_charge_must_be_between_zero_and_the_hold(charge: int) -> None:
    b = Budget(100)
    b.grant_hold("h1", 60)
    with pytest.raises(BudgetError):
        b.settle("h1", charge)
    assert (b.spent, b.holds) == (0, {"h1": 60})


def test_settling_a_hold_never_granted_reports_it_unknown() -> None:
    b = Budget(10)
    b.grant_hold("denied", 20)
    assert b.settle("nope", 0) == UnknownHold("nope")
    assert b.settle("denied", 0) == UnknownHold("denied")
    assert (b.spent, b.settled) == (0, {})


# --- top-ups


def test_a_top_up_raises_the_limit_once() -> None:
    b = Budget(100)
    b.grant_hold("h1", 100)
    assert b.top_up("t1", 50) is True
    assert b.top_up("t1", 50) is False  # replayed from Kafka: not added twice
    assert (b.limit, b.available) == (150, 50)
    with pytest.raises(BudgetError, match="t1"):
        b.top_up("t1", 70)
    assert b.limit == 150


# --- the changelog record


def test_a_budget_round_trips_through_json() -> None:
    b = Budget(100)
    b.grant_hold("open", 30)
    b.grant_hold("done", 20)
    b.settle("done", 5)
    b.grant_hold("denied", 1_000)
    b.top_up("t1", 7)
    again = replayed(b)
    assert again == b
    assert again.to_json() == b.to_json()
    # The copy is independent and behaves the same.
    assert again.grant_hold("done", 20) == Hold("done", 20)
    assert again.settle("open", 30) == Settled("open", 30, 0)
    assert b.holds == {"open": 30}


@pytest.mark.parametrize(
    "change",
    [
        {"spent": 6},  # not the sum of settled charges
        {"limit": 30},  # spent + held (35) over the limit
        {"holds": {"open": 30, "done": 1}},  # open and settled at once
        {"holds": {"open": 0}},
        {"limit": 100.0},  # a float is not a micro-credit amount
        {"limit": "100"},
        {"v": 2},
        {"extra": 1},
    ],
)
def test_an_inconsistent_or_malformed_record_fails_to_decode(change: dict[str, object]) -> None:
    b = Budget(100)
    b.grant_hold("open", 30)
    b.grant_hold("done", 20)
    b.settle("done", 5)
    record = {**b.to_json(), **change}
    with pytest.raises(DecodeError, match="budget record"):
        Budget.from_json(record)  # type: ignore[arg-type]


# --- random sequences against a simple model


@dataclass
class Model:
    """What the budget should be, written the obvious way and kept independently."""

    limit: int
    open: dict[str, int] = field(default_factory=dict)
    charges: dict[str, int] = field(default_factory=dict)  # settled hold -> charge
    amounts: dict[str, int] = field(default_factory=dict)  # every hold id -> first amount
    denied: set[str] = field(default_factory=set)
    top_ups: dict[str, int] = field(default_factory=dict)
    settlements_applied: dict[str, int] = field(default_factory=dict)  # hold -> times


HOLD_IDS = st.sampled_from([f"h{i}" for i in range(12)])  # few ids: duplicates are common
TOP_UP_IDS = st.sampled_from([f"t{i}" for i in range(4)])
AMOUNTS = st.integers(1, 120)


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.budget = Budget(200)
        self.model = Model(200)

    @rule(hold_id=HOLD_IDS, amount=AMOUNTS)
    def grant(self, hold_id: str, amount: int) -> None:
        m = self.model
        first = m.amounts.get(hold_id)
        if first is not None and first != amount:
            before = replayed(self.budget)
            with pytest.raises(BudgetError):
                self.budget.grant_hold(hold_id, amount)
            assert self.budget == before
            return
        outcome = self.budget.grant_hold(hold_id, amount)
        if first is None:
            m.amounts[hold_id] = amount
            if amount <= m.limit - sum(m.charges.values()) - sum(m.open.values()):
                m.open[hold_id] = amount
            else:
                m.denied.add(hold_id)
        expected = Denied if hold_id in m.denied else Hold
        assert outcome == expected(hold_id, amount)

    @precondition(lambda self: bool(self.model.amounts))
    @rule(data=st.data())
    def grant_again(self, data: st.DataObject) -> None:
        # A redelivered request: same id, same amount.
        hold_id = data.draw(st.sampled_from(sorted(self.model.amounts)))
        self.grant(hold_id, self.model.amounts[hold_id])

    @precondition(lambda self: bool(self.model.open))
    @rule(data=st.data())
    def settle_open(self, data: st.DataObject) -> None:
        m = self.model
        hold_id = data.draw(st.sampled_from(sorted(m.open)))
        amount = m.open[hold_id]
        charge = data.draw(st.integers(0, amount) | st.sampled_from([0, amount]))
        self.settle_open_with(hold_id, charge)

    @precondition(lambda self: bool(self.model.charges))
    @rule(data=st.data())
    def settle_again(self, data: st.DataObject) -> None:
        m = self.model
        hold_id = data.draw(st.sampled_from(sorted(m.charges)))
        charge = m.charges[hold_id]
        released = m.amounts[hold_id] - charge
        outcome = self.budget.settle(hold_id, charge)
        assert outcome == AlreadySettled(Settled(hold_id, charge, released))

    @rule(hold_id=HOLD_IDS, charge=st.integers(0, 150))
    def settle_anything(self, hold_id: str, charge: int) -> None:
        # Whatever clearing sends: unknown ids, wrong charges, duplicates.
        m = self.model
        before = replayed(self.budget)
        if hold_id in m.charges:
            if charge != m.charges[hold_id]:
                with pytest.raises(BudgetError):
                    self.budget.settle(hold_id, charge)
                assert self.budget == before
            else:
                outcome = self.budget.settle(hold_id, charge)
                assert outcome == AlreadySettled(
                    Settled(hold_id, charge, m.amounts[hold_id] - charge)
                )
        elif hold_id not in m.open:
            assert self.budget.settle(hold_id, charge) == UnknownHold(hold_id)
            assert self.budget == before
        elif charge > m.open[hold_id]:
            with pytest.raises(BudgetError):
                self.budget.settle(hold_id, charge)
            assert self.budget == before
        else:
            self.settle_open_with(hold_id, charge)

    def settle_open_with(self, hold_id: str, charge: int) -> None:
        m = self.model
        amount = m.open.pop(hold_id)
        assert self.budget.settle(hold_id, charge) == Settled(hold_id, charge, amount - charge)
        m.charges[hold_id] = charge
        m.settlements_applied[hold_id] = m.settlements_applied.get(hold_id, 0) + 1

    @rule(top_up_id=TOP_UP_IDS, amount=st.integers(1, 100))
    def top_up(self, top_up_id: str, amount: int) -> None:
        m = self.model
        first = m.top_ups.get(top_up_id)
        if first is None:
            assert self.budget.top_up(top_up_id, amount) is True
            m.top_ups[top_up_id] = amount
            m.limit += amount
        elif first == amount:
            assert self.budget.top_up(top_up_id, amount) is False
        else:
            with pytest.raises(BudgetError):
                self.budget.top_up(top_up_id, amount)

    @rule()
    def restore_from_changelog(self) -> None:
        again = replayed(self.budget)
        assert again == self.budget
        self.budget = again

    @invariant()
    def matches_the_model(self) -> None:
        b, m = self.budget, self.model
        self.budget.check()
        assert b.spent + b.held <= b.limit
        assert b.limit == m.limit
        assert b.spent == sum(m.charges.values())  # zero drift against applied charges
        assert b.held == sum(m.open.values())
        assert b.available == m.limit - sum(m.charges.values()) - sum(m.open.values()) >= 0
        assert b.holds == m.open
        assert {h: s.charge for h, s in b.settled.items()} == m.charges
        assert set(b.denied) == m.denied
        assert all(times == 1 for times in m.settlements_applied.values())
        assert min([b.limit, b.spent, *b.holds.values()], default=0) >= 0


BudgetMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_budget_machine = BudgetMachine.TestCase
