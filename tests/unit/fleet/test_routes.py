"""What "live" means for routing (fleet.liveness: AgentView.routes): live and stale
agents serving take work; dead, draining and paused ones do not."""

from __future__ import annotations

import pytest

from fleet.agent_messages import CapabilityVersion
from fleet.liveness import AgentView
from tests.unit.fleet.test_liveness import beat

pytestmark = pytest.mark.unit


def serving(*names: str) -> list[CapabilityVersion]:
    return [CapabilityVersion(capability=n, version="1.0.0") for n in names]


def test_live_and_stale_agents_take_work_dead_and_draining_ones_do_not() -> None:
    view = AgentView()
    view.apply(beat("fresh", at_ms=100_000, capabilities=serving("a")))
    view.apply(beat("stale", at_ms=100_000 - 10_000, capabilities=serving("b")))  # 5 missed
    view.apply(beat("dead", at_ms=100_000 - 30_000, capabilities=serving("c")))
    view.apply(beat("draining", at_ms=100_000, status="draining", capabilities=serving("d")))
    view.apply(beat("paused", at_ms=100_000, status="paused", capabilities=serving("e", "a")))
    routes = view.routes(100_000)
    assert routes.serving == {"a", "b"}
    assert [routes.serves(c) for c in "abcdef"] == [True, True, False, False, False, False]
    assert routes.why_not("c") == "no live agent serves capability 'c' (1 dead)"
    assert routes.why_not("d") == "no live agent serves capability 'd' (1 draining)"
    assert routes.why_not("f") == "no live agent serves capability 'f' (none is registered)"
    view.forget("fresh")  # a clean stop: gone
    assert view.routes(100_000).why_not("a") == "no live agent serves capability 'a' (1 paused)"
