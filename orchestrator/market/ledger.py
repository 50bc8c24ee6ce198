"""The market ledger: one record per cleared round, each hashed onto the one before.

A round record holds everything its outcome was computed from (the bids in play, the
free units, the pricing) and the offset range of the inputs it consumed, so anyone can
replay the ledger, clear every round again and check the chain: a mismatch means the
state or the code diverged (operators alert on it; it must stay 0).

The hash covers a canonical form (sorted keys, bids in offset order), never arrival
order or Python object identity, so the same inputs give the same hash on any instance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.errors import MarketError
from orchestrator.market.clearing import Award, Bid, ClearingResult, Pricing, clear

GENESIS = "0" * 64  # the previous hash of a resource's first round


@dataclass(frozen=True)
class RoundRecord:
    resource: str
    round_no: int
    epoch: int  # of the auctioneer that cleared it
    first_offset: int  # inputs (bids partition) this round consumed, inclusive
    last_offset: int
    closed_at_ms: int
    free: int
    pricing: Pricing
    bids: tuple[Bid, ...]  # in offset order
    outcome: ClearingResult
    prev_hash: str
    hash: str = field(default="")

    def canonical(self) -> dict[str, Any]:
        body = asdict(self)
        del body["hash"]
        return body

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        outcome = data["outcome"]
        return cls(
            **{
                **data,
                "pricing": Pricing(**data["pricing"]),
                "bids": tuple(Bid(**b) for b in data["bids"]),
                "outcome": ClearingResult(
                    awards=tuple(Award(**a) for a in outcome["awards"]),
                    waiting=tuple(outcome["waiting"]),
                    below_reserve=tuple(outcome["below_reserve"]),
                ),
            }
        )


def digest(record: RoundRecord) -> str:
    text = json.dumps(record.canonical(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def clear_round(
    *,
    resource: str,
    round_no: int,
    epoch: int,
    offsets: tuple[int, int],
    closed_at_ms: int,
    free: int,
    pricing: Pricing,
    bids: Iterable[Bid],
    prev_hash: str,
) -> RoundRecord:
    """Clear a round and seal its record onto the chain."""
    in_play = tuple(sorted(bids, key=lambda b: (b.offset, b.bid_id)))
    unsealed = RoundRecord(
        resource=resource,
        round_no=round_no,
        epoch=epoch,
        first_offset=offsets[0],
        last_offset=offsets[1],
        closed_at_ms=closed_at_ms,
        free=free,
        pricing=pricing,
        bids=in_play,
        outcome=clear(in_play, free, pricing),
        prev_hash=prev_hash,
    )
    return RoundRecord(**{**unsealed.__dict__, "hash": digest(unsealed)})


class ChainBroken(MarketError):  # noqa: N818 - reads as what happened
    """Replaying the ledger did not reproduce a recorded round."""


def replay(records: Iterable[RoundRecord], prev_hash: str = GENESIS) -> str:
    """Clear every recorded round again and check the chain; return the last hash."""
    for record in records:
        if record.prev_hash != prev_hash:
            raise ChainBroken(f"round {record.round_no} of {record.resource}: link broken")
        if clear(record.bids, record.free, record.pricing) != record.outcome:
            raise ChainBroken(f"round {record.round_no} of {record.resource}: outcome differs")
        if digest(record) != record.hash:
            raise ChainBroken(f"round {record.round_no} of {record.resource}: hash differs")
        prev_hash = record.hash
    return prev_hash
