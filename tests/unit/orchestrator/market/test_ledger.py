"""The round ledger: canonical hashes, a chain that replays, tampering that shows (S6)."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.market.clearing import Bid, Pricing
from orchestrator.market.ledger import GENESIS, ChainBroken, RoundRecord, clear_round, replay
from tests.unit.orchestrator.market.test_clearing import rounds

pytestmark = pytest.mark.unit

PRICING = Pricing(reserve=10, aging_per_round=2, aging_cap=8)


def _chain(cases: list[tuple[list[Bid], int, Pricing]]) -> list[RoundRecord]:
    records, prev = [], GENESIS
    for n, (bids, free, pricing) in enumerate(cases):
        offsets = [b.offset for b in bids] or [0]
        record = clear_round(
            resource="gpu",
            round_no=n,
            epoch=1,
            offsets=(min(offsets), max(offsets)),
            closed_at_ms=1_000 * n,
            free=free,
            pricing=pricing,
            bids=bids,
            prev_hash=prev,
        )
        records.append(record)
        prev = record.hash
    return records


@given(rounds(), st.randoms(use_true_random=False))
def test_same_bids_in_any_arrival_order_give_the_same_record_and_hash(
    case: tuple[list[Bid], int, Pricing], shuffler: random.Random
) -> None:
    bids, free, pricing = case
    shuffled = list(bids)
    shuffler.shuffle(shuffled)
    assert _chain([(shuffled, free, pricing)]) == _chain([(bids, free, pricing)])


@given(st.lists(rounds(), min_size=1, max_size=5))
def test_replaying_the_ledger_reproduces_the_chain(
    cases: list[tuple[list[Bid], int, Pricing]],
) -> None:
    records = _chain(cases)
    # Through JSON, as a new owner reads them back from Kafka.
    read_back = [RoundRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in records]
    assert read_back == records
    assert replay(read_back) == records[-1].hash


def test_a_tampered_round_breaks_the_chain() -> None:
    bids = [Bid(f"b{i}", offset=i, band=0, price=20 + i) for i in range(4)]
    records = _chain([(bids, 2, PRICING), (bids[:1], 1, PRICING)])
    assert replay(records) == records[-1].hash
    cheaper = replace(
        records[0],
        outcome=replace(
            records[0].outcome,
            awards=tuple(
                replace(a, unit_price=a.unit_price - 1) for a in records[0].outcome.awards
            ),
        ),
    )
    with pytest.raises(ChainBroken, match="outcome differs"):
        replay([cheaper, records[1]])
    with pytest.raises(ChainBroken, match="hash differs"):
        replay([replace(records[0], closed_at_ms=7), records[1]])
    with pytest.raises(ChainBroken, match="link broken"):
        replay([records[1]])
