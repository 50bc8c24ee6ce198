"""The demo's contended pool: a burst of GPU renders in two bands, and its market summary.

The burst is ``CONTENDED`` workflows (``scripts/workflows/gpu-render.yaml``) whose one
step holds a slot of the ``gpu`` pool, half from tenant ``default`` in band ``low`` and
half from tenant ``prod`` in band ``high``. The low band is submitted first, so arrival
order favours it; the market serves the higher band first anyway.

Every figure of the summary is read back from Kafka after the run, none is assumed: the
renders' outputs (which unit each held, from when to when), the bids on ``market.bids``
(when each went in), the grants on ``market.outcomes`` (when, at what price) and every
round on ``market.ledger``, cleared again here to check the hash chain.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fleet.errors import ConfigError, DecodeError
from fleet.kafka.client import FleetClient
from fleet.kafka.readback import partitions_of, records_to_end
from fleet.messages import (
    EventKind,
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    MarketOutcomeKind,
    MarketRound,
    Message,
    WorkflowEvent,
)
from orchestrator.admission import check_market
from orchestrator.market.ledger import ChainBroken, RoundRecord, replay
from orchestrator.market.policy import MarketPolicy, micro_to_credits
from orchestrator.spec import parse_spec

CONTENDED = 12
POOL = "gpu"
# (band, tenant) in submission order: the low band first, so first-come would favour it.
BURST_BANDS: tuple[tuple[str, str], ...] = (("low", "default"), ("high", "prod"))
READ_TIMEOUT_S = 60.0

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Contender:
    band: str
    tenant: str
    spec: dict[str, Any]


def build_burst(
    template: dict[str, Any], policy: MarketPolicy, market_file: Path, count: int = CONTENDED
) -> list[Contender]:
    """``count`` copies of ``template``, the first half in the first band of BURST_BANDS.

    Checked against the policy before anything is submitted, so a market file without the
    pool, the tenants or their bands stops the demo with the reason, not 12 rejections."""
    burst: list[Contender] = []
    for i in range(count):
        band, tenant = BURST_BANDS[i * len(BURST_BANDS) // count]
        spec = {**copy.deepcopy(template), "tenant": tenant, "priority": band}
        problems = check_market(parse_spec(spec), policy)
        if problems:
            reasons = "; ".join(f"{where}: {why}" for where, why in problems)
            raise ConfigError(
                f"the demo's contended burst does not fit the market file {market_file}: {reasons}"
            )
        burst.append(Contender(band, tenant, spec))
    return burst


@dataclass(frozen=True)
class BandFigures:
    band: str
    tenant: str
    workflows: int
    completed: int
    waits_ms: tuple[int, ...]  # submission -> first grant, one per granted workflow
    bid_waits_ms: tuple[int, ...]  # first bid -> first grant
    prices: tuple[int, ...]  # micro-credits per unit, one per grant
    spend: int  # micro-credits: unit price x units over the grants


@dataclass(frozen=True)
class MarketSummary:
    pool: str
    capacity: int
    bands: tuple[BandFigures, ...]  # highest band first
    max_per_unit: dict[int, int]  # unit -> most holders at once, from the outputs' held_ms
    max_overall: int
    held_ms: int  # slot time the renders held, summed over units
    span_ms: int  # from the burst's first bid to its last render's end
    spend: int  # micro-credits, from the grants
    ledger_spend: int  # micro-credits, from the awards of the ledger's rounds
    rounds: int
    chain_error: str | None  # None: replaying the ledger reproduced every hash

    def problems(self) -> list[str]:
        """What went wrong, in words; empty when the market kept every promise."""
        found = [
            f"unit {unit} had {n} holders at once"
            for unit, n in sorted(self.max_per_unit.items())
            if n > 1
        ]
        if self.max_overall > self.capacity:
            found.append(f"{self.max_overall} holders at once, capacity {self.capacity}")
        if self.chain_error is not None:
            found.append(f"ledger replay failed: {self.chain_error}")
        found += [
            f"{b.workflows - b.completed} {b.band}-band renders did not complete"
            for b in self.bands
            if b.completed < b.workflows
        ]
        return found


def max_concurrent(intervals: Iterable[tuple[int, int]]) -> int:
    """The most of the half-open intervals [start, end) that overlap at any instant."""
    # At equal times an end (-1) sorts before a start (+1): a handover is not an overlap.
    edges = sorted((t, step) for start, end in intervals for t, step in ((start, 1), (end, -1)))
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def summarize_market(
    *,
    burst: Mapping[str, Contender],
    events: Mapping[str, WorkflowEvent],
    bids: Iterable[MarketInput],
    outcomes: Iterable[MarketOutcome],
    rounds: Iterable[RoundRecord],
    policy: MarketPolicy,
) -> MarketSummary:
    """The burst's market figures from what the run wrote (pure: no Kafka here)."""
    first_bid: dict[str, int] = {}
    for bid in bids:
        workflow_id = bid.workflow_id or ""
        if workflow_id in burst and bid.kind is MarketInputKind.BID and bid.resource == POOL:
            first_bid[workflow_id] = min(bid.at_ms, first_bid.get(workflow_id, bid.at_ms))
    grants: dict[str, list[MarketOutcome]] = defaultdict(list)
    for outcome in outcomes:
        granted = outcome.kind is MarketOutcomeKind.GRANTED and outcome.resource == POOL
        if granted and outcome.lease is not None and outcome.workflow_id in burst:
            grants[outcome.workflow_id].append(outcome)

    holdings: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for workflow_id in burst:
        event = events.get(workflow_id)
        output = event.output if event is not None else None
        if event is None or event.kind is not EventKind.COMPLETED or not isinstance(output, dict):
            continue
        units, held = output.get("units"), output.get("held_ms")
        if not isinstance(units, list) or not isinstance(held, list) or len(held) != 2:
            continue
        start, end = held
        if isinstance(start, int) and isinstance(end, int):
            for unit in units:
                if isinstance(unit, int):
                    holdings[unit].append((start, end))

    ends = [end for held in holdings.values() for _, end in held]
    figures = [
        _band_figures(band, tenant, burst=burst, events=events, grants=grants, first_bid=first_bid)
        for band, tenant in sorted(BURST_BANDS, key=lambda bt: -policy.bands.index(bt[0]))
    ]
    records = list(rounds)
    chain_error = _replay_error(records)
    return MarketSummary(
        pool=POOL,
        capacity=policy.pools[POOL].capacity,
        bands=tuple(figures),
        max_per_unit={unit: max_concurrent(held) for unit, held in sorted(holdings.items())},
        max_overall=max_concurrent(i for held in holdings.values() for i in held),
        held_ms=sum(end - start for held in holdings.values() for start, end in held),
        span_ms=max(ends, default=0) - min(first_bid.values()) if first_bid and ends else 0,
        spend=sum(b.spend for b in figures),
        ledger_spend=sum(
            a.units * a.unit_price for r in records if r.resource == POOL for a in r.outcome.awards
        ),
        rounds=len(records),
        chain_error=chain_error,
    )


