"""A workflow's budget: hold-then-charge escrow, in integer micro-credits.

The orchestrator instance that owns a workflow is the only writer of its budget. Before a
bid goes out it takes a hold for the bid's ``max_price`` (the bid id is the hold id);
clearing later settles the hold with the price charged (charge <= max_price <= hold) and
the rest is released. So the budget can never be overspent, and no transaction has to span
the workflow's partition and the resource's.

Kafka redelivers, so every operation carries an id and is applied at most once: a
duplicate returns the first outcome and changes nothing. An id names one request; the same
id with different content is a bug upstream and raises :class:`BudgetError`.

After every operation (docs/market.md S5): spent + held <= limit; spent = sum of settled
charges; each hold settled at most once; nothing negative. :meth:`Budget.check` says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from fleet.errors import DecodeError, FleetError

VERSION = 1


class BudgetError(FleetError, ValueError):
    """An impossible request (bad amount, charge above the hold, a reused id): a bug in the
    caller, never a state of the budget, which is left unchanged."""


@dataclass(frozen=True)
class Hold:
    hold_id: str
    amount: int


@dataclass(frozen=True)
class Denied:
    hold_id: str
    amount: int  # what was asked for; ``Budget.available`` says what there is


@dataclass(frozen=True)
class Settled:
    hold_id: str
    charge: int
    released: int  # the rest of the hold, available again


@dataclass(frozen=True)
class AlreadySettled:
    first: Settled  # the settlement that was applied


@dataclass(frozen=True)
class UnknownHold:
    hold_id: str  # never granted (or denied): there is nothing to settle


@dataclass
class Budget:
    """One workflow's budget: plain data, stored whole in the orchestrator's changelog."""

    limit: int
    spent: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # open: hold_id -> amount
    settled: dict[str, Settled] = field(default_factory=dict)
    # Denials are remembered too: a redelivered request must not be granted after a top-up,
    # or one bid id would have two outcomes.
    denied: dict[str, int] = field(default_factory=dict)
    top_ups: dict[str, int] = field(default_factory=dict)  # top_up_id -> amount

    def __post_init__(self) -> None:
        self.check()

    @property
    def held(self) -> int:
        # Summed, not kept as a running total: a workflow has few open holds, and a
        # second copy of the same number is a second thing that can drift.
        return sum(self.holds.values())

    @property
    def available(self) -> int:
        return self.limit - self.spent - self.held

    def grant_hold(self, hold_id: str, amount: int) -> Hold | Denied:
        """Hold ``amount`` for ``hold_id`` if it is available, else deny it."""
        _whole("hold amount", amount, minimum=1)
        first = self._first_grant(hold_id)
        if first is not None:
            if first.amount != amount:
                raise BudgetError(f"hold {hold_id!r} was asked for {first.amount}, now {amount}")
            return first
        if amount > self.available:
            self.denied[hold_id] = amount
            return Denied(hold_id, amount)
        self.holds[hold_id] = amount
        return Hold(hold_id, amount)

    def settle(self, hold_id: str, charge: int) -> Settled | AlreadySettled | UnknownHold:
        """Charge ``charge`` against the hold and release the rest (0 releases it all)."""
        _whole("charge", charge, minimum=0)
        first = self.settled.get(hold_id)
        if first is not None:
            if first.charge != charge:
                raise BudgetError(f"hold {hold_id!r} was settled at {first.charge}, now {charge}")
            return AlreadySettled(first)
        amount = self.holds.get(hold_id)
        if amount is None:
            return UnknownHold(hold_id)
        if charge > amount:
            raise BudgetError(f"charge {charge} exceeds hold {hold_id!r} of {amount}")
        del self.holds[hold_id]
        self.spent += charge
        self.settled[hold_id] = outcome = Settled(hold_id, charge, amount - charge)
        return outcome

    def top_up(self, top_up_id: str, amount: int) -> bool:
        """Raise the limit by ``amount``; False (and no change) if already applied."""
        _whole("top-up", amount, minimum=1)
        first = self.top_ups.get(top_up_id)
        if first is not None:
            if first != amount:
                raise BudgetError(f"top-up {top_up_id!r} was {first}, now {amount}")
            return False
        self.top_ups[top_up_id] = amount
        self.limit += amount
        return True

    def check(self) -> None:
        """Raise :class:`BudgetError` naming the first broken invariant, if any."""
        problem = next(self._problems(), None)
        if problem is not None:
            raise BudgetError(f"inconsistent budget: {problem}")

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "v": VERSION,
            "limit": self.limit,
            "spent": self.spent,
            "holds": dict(self.holds),
            "settled": {
                hold_id: {"charge": s.charge, "released": s.released}
                for hold_id, s in self.settled.items()
            },
            "denied": dict(self.denied),
            "top_ups": dict(self.top_ups),
        }

    @classmethod
    def from_json(cls, record: JsonValue) -> Budget:
        """The budget a record describes, or :class:`DecodeError` saying what is wrong
        (so a corrupt changelog record fails alone instead of breaking accounting later)."""
        try:
            parsed = _Record.model_validate(record)
            return cls(
                parsed.limit,
                parsed.spent,
                dict(parsed.holds),
                {h: Settled(h, s.charge, s.released) for h, s in parsed.settled.items()},
                dict(parsed.denied),
                dict(parsed.top_ups),
            )
        except (ValidationError, BudgetError) as exc:
            raise DecodeError(f"budget record: {exc}") from exc

    def _problems(self) -> Iterator[str]:
        settled = self.settled.values()
        positive = [*self.holds.values(), *self.denied.values(), *self.top_ups.values()]
        non_negative = [
            self.limit,
            self.spent,
            *(n for s in settled for n in (s.charge, s.released)),
        ]
        if not all(_is_whole(n, 1) for n in positive):
            yield "a hold, denial or top-up that is not a positive integer"
        if not all(_is_whole(n, 0) for n in non_negative):
            yield "a limit, spend or settlement that is not a non-negative integer"
        if self.spent != sum(s.charge for s in settled):
            yield "spent is not the sum of settled charges"
        if self.spent + self.held > self.limit:
            yield "spent + held exceeds the limit"
        if any(hold_id != s.hold_id for hold_id, s in self.settled.items()):
            yield "a settlement filed under another hold id"
        ids = [*self.holds, *self.settled, *self.denied]
        if len(ids) != len(set(ids)):
            yield "a hold id in more than one of open, settled and denied"

    def _first_grant(self, hold_id: str) -> Hold | Denied | None:
        if hold_id in self.holds:
            return Hold(hold_id, self.holds[hold_id])
        if hold_id in self.settled:
            first = self.settled[hold_id]
            return Hold(hold_id, first.charge + first.released)
        if hold_id in self.denied:
            return Denied(hold_id, self.denied[hold_id])
        return None


def _is_whole(value: int, minimum: int) -> bool:
    # Money is whole micro-credits: a float (or a bool) here would break exact sums and
    # the equality of a state with its replay.
    return type(value) is int and value >= minimum


def _whole(what: str, value: int, *, minimum: int) -> None:
    if not _is_whole(value, minimum):
        raise BudgetError(f"{what} must be an integer >= {minimum}, got {value!r}")


class _SettledRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    charge: int
    released: int


class _Record(BaseModel):
    # Strict: JSON 2.0 or "2" is not a micro-credit amount.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Literal[1]
    limit: int
    spent: int
    holds: dict[str, int]
    settled: dict[str, _SettledRecord]
    denied: dict[str, int]
    top_ups: dict[str, int]
