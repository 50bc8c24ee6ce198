"""The market's operator commands on a real broker, against a running orchestrator and
worker: `fleet market` shows the pool, `fleet market capacity` changes what the next
round sells, `fleet market revoke` ends a lease in use, and `fleet budget top-up` lets a
workflow afford a step its budget could not.

The tests share one fleet and run in file order: each leaves the pool idle.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from confluent_kafka import TopicPartition

from fleet.kafka import KafkaClients
from fleet.messages import EventKind
from fleet.settings import Settings
from fleetctl import market_view
from fleetctl.market_view import PoolView, read_market
from orchestrator.market.policy import MarketPolicy
from tests.integration.market_fleet import CREDIT, market_fleet
from tests.integration.test_workflows import Fleet

pytestmark = pytest.mark.kafka


T = TypeVar("T")


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with market_fleet(kafka_bootstrap, tmp_path_factory.mktemp("market-cli"), "mc") as running:
        yield running


def _render(*delays_ms: int, **workflow: Any) -> dict[str, Any]:
    """A sequence of GPU steps, each holding one unit for its delay."""
    steps = [
        {
            "id": f"r{n}",
            "capability": "render",
            "resources": {"gpu": 1},
            "input": {"delay_ms": delay},
            "needs": [f"r{n - 1}"] if n else [],
        }
        for n, delay in enumerate(delays_ms)
    ]
    return {
        "name": "render",
        "steps": steps,
        "output": f"$.steps.r{len(steps) - 1}.output",
        **workflow,
    }


def _until(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.3)


def _gpu(fleet: Fleet) -> PoolView:
    """The gpu line as `fleet market` reads it, in-process (polling without a CLI start)."""
    report = read_market(fleet.settings, MarketPolicy.load(fleet.settings.market_file), 20)
    (view,) = [v for v in report.views if v.pool == "gpu"]
    return view


def _gpu_json(fleet: Fleet) -> dict[str, Any]:
    done = fleet.cli("market", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["warnings"] == []
    (pool,) = [p for p in doc["pools"] if p["pool"] == "gpu"]
    return pool  # type: ignore[no-any-return]


def _state_records(settings: Settings, workflow_id: str) -> list[dict[str, Any]]:
    """Every committed changelog record of one workflow, oldest first."""
    topic = f"{settings.topic_prefix}orchestrator.state"
    clients = KafkaClients(settings, settings.bootstrap_servers or "", role="test")
    consumer = clients.consumer(f"read-{uuid.uuid4().hex}")
    partitions = clients.admin().list_topics(topic=topic, timeout=10).topics[topic].partitions
    tps = [TopicPartition(topic, p) for p in partitions]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
    tps = [TopicPartition(topic, tp.partition, 0) for tp in tps if ends[tp.partition] > 0]
    consumer.assign(tps)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in consumer.consume(500, timeout=0.2):
            value = record.value()
            if not record.error() and record.key() == workflow_id.encode() and value:
                found.append(json.loads(value))
        if all(tp.offset >= ends[tp.partition] for tp in consumer.position(tps)):
            break
    consumer.close()
    return found


def _unit(output: object) -> int:
    """The unit a render held (its output names it)."""
    assert isinstance(output, dict) and isinstance(output["units"], list)
    return int(output["units"][0])


def _idle_book(view: PoolView) -> bool:
    return view.epoch is not None and view.leased == 0


def test_fleet_market_shows_the_pool_from_policy_then_from_its_book(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _gpu_json(fleet)  # no input yet: no book, the configured capacity
    assert (before["capacity"], before["leased"], before["epoch"]) == (2, 0, None)
    assert before["queue"] == {"low": 0, "high": 0}

    (event,) = fleet.run_many([_render(50)])
    assert event.kind is EventKind.COMPLETED, event.error
    # The release reaches the book after the result; the snapshot follows it.
    _until(lambda: _idle_book(_gpu(fleet)) or None, 30, "a book with the unit released")
    after = _gpu_json(fleet)
    assert after["capacity"] == 2 and after["leased"] == 0 and after["free"] == 2
    assert after["epoch"] >= 1 and after["round_no"] >= 1
    assert after["last_price"] == "1" and after["last_price_micro"] == CREDIT  # alone: reserve
    assert after["queue"] == {"low": 0, "high": 0} and after["oldest_wait_ms"] is None

    # The price came from the ledger (no lease is left to tell it); looking back one
    # record at a time, then 4, 16, ... finds the same round.
    monkeypatch.setattr(market_view, "LEDGER_FIRST_WINDOW", 1)
    assert _gpu(fleet).last_price == CREDIT

    table = fleet.cli("market")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert header.split()[:3] == ["POOL", "CAPACITY", "LEASED"]
    assert line.split()[:5] == ["gpu", "2", "0", "0/0", "1"]


def test_capacity_takes_effect_at_the_next_round(fleet: Fleet) -> None:
    done = fleet.cli("market", "capacity", "gpu", "3")
    assert done.returncode == 0, done.stderr
    _until(lambda: _gpu(fleet).capacity == 3 or None, 30, "capacity 3 in the book")
    shown = _gpu_json(fleet)
    assert (shown["capacity"], shown["free"]) == (3, 3)
    # Three renders at once now hold three different units: unit 2 exists.
    events = fleet.run_many([_render(3_000) for _ in range(3)])
    assert [e.kind for e in events] == [EventKind.COMPLETED] * 3, [e.error for e in events]
    units = sorted(_unit(e.output) for e in events)
    assert units == [0, 1, 2]

    refused = fleet.cli("market", "capacity", "tpu", "1")
    assert refused.returncode == 2 and "unknown pool 'tpu'" in refused.stderr


def test_revoke_ends_a_lease_in_use(fleet: Fleet) -> None:
    consumer = fleet.client.event_consumer(from_beginning=False)
    try:
        workflow_id = fleet.client.submit(_render(15_000))  # revoked long before
        _until(lambda: _gpu(fleet).leased == 1 or None, 30, "the render holds a unit")
        done = fleet.cli("market", "revoke", "gpu")
        assert done.returncode == 0, done.stderr
        assert "every lease on gpu" in done.stdout
        outcome = fleet.client.wait(consumer, [workflow_id], 30).get(workflow_id)
    finally:
        consumer.close()
    assert outcome is not None, "no terminal event after the revocation"
    assert outcome.kind is EventKind.FAILED and outcome.error is not None
    assert outcome.error.type == "LeaseEnded" and "revoked" in outcome.error.message
    _until(lambda: _gpu(fleet).leased == 0 or None, 30, "the revoked unit free")


def test_a_top_up_lets_a_workflow_afford_its_second_step(fleet: Fleet) -> None:
    # 3.5 credits: the first step holds 3 and pays the reserve, 1; the second needs a
    # hold of 3 and only 2.5 is left.
    (short,) = fleet.run_many([_render(10, 10, budget="3.5")])
    assert short.kind is EventKind.FAILED and short.error is not None
    assert (short.error.type, short.error.step_id) == ("BudgetExhausted", "r1")

    consumer = fleet.client.event_consumer(from_beginning=False)
    try:
        # The first step holds its unit long enough for the CLI to start and send the
        # top-up; the request follows the submission on the same partition.
        workflow_id = fleet.client.submit(_render(6_000, 10, budget="3.5"))
        done = fleet.cli("budget", "top-up", workflow_id, "1")
        assert done.returncode == 0, done.stderr
        top_up_id = done.stdout.strip()
        # Sent again with the same id (a retry): applied once.
        assert fleet.client.top_up(workflow_id, CREDIT, top_up_id) == top_up_id
        outcome = fleet.client.wait(consumer, [workflow_id], 60).get(workflow_id)
    finally:
        consumer.close()
    assert outcome is not None and outcome.kind is EventKind.COMPLETED, outcome

    budgets = [r["budget"] for r in _state_records(fleet.settings, workflow_id) if "budget" in r]
    assert {b["limit"] for b in budgets} == {3_500_000, 4_500_000}
    assert budgets[-1]["top_ups"] == {top_up_id: CREDIT}
    assert budgets[-1]["spent"] == 2 * CREDIT  # two lone bids at the reserve
