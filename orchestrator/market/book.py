"""The auctioneer's book for one resource: pending bids, live leases, and the rounds.

Pure and single-writer: only the orchestrator instance owning the resource's partition
applies records to it, inside its Kafka transaction, so the book never needs a lock and
a new owner rebuilds exactly this state from the snapshot and the ledger.

A lease is one bid's award: the units it got, the price, and a fencing token
(epoch, seq). The seq only grows, across epochs too, so a later lease always carries a
larger token than any lease it could displace; whoever guards the resource accepts a
token only if no larger one has been seen for that unit (workers.leases).

Order inside a round (docs/market.md): leases past expiry + grace end and awards past their
claim deadline are taken back (their units are free again), bids past their last round
resolve as expired, then the rest clears. A bid that arrives while nothing waits and
its units are free is cleared at once, alone: it pays the reserve.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fleet.errors import MarketError
from fleet.messages import EndedReason, LostReason
from orchestrator.market.clearing import Bid, Pricing
from orchestrator.market.ledger import GENESIS, RoundRecord, clear_round


@dataclass(frozen=True, order=True)
class Token:
    epoch: int
    seq: int


@dataclass(frozen=True)
class BidRequest:
    """A bid as the workflow's owner sent it (after its budget granted the hold)."""

    bid_id: str  # also the hold id and the lease id: one id follows the bid through
    workflow_id: str
    task_id: str
    band: int
    price: int  # per unit, micro-credits
    units: int
    lease_ttl_ms: int
    valid_rounds: int  # resolves as expired after this many rounds without an award
    at_ms: int = 0  # when its owner sent it: for time-to-award, never for the outcome


@dataclass
class Waiting:
    request: BidRequest
    offset: int
    first_round: int
    rounds_lost: int = 0


@dataclass(frozen=True)
class Lease:
    lease_id: str
    workflow_id: str
    task_id: str
    units: tuple[int, ...]
    token: Token
    unit_price: int
    granted_at_ms: int
    claim_by_ms: int
    expires_at_ms: int
    claimed: bool = False


@dataclass(frozen=True)
class RoundResult:
    record: RoundRecord
    granted: tuple[Lease, ...]
    waited: tuple[Waiting, ...]  # the granted bids as they waited, same order
    lost: tuple[tuple[BidRequest, LostReason], ...]
    ended: tuple[tuple[Lease, EndedReason], ...]


