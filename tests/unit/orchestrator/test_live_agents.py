"""The orchestrator's view of the agents (orchestrator.shell.agents.LiveAgents): it routes
everywhere until the feed has caught up, then moves its generation whenever the set of
served capabilities changes (heartbeats, or silence alone), and only then."""

from __future__ import annotations

from typing import cast

import pytest

from fleet.kafka.registry import AgentFeed
from fleet.liveness import AgentView
from orchestrator.shell.agents import LiveAgents
from tests.unit.fleet.test_liveness import beat
from tests.unit.fleet.test_routes import serving

pytestmark = pytest.mark.unit


class FakeFeed:
    def __init__(self) -> None:
        self.view = AgentView()
        self.done = False

    def caught_up(self) -> bool:
        return self.done


def test_the_view_routes_everywhere_until_caught_up_then_moves_on_changes_only() -> None:
    now = [100.0]
    feed = FakeFeed()
    agents = LiveAgents(lambda: cast(AgentFeed, feed), clock=lambda: now[0])
    view_of = cast(AgentFeed, feed)
    agents.update(view_of)
    assert (agents.generation, agents.serves("anything"), agents.why_not("x")) == (0, True, "")
    feed.done = True
    agents.update(view_of)
    assert (agents.generation, agents.serves("classify")) == (1, False)
    feed.view.apply(beat("a-1", at_ms=100_000, capabilities=serving("classify")))
    agents.update(view_of)
    assert (agents.generation, agents.serves("classify")) == (2, True)
    now[0] = 101.0
    agents.update(view_of)  # a heartbeat later, nothing changed
    assert agents.generation == 2
    now[0] = 110.0  # stale (5 missed): still served, reasons unchanged
    agents.update(view_of)
    assert (agents.generation, agents.serves("classify")) == (2, True)
    now[0] = 121.0  # dead: silence alone moves the view
    agents.update(view_of)
    assert (agents.generation, agents.serves("classify")) == (3, False)
    assert agents.why_not("classify") == "no live agent serves capability 'classify' (1 dead)"
