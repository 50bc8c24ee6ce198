"""The demo: its sample mix plus the contended GPU burst, and the market summary.

The real-broker test runs the demo's own workload (a smaller mix, the full burst) and
checks the facts its market summary reads back from Kafka. The unit tests feed the
summary made-up records, to show it would catch what it claims to check.
"""

from __future__ import annotations

import dataclasses
import statistics
import uuid
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.messages import (
    EventKind,
    LeaseGrant,
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    MarketOutcomeKind,
    WorkflowEvent,
)
from fleet.settings import Settings
from fleetctl.demo import run_workload
from fleetctl.demo_market import (
    BURST_BANDS,
    CONTENDED,
    POOL,
    Contender,
    MarketSummary,
    build_burst,
    format_market_summary,
    max_concurrent,
    summarize_market,
)
from orchestrator.market.clearing import Bid
from orchestrator.market.ledger import GENESIS, RoundRecord, clear_round
from orchestrator.market.policy import MarketPolicy

CREDIT = 1_000_000
MARKET_YAML = Path(__file__).resolve().parents[2] / "market.yaml"
TEMPLATE = {
    "name": "gpu-render",
    "steps": [
        {"id": "render", "capability": "render", "resources": {"gpu": 1}, "input": {}},
    ],
}


@pytest.mark.kafka
def test_the_demo_serves_the_high_band_first_within_capacity(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"demo-{uuid.uuid4().hex[:8]}.",
        }
    )
    run = run_workload(settings, 20, tmp_path / "logs")
    printed = capsys.readouterr().out
    assert run.exit_code == 0, printed
    assert len(run.outcomes) == 20 + CONTENDED
    market = run.market
    assert market is not None
    assert market.problems() == [], printed
    # Every contended render completed, each granted once.
    assert [(b.band, b.workflows, b.completed) for b in market.bands] == [
        ("high", 6, 6),
        ("low", 6, 6),
    ]
    assert all(len(b.waits_ms) == len(b.prices) == 6 for b in market.bands)
    # One holder per unit at a time, never more holders than the pool's 2 units.
    assert market.capacity == 2
    assert set(market.max_per_unit.values()) == {1}
    assert len(market.max_per_unit) <= 2
    assert 1 <= market.max_overall <= 2
    # The ledger replays, and it charged what the grants say.
    assert market.chain_error is None and market.rounds > 0
    assert market.spend == market.ledger_spend > 0
    high, low = market.bands
    assert statistics.median(high.waits_ms) < statistics.median(low.waits_ms), printed
    assert f"ledger replay: {market.rounds} rounds, hash chain OK" in printed
    assert "lower than the low band's" in printed and "NOT" not in printed


@pytest.mark.unit
def test_max_concurrent_counts_overlaps_not_handovers() -> None:
    assert max_concurrent([]) == 0
    assert max_concurrent([(0, 10), (10, 20), (20, 30)]) == 1  # back to back
    assert max_concurrent([(0, 10), (5, 20), (9, 12), (19, 25)]) == 3


@pytest.mark.unit
def test_the_burst_splits_into_the_two_bands_low_first() -> None:
    policy = MarketPolicy.load(MARKET_YAML)
    burst = build_burst(TEMPLATE, policy, MARKET_YAML)
    assert [(c.band, c.tenant) for c in burst] == [BURST_BANDS[0]] * 6 + [BURST_BANDS[1]] * 6
    assert all(c.spec["priority"] == c.band and c.spec["tenant"] == c.tenant for c in burst)
    assert "tenant" not in TEMPLATE  # copies, not the template itself


@pytest.mark.unit
def test_a_market_file_the_burst_cannot_use_stops_the_demo(tmp_path: Path) -> None:
    market_file = tmp_path / "market.yaml"
    market_file.write_text(
        "pools: {gpu: {capacity: 2, reserve: 1, lease_ttl_ms: 1000}}\n"
        "bands: [low, high]\n"
        "tenants: {default: {bands: [low], default_max_price: 2, budget_default: 9}}\n"
    )
    with pytest.raises(ConfigError, match=r"market\.yaml.*prod"):
        build_burst(TEMPLATE, MarketPolicy.load(market_file), market_file)