@dataclass
class Book:
    resource: str
    capacity: int
    pricing: Pricing
    epoch: int
    claim_timeout_ms: int = 30_000
    expiry_grace_ms: int = 5_000
    seq: int = 0
    round_no: int = 0
    last_hash: str = GENESIS
    waiting: dict[str, Waiting] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    # Bid ids already resolved (awarded or lost), so a duplicate record of a bid is
    # recognised and never bids again. Pruned by the shell after the bids' retention.
    resolved: dict[str, int] = field(default_factory=dict)  # bid_id -> round resolved
    ended: list[tuple[Lease, EndedReason]] = field(default_factory=list)  # since the last round
    lost: list[tuple[BidRequest, LostReason]] = field(default_factory=list)  # since the last round

    # -- inputs ----------------------------------------------------------------------
    def bid(self, request: BidRequest, offset: int) -> bool:
        """Queue a bid; True if it should be cleared at once (uncontended, units free).

        A duplicate (same bid id, waiting, leased or resolved) changes nothing."""
        known = request.bid_id in self.waiting or request.bid_id in self.resolved
        if known or request.bid_id in self.leases:
            return False
        if request.units < 1 or request.price < 0:
            raise MarketError(f"bid {request.bid_id}: units and price must be positive")
        alone = not self.waiting
        self.waiting[request.bid_id] = Waiting(request, offset, self.round_no)
        return alone and request.units <= len(self.free_units())

    def withdraw(self, bid_id: str) -> bool:
        """The owner no longer wants it (workflow cancelled): a waiting bid resolves."""
        waiting = self.waiting.pop(bid_id, None)
        if waiting is None:
            return False
        self._lose(waiting.request, LostReason.WITHDRAWN)
        return True

    def claim(self, lease_id: str, token: Token) -> bool:
        lease = self.leases.get(lease_id)
        if lease is None or lease.token != token:
            return False  # ended already, or a stale token: nothing to claim
        self.leases[lease_id] = replace(lease, claimed=True)
        return True

    def release(self, lease_id: str, token: Token) -> bool:
        """The task's result arrived: its units are free from the next round."""
        return self._end(lease_id, token, EndedReason.RELEASED)

    def revoke(self, lease_ids: Iterable[str] | None = None) -> int:
        """Kill switch: end the given leases (all if None) now."""
        ids = list(self.leases) if lease_ids is None else list(lease_ids)
        return sum(
            self._end(i, self.leases[i].token, EndedReason.REVOKED) for i in ids if i in self.leases
        )

    def set_capacity(self, capacity: int) -> None:
        """Takes effect at the next round; live leases keep their units."""
        if capacity < 0:
            raise MarketError(f"{self.resource}: capacity must be >= 0, not {capacity}")
        self.capacity = capacity

    def new_epoch(self, epoch: int) -> None:
        """A new owner took over (it restored this book first)."""
        if epoch <= self.epoch:
            raise MarketError(f"{self.resource}: epoch {epoch} is not after {self.epoch}")
        self.epoch = epoch

    # -- the round -------------------------------------------------------------------
    def close_round(self, now_ms: int, offsets: tuple[int, int]) -> RoundResult:
        for lease in list(self.leases.values()):
            if now_ms > lease.expires_at_ms + self.expiry_grace_ms:
                self._end(lease.lease_id, lease.token, EndedReason.EXPIRED)
            elif not lease.claimed and now_ms > lease.claim_by_ms:
                self._end(lease.lease_id, lease.token, EndedReason.UNCLAIMED)
        for bid_id, waiting in list(self.waiting.items()):
            if self.round_no - waiting.first_round >= waiting.request.valid_rounds:
                del self.waiting[bid_id]
                self._lose(waiting.request, LostReason.EXPIRED)

        free = self.free_units()
        bids = [
            Bid(
                w.request.bid_id,
                w.offset,
                w.request.band,
                w.request.price,
                w.request.units,
                w.rounds_lost,
            )
            for w in self.waiting.values()
        ]
        record = clear_round(
            resource=self.resource,
            round_no=self.round_no,
            epoch=self.epoch,
            offsets=offsets,
            closed_at_ms=now_ms,
            free=len(free),
            pricing=self.pricing,
            bids=bids,
            prev_hash=self.last_hash,
        )
        granted, waited = [], []
        for award in record.outcome.awards:
            waiting = self.waiting.pop(award.bid_id)
            waited.append(waiting)
            request = waiting.request
            units, free = tuple(free[: award.units]), free[award.units :]
            self.seq += 1
            lease = Lease(
                lease_id=request.bid_id,
                workflow_id=request.workflow_id,
                task_id=request.task_id,
                units=units,
                token=Token(self.epoch, self.seq),
                unit_price=award.unit_price,
                granted_at_ms=now_ms,
                claim_by_ms=now_ms + self.claim_timeout_ms,
                expires_at_ms=now_ms + request.lease_ttl_ms,
            )
            self.leases[lease.lease_id] = lease
            self.resolved[request.bid_id] = self.round_no
            granted.append(lease)
        for bid_id in record.outcome.below_reserve:
            self._lose(self.waiting.pop(bid_id).request, LostReason.BELOW_RESERVE)
        for bid_id in record.outcome.waiting:
            self.waiting[bid_id].rounds_lost += 1
        self.round_no += 1
        self.last_hash = record.hash
        result = RoundResult(
            record, tuple(granted), tuple(waited), tuple(self.lost), tuple(self.ended)
        )
        self.lost, self.ended = [], []
        return result

    # -- queries ---------------------------------------------------------------------
    def free_units(self) -> list[int]:
        """Unit numbers below the capacity that no live lease holds, lowest first."""
        held = {u for lease in self.leases.values() for u in lease.units}
        return [u for u in range(self.capacity) if u not in held]

    def leased_units(self) -> int:
        return sum(len(lease.units) for lease in self.leases.values())

    # -- the changelog form ------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The whole book as plain JSON (the snapshot a new owner restores)."""
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("ended", "lost")},
            "ended": [[asdict(lease), why.value] for lease, why in self.ended],
            "lost": [[asdict(request), why.value] for request, why in self.lost],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Book:
        def lease(d: dict[str, Any]) -> Lease:
            return Lease(**{**d, "units": tuple(d["units"]), "token": Token(**d["token"])})

        def waiting(d: dict[str, Any]) -> Waiting:
            return Waiting(**{**d, "request": BidRequest(**d["request"])})

        return cls(
            **{
                **data,
                "pricing": Pricing(**data["pricing"]),
                "waiting": {k: waiting(v) for k, v in data["waiting"].items()},
                "leases": {k: lease(v) for k, v in data["leases"].items()},
                "ended": [(lease(d), EndedReason(why)) for d, why in data["ended"]],
                "lost": [(BidRequest(**d), LostReason(why)) for d, why in data["lost"]],
            }
        )

    # -- internals -------------------------------------------------------------------
    def _end(self, lease_id: str, token: Token, why: EndedReason) -> bool:
        lease = self.leases.get(lease_id)
        if lease is None or lease.token != token:
            return False  # already ended, or a stale token from an older lease
        del self.leases[lease_id]
        self.ended.append((lease, why))
        return True

    def _lose(self, request: BidRequest, why: LostReason) -> None:
        self.resolved[request.bid_id] = self.round_no
        self.lost.append((request, why))
