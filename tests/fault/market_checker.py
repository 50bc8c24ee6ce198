"""The market run's checks: pure, over what was read back from the market topics.

:func:`check_market` takes the workload, the terminal events, every ``hold`` result (all
attempts, duplicates included: the probe at the resource), the bids, the outcomes and the
ledger rounds, and returns a :class:`MarketVerdict`: each violation with its evidence, and
the figures the summary prints.

* capacity: per pool, the units held at once (from the ``held_ms`` intervals) never
  exceed the capacity, and no unit is held under two leases at once;
* fencing: per unit, by start of use, tokens never go down (no stale token accepted);
* every bid has exactly one final outcome (GRANTED or LOST);
* budgets: every charge in a terminal event's budget is its grant's price x units (0 for
  a bid never granted); spent = the sum of charges <= the limit; drift (the sum of
  mismatches) must be 0;
* band priority, exactly, per ledger round: no bid is served while a bid of a higher band
  waits in the same round (the clearing never backfills, so this holds round by round);
* waits by band (GRANTED at_ms - BID at_ms): every low-band bid served (none lost but
  those their owner withdrew) and, when asked (the long run, where queues form), the
  high band's median wait below the low band's. Over a short run most bids are granted
  in the round they arrive, so both medians are one round plus noise and say nothing
  about priority: CI's market-short once saw 106 ms against 56 ms with the per-round
  order intact;
* the ledger: per pool, rounds in offset order replay to the recorded hash chain, and
  its awards are exactly the GRANTED outcomes.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from fleet.messages import (
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    MarketOutcomeKind,
    MarketRound,
    TaskResult,
    TaskStatus,
)
from orchestrator.market.ledger import GENESIS, ChainBroken, RoundRecord, replay
from tests.fault.checker import SeenEvent
from tests.fault.market_workload import POOLS, MarketItem

Token = tuple[int, int]


@dataclass(frozen=True)
class Hold:
    """One use of units of a pool, as a ``hold`` handler reported it."""

    pool: str
    units: tuple[int, ...]
    token: Token
    start_ms: int
    end_ms: int
    task: str  # task_id#attempt
    pid: int

    def describe(self) -> str:
        return (
            f"{self.task} token {list(self.token)} units {list(self.units)} "
            f"held [{self.start_ms}, {self.end_ms}] by pid {self.pid}"
        )


@dataclass(frozen=True)
class Positioned:
    partition: int
    offset: int


@dataclass(frozen=True)
class SeenRound(Positioned):
    round: MarketRound


@dataclass(frozen=True)
class SeenBid(Positioned):
    bid: MarketInput


@dataclass
class PoolFigures:
    capacity: int
    max_units_held: int = 0  # at once, from the probe
    max_holders_per_unit: int = 0
    holds: int = 0
    leases: int = 0  # GRANTED outcomes
    rounds: int = 0
    jain: float | None = None  # units per workflow over the run


@dataclass
class MarketVerdict:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pools: dict[str, PoolFigures] = field(default_factory=dict)
    waits_ms: dict[str, list[int]] = field(default_factory=dict)  # band -> waits
    bids: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # GRANTED / LOST reason
    low_unserved: int = 0  # low-band bids neither granted nor withdrawn by their owner
    low_withdrawn: int = 0
    stale_rejections: int = 0  # the guards' refusals (StaleLease)
    expired_rejections: int = 0  # LeaseExpired
    tasks_run: int = 0  # distinct hold tasks with a successful result
    budgets_checked: int = 0
    drift: int = 0  # micro-credits
    held_at_end: int = 0  # bids still unanswered when their workflow ended (not charged)
    awarded_after_end: int = 0  # of those, awarded anyway (the unit given back unused)
    revenue: int = 0  # micro-credits, the ledger's awards
    rounds_replayed: int = 0
    waited_bids: int = 0  # bids that waited at least one round


class _Used(BaseModel):
    """One pool's entry in a hold output (``workers.examples.hold``)."""

    units: list[int]
    token: tuple[int, int]
    held_ms: tuple[int, int]


