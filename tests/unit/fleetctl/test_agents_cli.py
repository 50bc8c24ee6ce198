"""``fleet agents`` without a broker: its arguments, its table, and which card it shows."""

from __future__ import annotations

import pytest

from fleet.agent_messages import AgentCard, AgentHeartbeat, CapabilityVersion
from fleet.liveness import AgentView
from fleetctl.cli import resolve
from fleetctl.commands.agents import agents_table, pick_card, version_key

pytestmark = pytest.mark.unit


def heartbeat(agent_id: str, at_ms: int, **fields: object) -> AgentHeartbeat:
    values: dict[str, object] = {
        "agent_id": agent_id,
        "worker_id": "h-1",
        "status": "serving",
        "capabilities": [CapabilityVersion(capability="classify", version="2.1.0")],
        "in_flight": 3,
        "capacity": 8,
        "completed": 0,
        "failed": 0,
        "window_completed": 0,
        "window_failed": 0,
        "window_s": 60.0,
        "heartbeat_s": 2.0,
        "seq": 1,
        "started_at_ms": 0,
        "at_ms": at_ms,
    }
    values.update(fields)
    return AgentHeartbeat.model_validate(values)


def card(agent_id: str, version: str, published_at_ms: int = 0) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        capability="classify",
        version=version,
        card={"name": "classify", "version": version},
        published_at_ms=published_at_ms,
    )


def test_the_commands_parse() -> None:
    assert resolve(["agents", "--capability", "classify", "--json"]).params["as_json"]
    invocation = resolve(["agents", "card", "classify", "--version", "2.1.0"])
    assert invocation.path == ("agents", "card")
    assert invocation.params["version"] == "2.1.0"
    worker = resolve(["worker", "--app", "m:app", "--agent-id", "pod-1", "--region", "eu"])
    assert (worker.params["agent_id"], worker.params["region"]) == ("pod-1", "eu")


def test_versions_order_as_numbers() -> None:
    assert version_key("2.10.0") > version_key("2.9.1") > version_key("2.9.0")
    assert version_key("0.0.0") < version_key("1.0.0-rc1")


def test_a_live_agents_card_first_then_the_highest_version() -> None:
    view = AgentView()
    view.apply(heartbeat("live-0", at_ms=100_000))
    view.apply(heartbeat("dead-0", at_ms=0))
    cards = [card("dead-0", "3.0.0"), card("live-0", "2.1.0"), card("gone-0", "9.0.0")]
    chosen = pick_card(cards, view, now_ms=100_000)
    assert chosen is not None and chosen.agent_id == "live-0"
    assert pick_card([card("a", "1.0.0", 5), card("b", "1.0.0", 9)], view, 100_000) == card(
        "b", "1.0.0", 9
    )
    assert pick_card([], view, 0) is None


def test_the_table_shows_load_age_errors_and_latency() -> None:
    view = AgentView()
    view.apply(heartbeat("a-0", at_ms=10_000, window_completed=3, window_failed=1, p95_ms=41.6))
    view.apply(heartbeat("b-0", at_ms=0))
    text = agents_table(view.rows(10_000)).plain()
    lines = text.splitlines()
    header = ["AGENT", "STATUS", "CAPABILITIES", "IN", "FLIGHT", "HEARTBEAT", "ERRORS", "P95"]
    assert lines[0].split() == header
    row = ["a-0", "serving", "classify@2.1.0", "3/8", "0.0", "s", "ago", "25.0%", "42", "ms"]
    assert lines[1].split() == row
    assert lines[2].split()[:2] == ["b-0", "stale"]
