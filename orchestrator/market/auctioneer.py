"""The auctioneer: the books of the resources one orchestrator instance owns, driven by
market inputs and the clock, producing outcomes, ledger rounds and snapshots.

No Kafka here. The service hands it each decoded ``MarketInput`` with its offset and
the time, calls ``tick`` when ``next_due_ms`` comes, and writes what it returns (outcomes
keyed by workflow, rounds keyed by resource, changed books to the market changelog) in
the same transaction as the input offsets. That transaction is what makes the single
owner real: a zombie instance's writes are aborted, and the next owner restores each
book from its snapshot and starts a new epoch, so its tokens outrank every earlier one.

Rounds: a book with waiting bids clears every ``round_ms``; a book with live leases is
looked at as often as its nearest expiry or claim deadline needs. The clock only decides
when; what a round decides depends on the book alone (docs/market.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import JsonValue

from fleet.messages import (
    EndedReason,
    LeaseGrant,
    LostReason,
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    MarketOutcomeKind,
    MarketRound,
)
from orchestrator.market.book import BidRequest, Book, Lease, Token
from orchestrator.market.ledger import RoundRecord
from orchestrator.market.policy import MarketPolicy
from orchestrator.market.stats import AwardStat

log = structlog.get_logger()


@dataclass
class Output:
    outcomes: list[MarketOutcome] = field(default_factory=list)
    rounds: list[MarketRound] = field(default_factory=list)
    records: list[RoundRecord] = field(default_factory=list)  # the same rounds, unencoded
    dropped: list[str] = field(default_factory=list)  # inputs that changed nothing, and why
    awards: list[AwardStat] = field(default_factory=list)  # for the operators' metrics


@dataclass
class _Owned:
    book: Book
    first_offset: int | None = None  # inputs since the last round
    last_offset: int | None = None
    next_round_ms: int = 0


class Auctioneer:
    def __init__(self, policy: MarketPolicy) -> None:
        self.policy = policy
        self._owned: dict[str, _Owned] = {}
        self._changed: set[str] = set()

    # -- ownership --------------------------------------------------------------------
    def restore(self, resource: str, snapshot: JsonValue | None) -> Book | None:
        """Take over ``resource`` from its snapshot (None: first time): a new epoch."""
        pool = self.policy.pools.get(resource)
        if pool is None:
            log.warning("market snapshot for a pool no longer configured", resource=resource)
            return None
        if snapshot is None:
            book = Book(
                resource,
                pool.capacity,
                pool.pricing,
                epoch=0,
                claim_timeout_ms=self.policy.claim_timeout_ms,
                expiry_grace_ms=self.policy.expiry_grace_ms,
            )
        else:
            assert isinstance(snapshot, dict)
            book = Book.from_json(snapshot)
            book.pricing = pool.pricing  # pricing is configuration; capacity is a record
        book.new_epoch(book.epoch + 1)
        self._owned[resource] = _Owned(book)
        self._changed.add(resource)  # the new epoch is durable before any lease of it
        return book

    def forget(self, keep: set[str]) -> None:
        """Drop the books of resources this instance no longer owns."""
        self._owned = {r: o for r, o in self._owned.items() if r in keep}
        self._changed &= keep

    def books(self) -> list[Book]:
        return [owned.book for owned in self._owned.values()]

    def book(self, resource: str) -> Book | None:
        owned = self._owned.get(resource)
        return None if owned is None else owned.book

    # -- inputs -----------------------------------------------------------------------
    def on_input(self, message: MarketInput, offset: int, now_ms: int) -> Output:
        out = Output()
        owned = self._owned.get(message.resource)
        if owned is None:
            owned_book = self.restore(message.resource, None)
            if owned_book is None:
                out.dropped.append(f"{message.resource}: not a configured pool")
                if message.kind is MarketInputKind.BID and message.bid_id:
                    out.outcomes.append(_lost_unknown_pool(message, now_ms))
                return out
            owned = self._owned[message.resource]
        book = owned.book
        owned.first_offset = offset if owned.first_offset is None else owned.first_offset
        owned.last_offset = offset
        self._changed.add(message.resource)
        if self._apply(book, message, offset, out):
            self._round(owned, now_ms, out)  # uncontended, units free: at once
        if book.ended or book.lost:
            # Leases ended and bids withdrawn are announced at once, not at the next round:
            # their units and holds are free now.
            self._announce(book, book.ended, book.lost, now_ms, out)
            book.ended, book.lost = [], []
        if book.waiting and not owned.next_round_ms:
            owned.next_round_ms = now_ms + self.policy.round_ms
        return out

    def _apply(self, book: Book, message: MarketInput, offset: int, out: Output) -> bool:
        """Apply one input to its book; True if it calls for a round at once."""
        if message.kind is MarketInputKind.BID:
            request = _request(message)
            if request is None:
                out.dropped.append(f"bid on {message.resource} without ids")
                return False
            if book.bid(request, offset):
                return True
            if request.bid_id not in book.waiting:
                out.dropped.append(f"bid {request.bid_id}: a duplicate")
            return False
        token = Token(message.epoch, message.seq)
        bid_id = message.bid_id or ""
        capacity = message.capacity
        handlers: dict[MarketInputKind, Callable[[], bool]] = {
            MarketInputKind.WITHDRAW: lambda: book.withdraw(bid_id),
            MarketInputKind.CLAIM: lambda: book.claim(bid_id, token),
            MarketInputKind.RELEASE: lambda: book.release(bid_id, token),
            MarketInputKind.REVOKE: lambda: book.revoke([bid_id] if bid_id else None) > 0,
            MarketInputKind.CAPACITY: lambda: capacity is not None and _set(book, capacity),
        }
        handler = handlers.get(message.kind)
        if handler is None or not handler():
            out.dropped.append(
                f"{message.kind.value} {bid_id or message.resource} (token {token}): "
                "changed nothing"
            )
        return False

    def tick(self, now_ms: int) -> Output:
        """Close every round that is due."""
        out = Output()
        for owned in self._owned.values():
            due = self._due_ms(owned)
            if due is not None and due <= now_ms:
                self._round(owned, now_ms, out)
        return out

    def next_due_ms(self) -> int | None:
        dues = [d for o in self._owned.values() if (d := self._due_ms(o)) is not None]
        return min(dues, default=None)

    def take_changes(self) -> dict[str, JsonValue]:
        """Snapshots of the books changed since the last call, for the changelog."""
        changed = {
            r: _json(self._owned[r].book.to_json()) for r in self._changed if r in self._owned
        }
        self._changed.clear()
        return changed

    # -- internals ----------------------------------------------------------------------
    def _due_ms(self, owned: _Owned) -> int | None:
        book = owned.book
        dues = [owned.next_round_ms] if book.waiting and owned.next_round_ms else []
        for lease in book.leases.values():
            dues.append(lease.expires_at_ms + book.expiry_grace_ms + 1)
            if not lease.claimed:
                dues.append(lease.claim_by_ms + 1)
        return min(dues, default=None)

    def _round(self, owned: _Owned, now_ms: int, out: Output) -> None:
        book = owned.book
        first = owned.first_offset if owned.first_offset is not None else -1
        last = owned.last_offset if owned.last_offset is not None else -1
        result = book.close_round(now_ms, (first, last))
        owned.first_offset = owned.last_offset = None
        owned.next_round_ms = now_ms + self.policy.round_ms if book.waiting else 0
        self._changed.add(book.resource)
        record = result.record
        out.records.append(record)
        out.rounds.append(
            MarketRound(
                resource=record.resource,
                round_no=record.round_no,
                epoch=record.epoch,
                hash=record.hash,
                prev_hash=record.prev_hash,
                record=_json(record.to_json()),
            )
        )
        for lease, waited in zip(result.granted, result.waited, strict=True):
            out.awards.append(
                AwardStat(
                    pool=book.resource,
                    band=waited.request.band,
                    workflow_id=lease.workflow_id,
                    units=len(lease.units),
                    wait_ms=max(0, now_ms - waited.request.at_ms),
                    rounds_waited=waited.rounds_lost,
                )
            )
            out.outcomes.append(
                _outcome(
                    MarketOutcomeKind.GRANTED,
                    book.resource,
                    lease,
                    reason=None,
                    round_no=record.round_no,
                    now_ms=now_ms,
                )
            )
        self._announce(book, result.ended, result.lost, now_ms, out, round_no=record.round_no)

    def _announce(
        self,
        book: Book,
        ended: Sequence[tuple[Lease, EndedReason]],
        lost: Sequence[tuple[BidRequest, LostReason]],
        now_ms: int,
        out: Output,
        *,
        round_no: int | None = None,
    ) -> None:
        round_no = book.round_no if round_no is None else round_no
        resource = book.resource
        for lease, ended_why in ended:
            out.outcomes.append(
                _outcome(
                    MarketOutcomeKind.ENDED,
                    resource,
                    lease,
                    reason=ended_why,
                    round_no=round_no,
                    now_ms=now_ms,
                )
            )
        for request, why in lost:
            out.outcomes.append(
                _outcome(
                    MarketOutcomeKind.LOST,
                    resource,
                    request,
                    reason=why,
                    round_no=round_no,
                    now_ms=now_ms,
                )
            )


def _outcome(
    kind: MarketOutcomeKind,
    resource: str,
    about: Lease | BidRequest,
    *,
    reason: LostReason | EndedReason | None,
    round_no: int,
    now_ms: int,
) -> MarketOutcome:
    """The answer about a lease (granted, ended) or a bid that lost."""
    lease = about if isinstance(about, Lease) else None
    return MarketOutcome(
        kind=kind,
        resource=resource,
        bid_id=about.lease_id if isinstance(about, Lease) else about.bid_id,
        workflow_id=about.workflow_id,
        task_id=about.task_id,
        lease=None if lease is None else grant(resource, lease),
        reason=reason,
        round_no=round_no,
        at_ms=now_ms,
    )


def _set(book: Book, capacity: int) -> bool:
    book.set_capacity(capacity)
    return True


def grant(resource: str, lease: Lease) -> LeaseGrant:
    return LeaseGrant(
        resource=resource,
        lease_id=lease.lease_id,
        units=list(lease.units),
        epoch=lease.token.epoch,
        seq=lease.token.seq,
        unit_price=lease.unit_price,
        expires_at_ms=lease.expires_at_ms,
    )


def _request(message: MarketInput) -> BidRequest | None:
    if not (message.bid_id and message.workflow_id and message.task_id):
        return None
    return BidRequest(
        bid_id=message.bid_id,
        workflow_id=message.workflow_id,
        task_id=message.task_id,
        band=message.band,
        price=message.price,
        units=message.units,
        lease_ttl_ms=message.lease_ttl_ms,
        valid_rounds=message.valid_rounds,
        at_ms=message.at_ms,
    )


def _lost_unknown_pool(message: MarketInput, now_ms: int) -> MarketOutcome:
    return MarketOutcome(
        kind=MarketOutcomeKind.LOST,
        resource=message.resource,
        bid_id=message.bid_id or "",
        workflow_id=message.workflow_id or "",
        task_id=message.task_id or "",
        reason=LostReason.UNKNOWN_POOL,
        at_ms=now_ms,
    )


def _json(data: dict[str, Any]) -> JsonValue:
    """Dataclass dicts hold tuples; the changelog and Avro JSON fields want lists."""
    return _lists(data)  # type: ignore[no-any-return]


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value