def _band_figures(
    band: str,
    tenant: str,
    *,
    burst: Mapping[str, Contender],
    events: Mapping[str, WorkflowEvent],
    grants: Mapping[str, list[MarketOutcome]],
    first_bid: Mapping[str, int],
) -> BandFigures:
    members = [w for w, c in burst.items() if c.band == band]
    waits, bid_waits, prices, spend = [], [], [], 0
    for workflow_id in members:
        granted = sorted(grants.get(workflow_id, []), key=lambda o: o.at_ms)
        if not granted:
            continue
        at_ms = granted[0].at_ms
        submitted = events[workflow_id].submitted_at_ms if workflow_id in events else None
        if submitted is not None:
            waits.append(at_ms - submitted)
        if workflow_id in first_bid:
            bid_waits.append(at_ms - first_bid[workflow_id])
        for outcome in granted:
            assert outcome.lease is not None
            prices.append(outcome.lease.unit_price)
            spend += outcome.lease.unit_price * len(outcome.lease.units)
    completed = sum(1 for w in members if w in events and events[w].kind is EventKind.COMPLETED)
    return BandFigures(
        band, tenant, len(members), completed, tuple(waits), tuple(bid_waits), tuple(prices), spend
    )


def _replay_error(records: Sequence[RoundRecord]) -> str | None:
    """Replay each pool's chain from genesis, in round order; None if every hash matches."""
    by_pool: dict[str, list[RoundRecord]] = defaultdict(list)
    for record in records:
        by_pool[record.resource].append(record)
    try:
        for chain in by_pool.values():
            replay(sorted(chain, key=lambda r: r.round_no))
    except ChainBroken as exc:
        return str(exc)
    return None


