"""The orchestrator's view of the agents, for routing only to the living.

An :class:`~fleet.kafka.registry.AgentFeed` (every partition of the heartbeats topic,
from its start, without a group) is followed on a thread of its own, so a slow or
stalled fetch never holds up the loop; the loop only reads the last published
:class:`Snapshot`: one immutable object replaced whole, so a reader never sees half of
an update. The engine asks it through :class:`~orchestrator.waiting.Agents`.

Liveness changes with time alone (silence makes an agent stale, then dead), so the
routes are recomputed at every poll, not only when a heartbeat arrives, and the
generation moves only when the set of served capabilities changes: that is what makes
the engine look at its waiting tasks again.

Before the feed has read the topic to the end it held at start, a missing agent may
just not be read yet: the view routes everywhere (the engine's behaviour without it),
so an orchestrator (re)starting does not make every step wait for a moment. Once
caught up, the real routes take over, and the generation moves so that any task that
waits (restored from the changelog) is looked at again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from fleet.kafka import KafkaClients
from fleet.kafka.registry import AgentFeed
from fleet.liveness import Routes

log = structlog.get_logger()

POLL_S = 0.2  # how long one poll of the feed waits for heartbeats
RETRY_S = 2.0  # after the feed failed to open (the broker away at start)
CATCH_UP_WARN_S = 60.0


@dataclass(frozen=True)
class Snapshot:
    generation: int
    routes: Routes | None  # None: not caught up yet, route everywhere


class LiveAgents:
    """What routing knows of the agents; :meth:`start` follows the heartbeats."""

    def __init__(
        self,
        open_feed: Callable[[], AgentFeed],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open_feed = open_feed
        self._clock = clock
        self.snapshot = Snapshot(0, None)
        self.caught_up_at: float | None = None  # wall clock, for logs and tests
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def of(cls, clients: KafkaClients) -> LiveAgents:
        return cls(lambda: AgentFeed(clients))

    # -- what the engine asks (orchestrator.waiting.Agents) ------------------------------

    @property
    def generation(self) -> int:
        return self.snapshot.generation

    def serves(self, capability: str) -> bool:
        routes = self.snapshot.routes
        return routes is None or routes.serves(capability)

    def why_not(self, capability: str) -> str:
        routes = self.snapshot.routes
        return "" if routes is None else routes.why_not(capability)

    def cause(self, capability: str) -> str:
        return "NoLiveAgent"

    # -- the feed ------------------------------------------------------------------------

    def update(self, feed: AgentFeed) -> None:
        """Publish the routes the feed's view gives now (once it has caught up)."""
        if not feed.caught_up():
            return
        routes = feed.view.routes(int(self._clock() * 1000))
        old = self.snapshot
        if old.routes is None:
            self.caught_up_at = self._clock()
            log.info("agent view caught up; routing to live agents", serving=sorted(routes.serving))
        elif old.routes.serving == routes.serving:
            if old.routes.refused != routes.refused:  # reasons only: same generation
                self.snapshot = Snapshot(old.generation, routes)
            return
        else:
            log.info(
                "agents changed",
                gained=sorted(routes.serving - old.routes.serving),
                lost=sorted(old.routes.serving - routes.serving),
            )
        self.snapshot = Snapshot(old.generation + 1, routes)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="agent-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        feed: AgentFeed | None = None
        started = self._clock()
        warned = False
        try:
            while not self._stop.is_set():
                try:
                    if feed is None:
                        feed = self._open_feed()
                    feed.poll(POLL_S)
                    self.update(feed)
                except Exception as exc:  # noqa: BLE001 - the view outlives any one bad poll
                    log.warning("agent feed failed; retrying", error=str(exc))
                    self._stop.wait(RETRY_S)
                    continue
                late = self._clock() - started > CATCH_UP_WARN_S
                if self.snapshot.routes is None and late and not warned:
                    warned = True
                    log.warning("agent view not caught up yet; routing to every capability")
        finally:
            if feed is not None:
                feed.close()
