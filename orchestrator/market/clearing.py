"""Sealed-bid batch clearing for one resource: who is served this round, and at what price.

Pure: the outcome is a function of the bids, the free units and the pool's pricing, never
of the clock or of arrival order (ties go to the earlier offset, then the bid id), so a
replay of the ledger clears every round the same way.

The rule (DESIGN §7, docs/market.md):

* Ranking is by band first (policy's priority, never the bidder's word), then by score =
  bid + aging credit. The credit grows with the rounds a bid has waited, capped, so a
  low bid in a busy band is eventually served.
* Bids are served in rank order while their units fit. A bid needs all its units at
  once (a step asking for 2 GPUs runs on 2), and the first bid that does not fit stops
  the round: smaller bids behind it do not jump ahead (no backfilling). That costs some
  utilisation while a large bid waits for units, and buys two things: a large bid is
  never starved by a stream of small ones, and whether a bid wins depends only on the
  bids ranked above it. The latter makes the allocation monotone in the bid, which is
  what makes the price below truthful.
* Each winner pays, per unit, the lowest score at which it would still have won (its
  critical value), minus its own aging credit, never less than the reserve. Outranking
  ``o`` keeps a winner served exactly when the units of the others ranked above it
  leave room for its own, so the critical value is the score of the first other bid,
  in rank order, at which those units would overflow. For one-unit bids that is the
  highest losing score, the (k+1)-th price of a k-unit auction. When that bid is in a
  lower band, no bid in the winner's own band could have displaced it: the winner pays
  the reserve. A price that does not depend on one's own bid, paid only on winning, is
  why bidding one's true value is the best strategy (checked by brute force in
  tests/unit/orchestrator/market/test_clearing.py).
* Bids below the reserve cannot win at any round and are turned away at once, so every
  bid resolves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.errors import MarketError


@dataclass(frozen=True)
class Bid:
    bid_id: str
    offset: int  # of the bid record in its partition: earlier wins a tie
    band: int  # from policy; a higher band is always served first
    price: int  # the most the bidder pays per unit, in micro-credits
    units: int = 1  # needed together
    rounds_lost: int = 0  # rounds this bid waited while others were served


@dataclass(frozen=True)
class Pricing:
    """A pool's price policy, in micro-credits."""

    reserve: int  # no unit goes for less
    aging_per_round: int = 0  # score credit per round lost
    aging_cap: int = 0  # the most credit a bid can collect

    def credit(self, bid: Bid) -> int:
        return min(self.aging_per_round * bid.rounds_lost, self.aging_cap)

    def score(self, bid: Bid) -> int:
        return bid.price + self.credit(bid)


@dataclass(frozen=True)
class Award:
    bid_id: str
    units: int
    unit_price: int


@dataclass(frozen=True)
class ClearingResult:
    """What one round's clearing decided (a ledger round records it as its ``outcome``)."""

    awards: tuple[Award, ...]  # in rank order
    waiting: tuple[str, ...]  # eligible, not served this round: they age and stay
    below_reserve: tuple[str, ...]  # can never win: turned away

    @property
    def units(self) -> int:
        return sum(a.units for a in self.awards)


def rank_key(bid: Bid, pricing: Pricing) -> tuple[int, int, int, str]:
    """Sort key, best first: band, score, then the earlier offset and the bid id."""
    return (-bid.band, -pricing.score(bid), bid.offset, bid.bid_id)


def clear(bids: Iterable[Bid], free: int, pricing: Pricing) -> ClearingResult:
    """Clear one round with ``free`` units available."""
    pool = list(bids)
    if len({b.bid_id for b in pool}) != len(pool):
        raise MarketError("a round must not hold the same bid twice")
    below = sorted(b.bid_id for b in pool if b.price < pricing.reserve)
    ranked = sorted(
        (b for b in pool if b.price >= pricing.reserve), key=lambda b: rank_key(b, pricing)
    )
    awards: list[Award] = []
    left = free
    served = 0
    for bid in ranked:
        if bid.units > left:
            break  # strict rank order: nothing behind a bid that does not fit
        left -= bid.units
        served += 1
        others = [b for b in ranked if b is not bid]
        awards.append(Award(bid.bid_id, bid.units, _unit_price(bid, others, free, pricing)))
    waiting = tuple(b.bid_id for b in ranked[served:])
    return ClearingResult(tuple(awards), waiting, tuple(below))


def _unit_price(winner: Bid, others: Sequence[Bid], free: int, pricing: Pricing) -> int:
    """The winner's critical value, less its own aging credit, at least the reserve.

    ``others`` are the other eligible bids in rank order. The winner stays served while
    the units of the others ranked above it fit next to its own; the first other at
    which they would not is the bid it must outrank.
    """
    room = free - winner.units
    above = 0
    for other in others:
        above += other.units
        if above > room:
            if other.band != winner.band:  # lower band: it can never outrank the winner
                return pricing.reserve
            return max(pricing.reserve, pricing.score(other) - pricing.credit(winner))
    return pricing.reserve  # no set of others could crowd it out