def read_burst_summary(
    client: FleetClient,
    burst: Mapping[str, Contender],
    events: Mapping[str, WorkflowEvent],
    policy: MarketPolicy,
) -> MarketSummary:
    """Read the market topics back to their ends now and summarize the burst."""
    topics = client.topics
    rounds = _decoded(client, topics.market_ledger, MarketRound)
    return summarize_market(
        burst=burst,
        events=events,
        bids=_decoded(client, topics.market_bids, MarketInput),
        outcomes=_decoded(client, topics.market_outcomes, MarketOutcome),
        rounds=[RoundRecord.from_json(r.record) for r in rounds if isinstance(r.record, dict)],
        policy=policy,
    )


def _decoded(
    client: FleetClient, topic: str, cls: type[M], timeout_s: float = READ_TIMEOUT_S
) -> list[M]:
    """Every committed record of ``topic`` up to its end as of this call that decodes as
    ``cls`` (fleet.kafka.readback); a BrokerError if that takes longer than ``timeout_s``."""
    partitions = partitions_of(client.clients, topic)
    deadline = time.monotonic() + timeout_s
    found: list[M] = []
    for record in records_to_end(client.clients, topic, partitions, deadline):
        try:
            found.append(client.codec.decode(record.value() or b"", cls))
        except DecodeError:
            continue  # another writer's record (or garbage): not the market's
    return found


def _ms(values: Sequence[int], how: str) -> str:
    if not values:
        return "-"
    figure = statistics.median(values) if how == "median" else max(values)
    return f"{figure:.0f} ms"


def format_market_summary(summary: MarketSummary) -> list[str]:
    """The summary as the demo prints it, a line each."""
    bands = summary.bands
    lines = [
        f"contended pool {summary.pool} (capacity {summary.capacity}): "
        f"{sum(b.workflows for b in bands)} render workflows, "
        f"{' and '.join(f'{b.workflows} {b.band}' for b in bands)}; "
        f"the {BURST_BANDS[0][0]} band submitted first",
        f"{'band':8}{'tenant':9}{'runs':>5}{'done':>6}{'wait p50':>10}{'wait max':>10}"
        f"{'bid->grant p50':>16}  {'prices paid (credits)':24}{'spend':>7}",
    ]
    for b in bands:
        prices = ", ".join(
            f"{micro_to_credits(p)} x{n}" for p, n in sorted(Counter(b.prices).items())
        )
        lines.append(
            f"{b.band:8}{b.tenant:9}{b.workflows:>5}{b.completed:>6}"
            f"{_ms(b.waits_ms, 'median'):>10}{_ms(b.waits_ms, 'max'):>10}"
            f"{_ms(b.bid_waits_ms, 'median'):>16}  {prices or '-':24}{micro_to_credits(b.spend):>7}"
        )
    per_unit = ", ".join(f"unit {u}: {n}" for u, n in summary.max_per_unit.items())
    busy = summary.held_ms / (summary.capacity * summary.span_ms) if summary.span_ms else 0.0
    chain = "hash chain OK" if summary.chain_error is None else summary.chain_error
    lines += [
        f"max concurrent holders (from the renders' held_ms): {per_unit or 'none'}; "
        f"overall {summary.max_overall} (capacity {summary.capacity})",
        f"slots held {summary.held_ms / 1000:.1f} s in all, over the "
        f"{summary.span_ms / 1000:.1f} s from the first bid to the last render's end "
        f"({busy:.0%} of {summary.capacity} slots' time)",
        f"total spend {micro_to_credits(summary.spend)} credits "
        f"(the ledger's awards: {micro_to_credits(summary.ledger_spend)})",
        f"ledger replay: {summary.rounds} rounds, {chain}",
    ]
    if len(bands) >= 2 and bands[0].waits_ms and bands[-1].waits_ms:
        top, bottom = bands[0], bands[-1]
        top_p50, bottom_p50 = statistics.median(top.waits_ms), statistics.median(bottom.waits_ms)
        verdict = "lower than" if top_p50 < bottom_p50 else "NOT lower than"
        lines.append(
            f"median wait of the {top.band} band ({top_p50:.0f} ms) is {verdict} "
            f"the {bottom.band} band's ({bottom_p50:.0f} ms)"
        )
    return lines + [f"market problem: {problem}" for problem in summary.problems()]
