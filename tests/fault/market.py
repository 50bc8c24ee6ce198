"""The market fault run (issue 4): what differs from issue 3's run, and its summary.

The live run (``tests.fault.live``) does the rest as for every preset: broker, fleet,
fault thread, watcher, read-back and issue 3's checks. With ``FaultConfig.market`` set it
asks a :class:`MarketRun` for the policy file (``FLEET_MARKET_FILE`` of every process),
the workload (contended ``hold`` tasks, ``tests.fault.market_workload``), the extra
topics to read back (bids, outcomes, ledger, task results) and the market checks
(``tests.fault.market_checker``). :func:`format_market_summary` prints the figures.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from fleet.codec import Codec
from fleet.errors import DecodeError
from fleet.messages import (
    EventKind,
    MarketInput,
    MarketOutcome,
    MarketRound,
    TaskAssigned,
    TaskResult,
)
from fleet.topology import Topics
from orchestrator.market.policy import MICRO, MarketPolicy
from tests.fault.checker import SeenEvent, SeenLetter, Verdict, check_run
from tests.fault.config import FaultConfig
from tests.fault.garbage import Garbage
from tests.fault.market_checker import MarketVerdict, SeenBid, SeenRound, check_market
from tests.fault.market_workload import (
    MarketItem,
    build_market_workload,
    expected_for,
    output_problems,
    write_policy,
)
from tests.fault.plan import FaultKind
from tests.fault.readback import RawRecord
from tests.fault.summary import FaultSummary, format_summary
from tests.fault.workload import WorkItem


@dataclass
class MarketReadBack:
    bids: list[SeenBid] = field(default_factory=list)
    outcomes: list[MarketOutcome] = field(default_factory=list)
    rounds: list[SeenRound] = field(default_factory=list)
    results: list[TaskResult] = field(default_factory=list)
    undecodable: Counter[str] = field(default_factory=Counter)


class MarketRun:
    """The market run's parts of one live run."""

    def __init__(self, config: FaultConfig, run_dir: Path) -> None:
        self.config = config
        self.policy_file = write_policy(run_dir)
        self.policy = MarketPolicy.load(self.policy_file)  # fails here, not in the fleet
        self.items: list[MarketItem] = []
        self.verdict: MarketVerdict | None = None

    def summary(self, base: FaultSummary) -> MarketSummary:
        return MarketSummary(
            base, self.verdict, len(self.items), sum(i.expected_tasks for i in self.items)
        )

    def workload(self, tag: str) -> list[WorkItem]:
        self.items = build_market_workload(self.config.workflows, self.config.seed, tag)
        return [item.work_item() for item in self.items]

    def shapes(self, submitted: Iterable[str]) -> dict[str, int]:
        ids = set(submitted)
        return dict(Counter(f"{i.shape.value}" for i in self.items if i.workflow_id in ids))

    def read_back(
        self, read: Callable[[str], list[RawRecord]], topics: Topics, codec: Codec
    ) -> MarketReadBack:
        back = MarketReadBack()
        for r in read(topics.market_bids):
            if (bid := _decode(codec, r, MarketInput, back)) is not None:
                back.bids.append(SeenBid(r.partition, r.offset, bid))
        for r in read(topics.market_outcomes):
            if (outcome := _decode(codec, r, MarketOutcome, back)) is not None:
                back.outcomes.append(outcome)
        for r in read(topics.market_ledger):
            if (round_ := _decode(codec, r, MarketRound, back)) is not None:
                back.rounds.append(SeenRound(r.partition, r.offset, round_))
        for r in read(topics.results):
            if (result := _decode(codec, r, TaskResult, back)) is not None:
                back.results.append(result)
        self._dump(back)
        return back

    def _dump(self, back: MarketReadBack) -> None:
        """What was read back, as JSON lines in the run dir: the evidence behind a verdict."""
        with (self.policy_file.parent / "market-readback.jsonl").open("w") as out:
            for seen in back.bids:
                out.write(_line("bid", seen.partition, seen.offset, seen.bid))
            for outcome in back.outcomes:
                out.write(_line("outcome", None, None, outcome))
            for seen_round in back.rounds:
                out.write(_line("round", seen_round.partition, seen_round.offset, seen_round.round))
            for result in back.results:
                out.write(_line("result", None, None, result))

    def check(
        self,
        back: MarketReadBack,
        events: Sequence[SeenEvent],
        tasks: Sequence[TaskAssigned],
        letters: Sequence[SeenLetter],
        garbage: Sequence[Garbage],
        *,
        uncertain: Iterable[str],
        eos_topics: Iterable[str],
    ) -> Verdict:
        """Issue 3's checks with each item's expectation filled in from its construction,
        then the market's; one verdict."""
        first: dict[str, SeenEvent] = {}
        for seen in events:
            if seen.event.kind.terminal:
                known = first.get(seen.event.workflow_id)
                if known is None or (seen.event.at_ms, seen.offset) < (
                    known.event.at_ms,
                    known.offset,
                ):
                    first[seen.event.workflow_id] = seen
        work: list[WorkItem] = []
        shapes_wrong: list[str] = []
        for item in self.items:
            base = item.work_item()
            end = first.get(item.workflow_id)
            if end is None:
                work.append(base)
                continue
            work.append(replace(base, expected=expected_for(item, end.event)))
            if end.event.kind is EventKind.COMPLETED and not item.fails_at:
                problems = output_problems(item, end.event.output)
                shapes_wrong += [f"{item.workflow_id}: {p}" for p in problems]
        verdict = check_run(
            work,
            events,
            tasks,
            letters,
            garbage,
            uncertain=uncertain,
            eos_topics=eos_topics,
        )
        if shapes_wrong:
            verdict.violations.append(
                f"outputs that break their construction: {len(shapes_wrong)}\n    "
                + "\n    ".join(shapes_wrong[:20])
            )
        for topic, n in sorted(back.undecodable.items()):
            verdict.violations.append(f"{n} undecodable records on {topic}")
        market = check_market(
            self.items,
            events,
            back.results,
            back.bids,
            back.outcomes,
            back.rounds,
            bands=self.policy.bands,
            compare_medians=self.config.compare_band_medians,
        )
        self.verdict = market
        verdict.violations += market.violations
        verdict.notes += market.notes
        return verdict


