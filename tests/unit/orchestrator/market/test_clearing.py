"""The clearing rule's properties, checked on generated rounds (docs/market.md, S4)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.market.clearing import Bid, ClearingResult, Pricing, clear, rank_key

pytestmark = pytest.mark.unit

RESERVE = 10


@st.composite
def rounds(
    draw: st.DrawFn, max_bids: int = 8, max_units: int = 3
) -> tuple[list[Bid], int, Pricing]:
    count = draw(st.integers(0, max_bids))
    offsets = draw(st.lists(st.integers(0, 1000), min_size=count, max_size=count, unique=True))
    bids = [
        Bid(
            bid_id=f"b{i}",
            offset=offsets[i],
            band=draw(st.integers(0, 2)),
            price=draw(st.integers(0, 60)),
            units=draw(st.integers(1, max_units)),
            rounds_lost=draw(st.integers(0, 5)),
        )
        for i in range(count)
    ]
    free = draw(st.integers(0, 6))
    pricing = Pricing(
        reserve=RESERVE, aging_per_round=draw(st.integers(0, 4)), aging_cap=draw(st.integers(0, 12))
    )
    return bids, free, pricing


def _won(outcome: ClearingResult, bid_id: str) -> int | None:
    """The unit price ``bid_id`` pays, or None if it was not served."""
    return next((a.unit_price for a in outcome.awards if a.bid_id == bid_id), None)


@given(rounds())
def test_units_awarded_never_exceed_the_free_units(case: tuple[list[Bid], int, Pricing]) -> None:
    bids, free, pricing = case
    outcome = clear(bids, free, pricing)
    assert outcome.units <= free
    by_id = {b.bid_id: b for b in bids}
    assert all(a.units == by_id[a.bid_id].units for a in outcome.awards)  # all or nothing


@given(rounds())
def test_every_bid_resolves_exactly_once(case: tuple[list[Bid], int, Pricing]) -> None:
    bids, free, pricing = case
    outcome = clear(bids, free, pricing)
    resolved = [a.bid_id for a in outcome.awards] + [*outcome.waiting, *outcome.below_reserve]
    assert sorted(resolved) == sorted(b.bid_id for b in bids)


@given(rounds())
def test_reserve_le_price_le_bid(case: tuple[list[Bid], int, Pricing]) -> None:
    bids, free, pricing = case
    by_id = {b.bid_id: b for b in bids}
    for award in clear(bids, free, pricing).awards:
        assert pricing.reserve <= award.unit_price <= by_id[award.bid_id].price


@given(rounds())
def test_every_winner_outranks_every_eligible_loser(case: tuple[list[Bid], int, Pricing]) -> None:
    bids, free, pricing = case
    outcome = clear(bids, free, pricing)
    by_id = {b.bid_id: b for b in bids}
    for award in outcome.awards:
        for loser in outcome.waiting:
            assert rank_key(by_id[award.bid_id], pricing) < rank_key(by_id[loser], pricing)
            winner, other = by_id[award.bid_id], by_id[loser]
            assert (winner.band, pricing.score(winner)) >= (other.band, pricing.score(other))


@given(rounds(), st.randoms(use_true_random=False))
def test_arrival_order_does_not_matter(
    case: tuple[list[Bid], int, Pricing], shuffler: random.Random
) -> None:
    bids, free, pricing = case
    shuffled = list(bids)
    shuffler.shuffle(shuffled)
    assert clear(shuffled, free, pricing) == clear(bids, free, pricing)


@given(rounds(), st.data())
def test_raising_ones_bid_never_turns_a_win_into_a_loss(
    case: tuple[list[Bid], int, Pricing], data: st.DataObject
) -> None:
    bids, free, pricing = case
    outcome = clear(bids, free, pricing)
    for i, bid in enumerate(bids):
        if _won(outcome, bid.bid_id) is None:
            continue
        raised = data.draw(st.integers(bid.price, bid.price + 50))
        again = clear([*bids[:i], _with_price(bid, raised), *bids[i + 1 :]], free, pricing)
        assert _won(again, bid.bid_id) is not None


@given(rounds(), st.data())
def test_a_winners_price_does_not_depend_on_its_own_bid(
    case: tuple[list[Bid], int, Pricing], data: st.DataObject
) -> None:
    """What makes truth-telling dominant: while a bid keeps winning, its price is fixed."""
    bids, free, pricing = case
    outcome = clear(bids, free, pricing)
    for i, bid in enumerate(bids):
        price = _won(outcome, bid.bid_id)
        if price is None:
            continue
        other = data.draw(st.integers(pricing.reserve, 120))
        again = _won(
            clear([*bids[:i], _with_price(bid, other), *bids[i + 1 :]], free, pricing), bid.bid_id
        )
        assert again is None or again == price


def _with_price(bid: Bid, price: int) -> Bid:
    return Bid(bid.bid_id, bid.offset, bid.band, price, bid.units, bid.rounds_lost)


GRID = list(range(0, 70, 3))


@settings(max_examples=300)
@given(rounds(max_bids=5))
def test_bidding_ones_true_value_is_a_best_response(case: tuple[list[Bid], int, Pricing]) -> None:
    """Brute force: no bidder of up to five gains by bidding anything on a grid instead of
    its value (utility = units x (value - price) if served, else 0)."""
    bids, free, pricing = case

    def utility(outcome: ClearingResult, bid: Bid, value: int) -> int:
        price = _won(outcome, bid.bid_id)
        return 0 if price is None else bid.units * (value - price)

    truthful = clear(bids, free, pricing)
    for i, bid in enumerate(bids):
        honest = utility(truthful, bid, bid.price)
        assert honest >= 0  # individually rational: never pays above its value
        for alternative in GRID:
            lie = clear([*bids[:i], _with_price(bid, alternative), *bids[i + 1 :]], free, pricing)
            assert utility(lie, bid, bid.price) <= honest, (bid, alternative)


def test_unit_bids_pay_the_highest_losing_score_in_their_band() -> None:
    """The k+1-th price, spelled out: 2 units, bids 50, 40, 30, 20 in one band."""
    pricing = Pricing(reserve=RESERVE)
    bids = [Bid(f"b{p}", offset=p, band=0, price=p) for p in (50, 40, 30, 20)]
    outcome = clear(bids, 2, pricing)
    assert [(a.bid_id, a.unit_price) for a in outcome.awards] == [("b50", 30), ("b40", 30)]
    assert outcome.waiting == ("b30", "b20")


def test_a_higher_band_is_served_first_and_a_lone_band_pays_the_reserve() -> None:
    pricing = Pricing(reserve=RESERVE)
    high = Bid("high", offset=5, band=1, price=12)
    low = Bid("low", offset=1, band=0, price=60)
    outcome = clear([low, high], 1, pricing)
    assert [(a.bid_id, a.unit_price) for a in outcome.awards] == [("high", RESERVE)]
    assert outcome.waiting == ("low",)


def test_aging_lifts_a_waiting_bid_and_is_not_paid_for() -> None:
    pricing = Pricing(reserve=RESERVE, aging_per_round=5, aging_cap=15)
    old = Bid("old", offset=1, band=0, price=20, rounds_lost=4)  # score 20 + 15 (capped)
    new = Bid("new", offset=2, band=0, price=30)
    outcome = clear([new, old], 1, pricing)
    # old wins on score 35 > 30; it pays the loser's score 30 less its own credit 15.
    assert [(a.bid_id, a.unit_price) for a in outcome.awards] == [("old", 15)]


def test_ties_go_to_the_earlier_offset() -> None:
    pricing = Pricing(reserve=RESERVE)
    later, earlier = Bid("a", offset=9, band=0, price=20), Bid("z", offset=3, band=0, price=20)
    assert clear([later, earlier], 1, pricing).awards[0].bid_id == "z"


def test_a_bid_that_does_not_fit_holds_back_the_bids_behind_it() -> None:
    pricing = Pricing(reserve=RESERVE)
    big = Bid("big", offset=1, band=0, price=50, units=3)
    small = Bid("small", offset=2, band=0, price=40)
    outcome = clear([big, small], 2, pricing)
    assert outcome.awards == () and outcome.waiting == ("big", "small")


def test_below_reserve_is_turned_away() -> None:
    outcome = clear([Bid("cheap", offset=1, band=2, price=RESERVE - 1)], 4, Pricing(RESERVE))
    assert outcome.awards == () and outcome.below_reserve == ("cheap",)
