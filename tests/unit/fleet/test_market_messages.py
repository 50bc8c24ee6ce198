"""The market's messages through the codec, and TaskAssigned v1 <-> v2 (leases added)."""

from __future__ import annotations

import pytest

from fleet.codec import Codec, SchemaStore
from fleet.messages import (
    BudgetTopUpRequested,
    LeaseGrant,
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    MarketOutcomeKind,
    MarketRound,
    Message,
    TaskAssigned,
)
from fleet.settings import Settings

pytestmark = pytest.mark.unit

CODEC = Codec(SchemaStore(Settings().schemas_dir))
LEASE = LeaseGrant(
    resource="gpu",
    lease_id="bid-1",
    units=[0, 1],
    epoch=3,
    seq=41,
    unit_price=1_500_000,
    expires_at_ms=1_800_000_000_000,
)

MESSAGES: list[Message] = [
    MarketInput(
        kind=MarketInputKind.BID,
        resource="gpu",
        bid_id="bid-1",
        workflow_id="wf-1",
        task_id="wf-1/train/0",
        band=2,
        price=2_000_000,
        units=2,
        lease_ttl_ms=60_000,
        valid_rounds=300,
        at_ms=1,
    ),
    MarketInput(kind=MarketInputKind.CAPACITY, resource="gpu", capacity=4, at_ms=2),
    MarketOutcome(
        kind=MarketOutcomeKind.GRANTED,
        resource="gpu",
        bid_id="bid-1",
        workflow_id="wf-1",
        task_id="wf-1/train/0",
        lease=LEASE,
        round_no=7,
        at_ms=3,
    ),
    MarketRound(
        resource="gpu",
        round_no=7,
        epoch=3,
        hash="ab" * 32,
        prev_hash="cd" * 32,
        record={"bids": [{"bid_id": "bid-1", "price": 2_000_000}], "free": 2},
    ),
    BudgetTopUpRequested(workflow_id="wf-1", top_up_id="t-1", amount=10_000_000, requested_at_ms=4),
    TaskAssigned(
        task_id="wf-1/train/0",
        workflow_id="wf-1",
        step_id="train",
        capability="train",
        attempt=1,
        input={"x": 1},
        dispatched_at_ms=5,
        leases=[LEASE],
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_market_messages_round_trip(message: Message) -> None:
    assert CODEC.decode(CODEC.encode(message), type(message)) == message


def test_a_task_without_leases_is_what_a_v1_reader_and_writer_agree_on() -> None:
    plain = TaskAssigned(
        task_id="t",
        workflow_id="w",
        step_id="s",
        capability="c",
        attempt=1,
        input=None,
        dispatched_at_ms=1,
    )
    assert plain.leases == []
    assert CODEC.decode(CODEC.encode(plain), TaskAssigned) == plain
    assert LEASE.token == (3, 41)