M = TypeVar("M", MarketInput, MarketOutcome, MarketRound, TaskResult)


def _decode(codec: Codec, record: RawRecord, kind: type[M], back: MarketReadBack) -> M | None:
    try:
        return codec.decode(record.value, kind)
    except DecodeError:
        back.undecodable[kind.__name__] += 1
        return None


def _line(kind: str, partition: int | None, offset: int | None, message: BaseModel) -> str:
    record = {"topic": kind, "p": partition, "o": offset, **message.model_dump(mode="json")}
    return json.dumps(record, separators=(",", ":")) + "\n"


# -- the summary ---------------------------------------------------------------------------


@dataclass
class MarketSummary:
    """Issue 3's summary of the run, and the market's figures."""

    base: FaultSummary
    market: MarketVerdict | None
    items: int
    tasks_expected: int

    @property
    def ok(self) -> bool:
        return self.base.ok and self.market is not None


def _pct(values: Sequence[int], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000:.2f}"


def format_market_summary(s: MarketSummary) -> str:
    lines = [format_summary(s.base)]
    m = s.market
    if m is None:
        return "\n".join([*lines, "market       (no market check: the run did not finish)"])
    kills = s.base.faults.get(FaultKind.KILL_ORCHESTRATOR.value, 0)
    worker_kills = s.base.faults.get(FaultKind.KILL_WORKER.value, 0)
    lines += [
        f"market       {s.items} workflows; hold tasks run {m.tasks_run} "
        f"(by construction {s.tasks_expected}); orchestrator kills {kills}, "
        f"worker kills {worker_kills}, restarts {s.base.restarts}",
        f"  bids       {m.bids}; outcomes "
        + ", ".join(f"{k} {v}" for k, v in sorted(m.outcomes.items()))
        + f"; waited >= 1 round: {m.waited_bids}",
        f"  {'pool':6}{'capacity':>9}{'max held':>10}{'holders/unit':>14}"
        f"{'leases':>8}{'rounds':>8}{'Jain':>7}",
    ]
    for pool, f in sorted(m.pools.items()):
        jain = "-" if f.jain is None else f"{f.jain:.3f}"
        lines.append(
            f"  {pool:6}{f.capacity:>9}{f.max_units_held:>10}{f.max_holders_per_unit:>14}"
            f"{f.leases:>8}{f.rounds:>8}{jain:>7}"
        )
    for band, waits in m.waits_ms.items():
        median = f"{statistics.median(waits) / 1000:.2f}" if waits else "-"
        lines.append(
            f"  wait {band:5} p50 {median} s  p95 {_pct(waits, 0.95)} s  "
            f"max {_pct(waits, 1.0)} s  ({len(waits)} granted)"
        )
    lines += [
        f"  starvation low-band bids not served: {m.low_unserved} "
        f"(withdrawn by their owner: {m.low_withdrawn})",
        f"  fencing    stale tokens refused by the guards: {m.stale_rejections}, "
        f"expired leases refused: {m.expired_rejections}",
        f"  budgets    {m.budgets_checked} reconciled, drift {m.drift} micro-credits; "
        f"ledger revenue {m.revenue / MICRO:.2f} credits; bids unanswered at their "
        f"workflow's end {m.held_at_end} (awarded anyway, given back: {m.awarded_after_end})",
        f"  ledger     {m.rounds_replayed} rounds replayed to the recorded hash chain",
    ]
    return "\n".join(lines)
