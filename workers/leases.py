"""The resource side's check of a lease: a :class:`LeaseGuard` refuses stale fencing tokens.

Whatever controls a contended resource (a GPU slot wrapper, an API proxy) keeps one guard
per resource and admits each lease before use. The auctioneer's tokens ``(epoch, seq)``
only grow for a resource, so a lease whose token is below one already seen for a unit
was displaced: its holder may be a zombie (a handler the worker stopped waiting for, a
redelivered old attempt) while the unit belongs to someone else. Refusing it here is
what makes the auctioneer's decision hold at the resource (docs/market.md, S7).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from prometheus_client import CollectorRegistry, Counter

from fleet.errors import MarketError
from fleet.messages import LeaseGrant

log = structlog.get_logger()

Token = tuple[int, int]  # (epoch, seq): tuples compare lexicographically, as tokens do


class StaleLease(MarketError):  # noqa: N818 - reads as what happened
    """The resource refused a lease: ``unit`` was already used under the ``newer`` token
    (both None for :class:`LeaseExpired`).

    Not a :class:`~fleet.errors.HandlerError`, so a handler that lets it escape fails its
    task as retryable: the stale lease is lost, but a later attempt may hold a fresh one.
    """

    def __init__(
        self,
        lease: LeaseGrant,
        message: str,
        *,
        unit: int | None = None,
        newer: Token | None = None,
    ) -> None:
        super().__init__(message)
        self.lease = lease
        self.unit = unit
        self.newer = newer

    @property
    def token(self) -> Token:
        return self.lease.token


class LeaseExpired(StaleLease):
    """The lease passed its expiry: the auctioneer may already have given its units away."""


class LeaseMetrics:
    """What the guards of one process count; one per registry, shared by its guards."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "fleet_lease_rejections",
            "Leases refused at the resource: a stale token or past expiry",
            ["resource", "reason"],
            registry=registry,
        )


class LeaseGuard:
    """The highest token seen per unit of one resource; thread-safe.

    ``admit`` accepts a lease iff it is not expired and, for every unit it names, its
    token is at least the highest seen for that unit; then it records the token. The
    same lease may be admitted again (equal token), so a holder can check before each
    use: once a newer lease on its units is admitted, its next use is refused.
    """

    def __init__(self, resource: str, metrics: LeaseMetrics | None = None) -> None:
        self.resource = resource
        self._metrics = metrics
        self._lock = threading.Lock()
        self._highest: dict[int, Token] = {}
        self._holders: dict[int, Tally[str]] = {}  # unit -> lease id -> open `holding` blocks
        self._peak: dict[int, int] = {}

    def admit(self, lease: LeaseGrant, now_ms: int) -> None:
        """Accept ``lease`` for use now, or raise :class:`StaleLease` (or :class:`LeaseExpired`)."""
        with self._lock:
            self._admit(lease, now_ms)

    @contextmanager
    def holding(self, lease: LeaseGrant, now_ms: int) -> Iterator[LeaseGrant]:
        """Admit ``lease`` and count it as a holder of its units until the block ends."""
        units = set(lease.units)
        with self._lock:
            self._admit(lease, now_ms)
            for unit in units:
                held = self._holders.setdefault(unit, Tally())
                if held and lease.lease_id not in held:
                    # An older lease still inside outlived its lease (a sync handler the
                    # worker stopped waiting for: threads cannot be killed). The newer
                    # lease is the rightful one; the overlap shows in max_concurrent.
                    log.warning(
                        "unit still held by an older lease while a newer one starts using it",
                        resource=self.resource,
                        unit=unit,
                        lease_id=lease.lease_id,
                        still_holding=sorted(held),
                    )
                held[lease.lease_id] += 1
                self._peak[unit] = max(self._peak.get(unit, 0), len(held))
        try:
            yield lease
        finally:
            with self._lock:
                for unit in units:
                    held = self._holders[unit]
                    held[lease.lease_id] -= 1
                    if not held[lease.lease_id]:
                        del held[lease.lease_id]

    def highest(self, unit: int) -> Token | None:
        """The highest token admitted for ``unit`` (None: never used)."""
        with self._lock:
            return self._highest.get(unit)

    def holders(self, unit: int) -> set[str]:
        """Lease ids inside a ``holding`` block for ``unit`` now."""
        with self._lock:
            return set(self._holders.get(unit, ()))

    def max_concurrent(self, unit: int) -> int:
        """The most distinct leases ever inside ``holding`` blocks for ``unit`` at once."""
        with self._lock:
            return self._peak.get(unit, 0)

    def _admit(self, lease: LeaseGrant, now_ms: int) -> None:
        if lease.resource != self.resource:
            # A lease on another resource says nothing about these units: a wiring bug.
            raise MarketError(
                f"lease {lease.lease_id} is on {lease.resource!r}, "
                f"not on {self.resource!r} that this guard controls"
            )
        if now_ms >= lease.expires_at_ms:
            self._count("expired")
            raise LeaseExpired(
                lease,
                f"lease {lease.lease_id} on {self.resource!r} (token {lease.token}) expired at "
                f"{lease.expires_at_ms} ms, {now_ms - lease.expires_at_ms} ms ago: "
                "its units may belong to someone else",
            )
        # Every unit is checked before any is recorded: a refused lease leaves no trace.
        for unit in lease.units:
            seen = self._highest.get(unit)
            if seen is not None and lease.token < seen:
                self._count("stale")
                raise StaleLease(
                    lease,
                    f"lease {lease.lease_id} on {self.resource!r} is stale: unit {unit} was "
                    f"already used under token {seen}, newer than its token {lease.token}",
                    unit=unit,
                    newer=seen,
                )
        for unit in lease.units:
            self._highest[unit] = lease.token

    def _count(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected.labels(self.resource, reason).inc()