def _made_up_run(
    overlap: bool,
) -> tuple[dict[str, Contender], dict[str, WorkflowEvent], list[MarketOutcome], list[RoundRecord]]:
    """Four renders on units 0 and 1 in turn, 100 ms each; ``overlap`` moves one early."""
    burst, events, outcomes = {}, {}, []
    for i, (band, tenant) in enumerate([BURST_BANDS[1]] * 2 + [BURST_BANDS[0]] * 2):
        workflow_id = f"wf-{i}"
        burst[workflow_id] = Contender(band, tenant, TEMPLATE)
        start = 1_000 + 100 * (i // 2) - (50 if overlap and i == 2 else 0)
        lease = LeaseGrant(
            resource=POOL,
            lease_id=f"l{i}",
            units=[i % 2],
            epoch=1,
            seq=i,
            unit_price=CREDIT,
            expires_at_ms=9_999,
        )
        outcomes.append(
            MarketOutcome(
                kind=MarketOutcomeKind.GRANTED,
                resource=POOL,
                bid_id=f"b{i}",
                workflow_id=workflow_id,
                task_id=f"t{i}",
                lease=lease,
                at_ms=start,
            )
        )
        events[workflow_id] = WorkflowEvent(
            workflow_id=workflow_id,
            kind=EventKind.COMPLETED,
            output={"units": [i % 2], "held_ms": [start, start + 100]},
            submitted_at_ms=900,
            at_ms=start + 150,
        )
    rounds, prev = [], GENESIS
    for n in range(2):
        bids = [
            Bid(f"b{2 * n + k}", offset=2 * n + k, band=2 - 2 * n, price=CREDIT) for k in (0, 1)
        ]
        record = clear_round(
            resource=POOL,
            round_no=n,
            epoch=1,
            offsets=(2 * n, 2 * n + 1),
            closed_at_ms=1_000 + 100 * n,
            free=2,
            pricing=MarketPolicy.load(MARKET_YAML).pools[POOL].pricing,
            bids=bids,
            prev_hash=prev,
        )
        rounds.append(record)
        prev = record.hash
    return burst, events, outcomes, rounds


def _summary(overlap: bool = False, rounds: list[RoundRecord] | None = None) -> MarketSummary:
    burst, events, outcomes, made_up = _made_up_run(overlap)
    bids = [
        MarketInput(kind=MarketInputKind.BID, resource=POOL, workflow_id=w, at_ms=950)
        for w in burst
    ]
    return summarize_market(
        burst=burst,
        events=events,
        bids=bids,
        outcomes=outcomes,
        rounds=made_up if rounds is None else rounds,
        policy=MarketPolicy.load(MARKET_YAML),
    )


@pytest.mark.unit
def test_the_summary_reports_waits_prices_and_a_clean_run() -> None:
    summary = _summary()
    assert summary.problems() == []
    high, low = summary.bands
    assert (high.band, high.waits_ms, high.bid_waits_ms) == ("high", (100, 100), (50, 50))
    assert low.waits_ms == (200, 200) and low.prices == (CREDIT, CREDIT)
    assert summary.max_per_unit == {0: 1, 1: 1} and summary.max_overall == 2
    assert (summary.held_ms, summary.span_ms) == (400, 250)  # bids at 950, last end 1200
    assert summary.rounds == 2 and summary.spend == summary.ledger_spend == 4 * CREDIT
    lines = format_market_summary(summary)
    assert "ledger replay: 2 rounds, hash chain OK" in lines
    assert (
        lines[-1] == "median wait of the high band (100 ms) is lower than the low band's (200 ms)"
    )


@pytest.mark.unit
def test_the_summary_catches_a_unit_held_twice_and_a_broken_chain() -> None:
    overlapping = _summary(overlap=True)
    assert overlapping.max_per_unit[0] == 2 and overlapping.max_overall == 3
    assert overlapping.problems() == [
        "unit 0 had 2 holders at once",
        "3 holders at once, capacity 2",
    ]
    _, _, _, rounds = _made_up_run(overlap=False)
    tampered = [rounds[0], dataclasses.replace(rounds[1], free=1)]  # a unit taken away
    broken = _summary(rounds=tampered)
    assert broken.chain_error is not None and "round 1 of gpu" in broken.chain_error
    assert f"ledger replay: 2 rounds, {broken.chain_error}" in format_market_summary(broken)