def holds_of(results: Iterable[TaskResult]) -> tuple[list[Hold], list[str]]:
    """Every use of units that a successful ``hold`` result reports, and unreadable ones."""
    holds, bad = [], []
    for result in results:
        if result.status is not TaskStatus.SUCCEEDED:
            continue
        task = f"{result.task_id}#{result.attempt}"
        out = result.output
        leases = out.get("leases") if isinstance(out, dict) else None
        pid = out.get("pid") if isinstance(out, dict) else None
        if not isinstance(leases, dict) or not isinstance(pid, int):
            bad.append(f"{task}: no leases in {out!r}"[:300])
            continue
        for pool, lease in leases.items():
            try:
                used = _Used.model_validate(lease)
            except ValidationError:
                bad.append(f"{task}: {pool}: {lease!r}"[:300])
                continue
            start, end = used.held_ms
            holds.append(Hold(pool, tuple(used.units), used.token, start, end, task, pid))
    return holds, bad


def _check_probe(verdict: MarketVerdict, holds: Sequence[Hold]) -> None:
    by_pool: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        by_pool[hold.pool].append(hold)
    for pool, pool_holds in sorted(by_pool.items()):
        figures = verdict.pools.setdefault(pool, PoolFigures(POOLS.get(pool, 0)))
        figures.holds = len(pool_holds)
        # Units at once: ends before starts at the same ms (a unit handed on is not shared).
        edges = sorted(
            [(h.start_ms, 1, len(h.units)) for h in pool_holds]
            + [(h.end_ms, 0, -len(h.units)) for h in pool_holds]
        )
        at_once = 0
        for at_ms, _, delta in edges:
            at_once += delta
            if at_once > figures.max_units_held:
                figures.max_units_held = at_once
                if at_once > figures.capacity:
                    verdict.violations.append(
                        f"{pool}: {at_once} units held at once at {at_ms} ms, "
                        f"capacity {figures.capacity}"
                    )
        per_unit: dict[int, list[Hold]] = defaultdict(list)
        for hold in pool_holds:
            for unit in hold.units:
                per_unit[unit].append(hold)
        for unit, unit_holds in sorted(per_unit.items()):
            _check_unit(verdict, figures, f"{pool} unit {unit}", unit_holds)


def _check_unit(
    verdict: MarketVerdict, figures: PoolFigures, where: str, holds: list[Hold]
) -> None:
    """Holders at once (distinct leases) and tokens in order of use, for one unit."""
    ordered = sorted(holds, key=lambda h: (h.start_ms, h.end_ms))
    open_holds: list[Hold] = []
    highest: Hold | None = None
    for hold in ordered:
        open_holds = [h for h in open_holds if h.end_ms > hold.start_ms]
        rivals = [h for h in open_holds if h.token != hold.token]
        holders = len({h.token for h in open_holds} | {hold.token})
        figures.max_holders_per_unit = max(figures.max_holders_per_unit, holders)
        if rivals:
            verdict.violations.append(
                f"{where} held by two leases at once: {hold.describe()} while "
                + "; ".join(r.describe() for r in rivals)
            )
        if highest is not None and hold.token < highest.token:
            verdict.violations.append(
                f"{where}: stale token accepted: {hold.describe()} after {highest.describe()}"
            )
        if highest is None or hold.token > highest.token:
            highest = hold
        open_holds.append(hold)


