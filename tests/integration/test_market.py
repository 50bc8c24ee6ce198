"""The market end to end on a real broker: orchestrator, auctioneer and a worker.

Workflows whose steps need a GPU slot from a pool of 2 run only with a lease, never more
than 2 at once, pay from their budgets, and the ledger replays to the same hash chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.codec import Codec, SchemaStore
from fleet.kafka import KafkaClients
from fleet.kafka.readback import partitions_of, records_to_end
from fleet.messages import EventKind, MarketOutcome, MarketOutcomeKind, MarketRound
from fleet.settings import Settings
from orchestrator.market.ledger import RoundRecord, replay
from tests.integration.market_fleet import CREDIT, market_fleet
from tests.integration.test_workflows import Fleet

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with market_fleet(kafka_bootstrap, tmp_path_factory.mktemp("market"), "mk") as running:
        yield running


def _render(delay_ms: int, **workflow: Any) -> dict[str, Any]:
    return {
        "name": "render",
        "steps": [
            {
                "id": "render",
                "capability": "render",
                "resources": {"gpu": 1},
                "input": {"delay_ms": delay_ms},
            }
        ],
        "output": "$.steps.render.output",
        **workflow,
    }


def _read(settings: Settings, topic: str) -> list[bytes]:
    """Every committed record of ``topic``, read up to its current end."""
    clients = KafkaClients(settings, settings.bootstrap_servers or "", role="test")
    partitions = partitions_of(clients, topic)
    records = records_to_end(clients, topic, partitions, time.monotonic() + 60)
    return [r.value() or b"" for r in records]


def _outcomes_after_releases(
    settings: Settings, codec: Codec, topic: str, leases: int
) -> list[MarketOutcome]:
    """The market's outcomes once ``leases`` leases have ended, or after 30 s.

    A lease's release is an input the auctioneer handles after the workflow completed,
    so its ENDED outcome can still be on its way when the last COMPLETED event is read."""
    deadline = time.monotonic() + 30
    while True:
        outcomes = [codec.decode(v, MarketOutcome) for v in _read(settings, topic)]
        ended = sum(o.kind is MarketOutcomeKind.ENDED for o in outcomes)
        if ended >= leases or time.monotonic() > deadline:
            return outcomes
        time.sleep(0.5)


def test_contended_gpu_work_runs_within_capacity_pays_and_replays(fleet: Fleet) -> None:
    events = fleet.run_many([_render(300) for _ in range(8)])
    assert [e.kind for e in events] == [EventKind.COMPLETED] * 8, [e.error for e in events]
    outputs = [e.output for e in events]
    assert all(isinstance(o, dict) for o in outputs)
    held = [(o["units"][0], o["held_ms"][0], o["held_ms"][1]) for o in outputs]  # type: ignore[index]
    # Never more than the pool's 2 units at once, and never one unit twice at once.
    for unit, start, end in held:
        overlapping = [u for u, s, e in held if s < end and start < e]
        assert len(overlapping) <= 2
        assert overlapping.count(unit) == 1
    tokens = sorted(tuple(o["token"]) for o in outputs)  # type: ignore[index]
    assert len(set(tokens)) == 8  # one lease each

    codec = Codec(SchemaStore(fleet.settings.schemas_dir))
    topics = fleet.client.topics
    outcomes = _outcomes_after_releases(fleet.settings, codec, topics.market_outcomes, 8)
    granted = [o for o in outcomes if o.kind is MarketOutcomeKind.GRANTED]
    assert len(granted) == 8
    released = [o for o in outcomes if o.kind is MarketOutcomeKind.ENDED]
    assert sorted(o.reason or "" for o in released) == ["released"] * 8
    # Alone with a free unit: the reserve. Cleared against waiting rivals (all bidding the
    # tenant's 3 credits): the highest losing bid, 3.
    prices = [o.lease.unit_price for o in granted if o.lease is not None]
    assert set(prices) <= {CREDIT, 3 * CREDIT} and 3 * CREDIT in prices and CREDIT in prices

    rounds = [codec.decode(v, MarketRound) for v in _read(fleet.settings, topics.market_ledger)]
    records = sorted(
        (RoundRecord.from_json(r.record) for r in rounds),  # type: ignore[arg-type]
        key=lambda r: r.round_no,
    )
    assert records and replay(records) == records[-1].hash
    assert sum(a.units for r in records for a in r.outcome.awards) == 8

    metrics = fleet.metrics()
    gpu = (("pool", "gpu"),)
    assert 0.0 <= metrics[("fleet_market_fill_rate", gpu)] <= 1.0
    assert metrics[("fleet_market_leased_units", gpu)] == 0  # all released
    assert metrics[("fleet_market_capacity_units", gpu)] == 2
    awarded = sum(
        v
        for (name, labels), v in metrics.items()
        if name == "fleet_market_time_to_award_seconds_count" and ("pool", "gpu") in labels
    )
    assert awarded == 8
    assert 0.0 < metrics[("fleet_market_jain_fairness", gpu)] <= 1.0


def test_a_budget_too_small_for_the_bid_fails_with_budget_exhausted(fleet: Fleet) -> None:
    (event,) = fleet.run_many([_render(10, budget="2.5")])  # 3 credits per unit > 2.5
    assert event.kind is EventKind.FAILED and event.error is not None
    assert event.error.type == "BudgetExhausted"


def test_a_band_the_tenant_may_not_use_is_rejected(fleet: Fleet, tmp_path: Path) -> None:
    (event,) = fleet.run_many([_render(10, priority="urgent")])
    assert event.kind is EventKind.REJECTED and event.error is not None
    assert "urgent" in event.error.message
