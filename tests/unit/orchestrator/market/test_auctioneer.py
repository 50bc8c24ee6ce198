"""The auctioneer, driven by market inputs and the clock, without Kafka."""

from __future__ import annotations

import json

import pytest

from fleet.messages import MarketInput, MarketInputKind, MarketOutcome, MarketOutcomeKind
from orchestrator.market.auctioneer import Auctioneer, Output
from orchestrator.market.ledger import GENESIS, RoundRecord, replay
from orchestrator.market.policy import MarketPolicy, Pool, Tenant

pytestmark = pytest.mark.unit

CREDIT = 1_000_000
RESERVE = CREDIT


def _policy(capacity: int = 1) -> MarketPolicy:
    return MarketPolicy(
        pools={"gpu": Pool("gpu", capacity, RESERVE, lease_ttl_ms=10_000)},
        bands=("low", "high"),
        tenants={"default": Tenant("default", ("low", "high"), "low", 2 * CREDIT)},
        default_tenant="default",
        round_ms=200,
        claim_timeout_ms=1_000,
        expiry_grace_ms=500,
        bid_valid_rounds=50,
    )


def _bid(bid_id: str, price: int, *, units: int = 1, band: int = 0) -> MarketInput:
    return MarketInput(
        kind=MarketInputKind.BID,
        resource="gpu",
        bid_id=bid_id,
        workflow_id=f"wf-{bid_id}",
        task_id=f"wf-{bid_id}/step/0",
        band=band,
        price=price,
        units=units,
        lease_ttl_ms=10_000,
        valid_rounds=50,
        at_ms=0,
    )


def _token_input(kind: MarketInputKind, outcome: MarketOutcome) -> MarketInput:
    assert outcome.lease is not None
    return MarketInput(
        kind=kind,
        resource="gpu",
        bid_id=outcome.bid_id,
        epoch=outcome.lease.epoch,
        seq=outcome.lease.seq,
        at_ms=0,
    )


def _kinds(out: Output) -> list[tuple[str, str, str | None]]:
    return [(o.kind.value, o.bid_id, o.reason) for o in out.outcomes]


def test_an_uncontended_bid_is_granted_at_once_at_the_reserve() -> None:
    auctioneer = Auctioneer(_policy(capacity=2))
    out = auctioneer.on_input(_bid("a", 3 * CREDIT), offset=10, now_ms=1_000)
    assert _kinds(out) == [("GRANTED", "a", None)]
    lease = out.outcomes[0].lease
    assert lease is not None
    assert lease.unit_price == RESERVE and lease.units == [0] and (lease.epoch, lease.seq) == (1, 1)
    assert lease.expires_at_ms == 11_000
    assert len(out.rounds) == 1 and out.rounds[0].prev_hash == GENESIS
    assert set(auctioneer.take_changes()) == {"gpu"}


def test_contended_bids_wait_for_the_round_and_the_winner_pays_the_losers_bid() -> None:
    auctioneer = Auctioneer(_policy(capacity=1))
    first = auctioneer.on_input(_bid("a", 2 * CREDIT), 1, 0).outcomes[0]
    assert first.kind is MarketOutcomeKind.GRANTED
    assert _kinds(auctioneer.on_input(_bid("b", 5 * CREDIT), 2, 10)) == []
    assert _kinds(auctioneer.on_input(_bid("c", 3 * CREDIT), 3, 20)) == []
    assert auctioneer.next_due_ms() == 210  # a round 200 ms after the first waiting bid
    assert _kinds(auctioneer.tick(210)) == []  # cleared: no free unit, both keep waiting
    released = auctioneer.on_input(_token_input(MarketInputKind.RELEASE, first), 4, 300)
    assert _kinds(released) == [("ENDED", "a", "released")]
    out = auctioneer.tick(410)
    assert _kinds(out) == [("GRANTED", "b", None)]
    assert [r.outcome.units for r in out.records] == [1] and len(out.rounds) == 1
    (award,) = out.awards
    assert (award.wait_ms, award.rounds_waited, award.band) == (410, 1, 0)  # bids stamped 0
    lease = out.outcomes[0].lease
    assert lease is not None and lease.unit_price == 3 * CREDIT  # c's bid: the 2nd price
    assert lease.seq == 2


def test_a_release_with_a_stale_token_changes_nothing() -> None:
    auctioneer = Auctioneer(_policy())
    granted = auctioneer.on_input(_bid("a", 2 * CREDIT), 1, 0).outcomes[0]
    assert granted.lease is not None
    stale = MarketInput(
        kind=MarketInputKind.RELEASE,
        resource="gpu",
        bid_id="a",
        epoch=granted.lease.epoch,
        seq=granted.lease.seq - 1,
        at_ms=0,
    )
    out = auctioneer.on_input(stale, 2, 5)
    assert out.outcomes == [] and out.dropped
    book = auctioneer.book("gpu")
    assert book is not None and "a" in book.leases


def test_a_lease_nobody_releases_ends_at_expiry_plus_grace() -> None:
    auctioneer = Auctioneer(_policy())
    granted = auctioneer.on_input(_bid("a", 2 * CREDIT), 1, 0).outcomes[0]
    auctioneer.on_input(_token_input(MarketInputKind.CLAIM, granted), 2, 5)
    assert auctioneer.next_due_ms() == 10_000 + 500 + 1
    assert _kinds(auctioneer.tick(10_500)) == []
    assert _kinds(auctioneer.tick(10_501)) == [("ENDED", "a", "expired")]


def test_an_award_never_claimed_is_taken_back() -> None:
    auctioneer = Auctioneer(_policy())
    auctioneer.on_input(_bid("a", 2 * CREDIT), 1, 0)
    assert _kinds(auctioneer.tick(1_001)) == [("ENDED", "a", "unclaimed")]


def test_a_duplicate_bid_is_dropped_and_an_unknown_pool_loses_at_once() -> None:
    auctioneer = Auctioneer(_policy())
    auctioneer.on_input(_bid("a", 2 * CREDIT), 1, 0)
    again = auctioneer.on_input(_bid("a", 2 * CREDIT), 1, 0)
    assert again.outcomes == [] and again.dropped == ["bid a: a duplicate"]
    stray = _bid("x", CREDIT).model_copy(update={"resource": "tpu"})
    assert _kinds(auctioneer.on_input(stray, 2, 0)) == [("LOST", "x", "unknown_pool")]


def test_a_new_owner_restores_the_book_outranks_old_tokens_and_continues_the_chain() -> None:
    old = Auctioneer(_policy(capacity=1))
    first = old.on_input(_bid("a", 2 * CREDIT), 1, 0)
    old.on_input(_bid("b", 4 * CREDIT), 2, 10)
    snapshot = json.loads(json.dumps(old.take_changes()["gpu"]))

    new = Auctioneer(_policy(capacity=1))
    book = new.restore("gpu", snapshot)
    assert book is not None and book.epoch == 2 and set(book.waiting) == {"b"}
    grant = first.outcomes[0]
    new.on_input(_token_input(MarketInputKind.RELEASE, grant), 3, 20)
    out = new.tick(new.next_due_ms() or 0)
    assert _kinds(out) == [("GRANTED", "b", None)]
    lease, old_lease = out.outcomes[0].lease, grant.lease
    assert lease is not None and old_lease is not None
    assert (lease.epoch, lease.seq) > (old_lease.epoch, old_lease.seq)
    records = [RoundRecord.from_json(r.record) for r in [*first.rounds, *out.rounds]]  # type: ignore[arg-type]
    assert replay(records) == out.rounds[-1].hash