def _finals(
    verdict: MarketVerdict, bids: Sequence[SeenBid], outcomes: Sequence[MarketOutcome]
) -> tuple[dict[str, MarketInput], dict[str, list[MarketOutcome]]]:
    """Every bid (first record of each id) and its final outcomes; checks one each."""
    first: dict[str, MarketInput] = {}
    for seen in sorted(bids, key=lambda s: (s.partition, s.offset)):
        bid = seen.bid
        if bid.kind is MarketInputKind.BID and bid.bid_id:
            first.setdefault(bid.bid_id, bid)
    verdict.bids = len(first)
    finals: dict[str, list[MarketOutcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.kind in (MarketOutcomeKind.GRANTED, MarketOutcomeKind.LOST):
            finals[outcome.bid_id].append(outcome)
            label = outcome.kind.value
            if outcome.kind is MarketOutcomeKind.LOST:
                label += f" ({outcome.reason})"
            verdict.outcomes[label] += 1
    unresolved = sorted(b for b in first if not finals.get(b))
    several = {b: f for b, f in finals.items() if len(f) > 1}
    unknown = sorted(b for b in finals if b not in first)
    _listed(verdict, "bids without a final outcome (GRANTED or LOST)", unresolved)
    _listed(
        verdict,
        "bids with more than one final outcome",
        [
            f"{b}: " + ", ".join(f"{o.kind.value} round {o.round_no} at {o.at_ms}" for o in f)
            for b, f in sorted(several.items())
        ],
    )
    _listed(verdict, "outcomes of bids never made", unknown)
    return first, finals


def _check_waits(
    verdict: MarketVerdict,
    bids: Mapping[str, MarketInput],
    finals: Mapping[str, list[MarketOutcome]],
    bands: Sequence[str],
    compare_medians: bool,
) -> None:
    for band in bands:
        verdict.waits_ms[band] = []
    starved = []
    for bid_id, bid in bids.items():
        band = bands[bid.band] if 0 <= bid.band < len(bands) else f"band {bid.band}"
        got = finals.get(bid_id, [])
        granted = [o for o in got if o.kind is MarketOutcomeKind.GRANTED]
        if granted:
            verdict.waits_ms.setdefault(band, []).append(max(0, granted[0].at_ms - bid.at_ms))
        elif bid.band == 0:
            if got and all(o.reason == "withdrawn" for o in got):
                verdict.low_withdrawn += 1
            else:
                why = ", ".join(f"{o.kind.value} {o.reason}" for o in got) or "no outcome"
                starved.append(f"{bid_id} ({why})")
    verdict.low_unserved = len(starved)
    _listed(verdict, "low-band bids never served (starvation)", starved)
    low, high = verdict.waits_ms.get(bands[0], []), verdict.waits_ms.get(bands[-1], [])
    if compare_medians and low and high and statistics.median(high) >= statistics.median(low):
        verdict.violations.append(
            f"the high band's median wait {statistics.median(high):.0f} ms is not below the "
            f"low band's {statistics.median(low):.0f} ms"
        )


def _check_band_order(verdict: MarketVerdict, records: Sequence[RoundRecord]) -> None:
    """A served bid's band is never below a waiting bid's band in the same round."""
    for record in records:
        band = {b.bid_id: b.band for b in record.bids}
        served = [band[a.bid_id] for a in record.outcome.awards if a.bid_id in band]
        waiting = [band[w] for w in record.outcome.waiting if w in band]
        if served and waiting and min(served) < max(waiting):
            verdict.violations.append(
                f"ledger {record.resource} round {record.round_no}: a band-{min(served)} bid "
                f"was served while a band-{max(waiting)} bid waited"
            )


def _check_ledger(
    verdict: MarketVerdict, rounds: Sequence[SeenRound], granted: Mapping[str, MarketOutcome]
) -> dict[str, tuple[int, int]]:
    """Replay each pool's chain; returns every award, bid id -> (units, unit price)."""
    by_pool: dict[str, list[SeenRound]] = defaultdict(list)
    for seen in rounds:
        by_pool[seen.round.resource].append(seen)
    awards: dict[str, tuple[int, int]] = {}
    for pool, pool_rounds in sorted(by_pool.items()):
        if len({s.partition for s in pool_rounds}) != 1:
            verdict.violations.append(f"ledger of {pool} spans several partitions")
        ordered = sorted(pool_rounds, key=lambda s: (s.partition, s.offset))
        records = [_record(s.round) for s in ordered]
        figures = verdict.pools.setdefault(pool, PoolFigures(POOLS.get(pool, 0)))
        figures.rounds = len(records)
        _check_band_order(verdict, records)
        for s, record in zip(ordered, records, strict=True):
            if (s.round.hash, s.round.prev_hash, s.round.round_no) != (
                record.hash,
                record.prev_hash,
                record.round_no,
            ):
                verdict.violations.append(
                    f"ledger {pool} p{s.partition}@{s.offset}: the round's header differs "
                    "from its record"
                )
        numbers = [r.round_no for r in records]
        if numbers != list(range(len(numbers))):
            gaps = [f"{a}->{b}" for a, b in itertools.pairwise(numbers) if b != a + 1]
            verdict.violations.append(
                f"ledger {pool}: round numbers not 0, 1, 2, ... in offset order: {gaps[:10]}"
            )
        try:
            replay(records, GENESIS)
            verdict.rounds_replayed += len(records)
        except ChainBroken as exc:
            verdict.violations.append(f"ledger {pool}: replay failed: {exc}")
        for record in records:
            for award in record.outcome.awards:
                if award.bid_id in awards:
                    verdict.violations.append(f"ledger {pool}: bid {award.bid_id} awarded twice")
                awards[award.bid_id] = (award.units, award.unit_price)
                verdict.revenue += award.units * award.unit_price
        verdict.waited_bids += len({b for r in records for b in r.outcome.waiting})
    for bid_id, outcome in sorted(granted.items()):
        lease = outcome.lease
        sold = awards.get(bid_id)
        got = None if lease is None else (len(lease.units), lease.unit_price)
        if got is None or sold != got:
            verdict.violations.append(
                f"GRANTED {bid_id} (units, price {got}) does not match its ledger award {sold}"
            )
    _listed(
        verdict,
        "ledger awards without a GRANTED outcome",
        sorted(b for b in awards if b not in granted),
    )
    return awards


def _check_budgets(
    verdict: MarketVerdict,
    events: Iterable[SeenEvent],
    bids: Mapping[str, MarketInput],
    awards: Mapping[str, tuple[int, int]],
    withdrawn: Mapping[str, SeenBid],
    granted: Mapping[str, MarketOutcome],
) -> None:
    by_workflow: dict[str, set[str]] = defaultdict(set)
    for bid_id, bid in bids.items():
        by_workflow[bid.workflow_id or ""].add(bid_id)
    problems: list[str] = []
    for seen in events:
        event = seen.event
        if not event.kind.terminal or event.budget is None:
            continue
        budget = event.budget
        where = f"{event.workflow_id} ({event.kind.value}, events p{seen.partition}@{seen.offset})"
        if not isinstance(budget, dict) or not isinstance(budget.get("charges"), dict):
            problems.append(f"{where}: budget {budget!r} has no charges"[:300])
            continue
        verdict.budgets_checked += 1
        raw = budget["charges"]
        assert isinstance(raw, dict)
        charges = {b: c if type(c) is int else 0 for b, c in raw.items()}
        if odd := sorted(b for b, c in raw.items() if type(c) is not int):
            problems.append(f"{where}: charges that are not micro-credits: {odd}")
        for bid_id, charge in sorted(charges.items()):
            units, price = awards.get(bid_id, (0, 0))
            if charge != units * price:
                verdict.drift += abs(charge - units * price)
                problems.append(
                    f"{where}: {bid_id} charged {charge}, the ledger sold it for "
                    f"{units} x {price} = {units * price}"
                    + _race(withdrawn.get(bid_id), granted.get(bid_id))
                )
        spent, limit = budget.get("spent"), budget.get("limit")
        total = sum(charges.values())
        if type(spent) is not int or type(limit) is not int:
            problems.append(f"{where}: spent {spent!r} or limit {limit!r} is not micro-credits")
            continue
        if spent != total:
            verdict.drift += abs(spent - total)
            problems.append(f"{where}: spent {spent} is not the sum of its charges {total}")
        if spent > limit:
            problems.append(f"{where}: spent {spent} above the limit {limit}")
        # Holds still open at the end are bids the auctioneer had not answered yet (the
        # workflow withdrew them): never charged, and an award that came later was given
        # back unused. Every other bid of the workflow must have been settled.
        held = budget.get("held") or {}
        if not isinstance(held, dict) or set(held) & set(charges):
            problems.append(f"{where}: held {held!r} is not a set of unsettled bids"[:300])
            held = {}
        verdict.held_at_end += len(held)
        verdict.awarded_after_end += sum(1 for b in held if b in awards)
        unsettled = sorted(by_workflow.get(event.workflow_id, set()) - set(charges) - set(held))
        if unsettled:
            problems.append(f"{where}: bids never settled: {unsettled}")
    _listed(verdict, "budgets that do not reconcile with the ledger", problems)


def _race(withdraw: SeenBid | None, grant: MarketOutcome | None) -> str:
    """The evidence of a withdrawal that crossed the award, if there was one."""
    if withdraw is None or grant is None or grant.lease is None:
        return ""
    return (
        f" (its owner withdrew it: WITHDRAW p{withdraw.partition}@{withdraw.offset} at_ms "
        f"{withdraw.bid.at_ms}; granted in round {grant.round_no} of epoch "
        f"{grant.lease.epoch} at_ms {grant.at_ms})"
    )


def _record(round_: MarketRound) -> RoundRecord:
    record = round_.record
    assert isinstance(record, dict)
    return RoundRecord.from_json(record)


def _jain(values: Sequence[int]) -> float | None:
    squares = sum(x * x for x in values)
    return sum(values) ** 2 / (len(values) * squares) if squares else None


def check_market(
    items: Sequence[MarketItem],
    events: Iterable[SeenEvent],
    results: Sequence[TaskResult],
    bids: Sequence[SeenBid],
    outcomes: Sequence[MarketOutcome],
    rounds: Sequence[SeenRound],
    *,
    bands: Sequence[str],
    compare_medians: bool = False,
) -> MarketVerdict:
    verdict = MarketVerdict()
    for pool, capacity in POOLS.items():
        verdict.pools[pool] = PoolFigures(capacity)
    hold_results = [r for r in results if r.capability == "hold"]
    holds, unreadable = holds_of(hold_results)
    _listed(verdict, "hold results without readable leases", unreadable)
    _check_probe(verdict, holds)
    errors = Counter(r.error.type for r in hold_results if r.error is not None)
    verdict.stale_rejections = errors.get("StaleLease", 0)
    verdict.expired_rejections = errors.get("LeaseExpired", 0)
    verdict.tasks_run = len({r.task_id for r in hold_results if r.status is TaskStatus.SUCCEEDED})
    first, finals = _finals(verdict, bids, outcomes)
    _check_waits(verdict, first, finals, bands, compare_medians)
    granted = {
        b: o
        for b, found in finals.items()
        for o in found[:1]
        if o.kind is MarketOutcomeKind.GRANTED
    }
    units: dict[str, Counter[str]] = defaultdict(Counter)
    for outcome in granted.values():
        if outcome.lease is not None:
            units[outcome.resource][outcome.workflow_id] += len(outcome.lease.units)
    for pool, per_workflow in units.items():
        figures = verdict.pools.setdefault(pool, PoolFigures(POOLS.get(pool, 0)))
        figures.leases = sum(1 for o in granted.values() if o.resource == pool)
        figures.jain = _jain(list(per_workflow.values()))
    awards = _check_ledger(verdict, rounds, granted)
    withdrawn = {
        s.bid.bid_id: s for s in bids if s.bid.kind is MarketInputKind.WITHDRAW and s.bid.bid_id
    }
    _check_budgets(verdict, events, first, awards, withdrawn, granted)
    expected_tasks = sum(i.expected_tasks for i in items)
    if verdict.tasks_run < expected_tasks:
        verdict.notes.append(
            f"{verdict.tasks_run} hold tasks ran, {expected_tasks} expected by construction"
        )
    return verdict


def _listed(verdict: MarketVerdict, title: str, entries: Sequence[str], limit: int = 20) -> None:
    if entries:
        more = f" (+{len(entries) - limit} more)" if len(entries) > limit else ""
        verdict.violations.append(
            f"{title}: {len(entries)}{more}\n    " + "\n    ".join(entries[:limit])
        )
