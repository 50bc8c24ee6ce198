"""Which agents are alive: a pure view of the latest heartbeat of each agent.

Fed the heartbeats topic record by record (a heartbeat, or a tombstone when an agent
stopped cleanly), it answers, at any ``now``, each agent's liveness and the figures of
its last heartbeat. It keeps nothing but the latest heartbeat per agent, so reading the
compacted topic from its start rebuilds it exactly after a restart (:mod:`fleet.kafka.
registry` does the reading; the CLI and, later, the orchestrator's routing use the view).

An agent is judged by the interval it promised in its own heartbeat, so readers need no
setting and agents may differ: past 3 missed heartbeats it is ``stale`` (maybe a pause,
a long GC, a slow broker: route around it, keep its tasks), past 10 it is ``dead``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from fleet.agent_messages import AgentHeartbeat, CapabilityVersion

STALE_AFTER = 3  # missed heartbeats
DEAD_AFTER = 10


class Liveness(StrEnum):
    LIVE = "live"
    STALE = "stale"
    DEAD = "dead"


def liveness(age_s: float, heartbeat_s: float) -> Liveness:
    """An agent's liveness ``age_s`` after its last heartbeat, promised every ``heartbeat_s``."""
    missed = age_s / heartbeat_s if heartbeat_s > 0 else float("inf")
    if missed > DEAD_AFTER:
        return Liveness.DEAD
    if missed > STALE_AFTER:
        return Liveness.STALE
    return Liveness.LIVE


@dataclass(frozen=True)
class AgentRow:
    """One agent as ``fleet agents`` shows it; ``as_json`` has the documented field names."""

    agent_id: str
    status: str  # the agent's own status while live, else its liveness (stale, dead)
    liveness: Liveness
    capabilities: tuple[CapabilityVersion, ...]
    in_flight: int
    capacity: int
    heartbeat_age_s: float
    error_rate: float | None  # failed / finished over the agent's window; None: none finished
    p95_ms: float | None
    p50_ms: float | None
    region: str
    worker_id: str

    def serves(self, capability: str, version: str | None = None) -> bool:
        return any(
            c.capability == capability and (version is None or c.version == version)
            for c in self.capabilities
        )

    def as_json(self) -> dict[str, object]:
        return {
            "agent_id": self.agent_id,
            "status": self.status,
            "capabilities": [c.model_dump() for c in self.capabilities],
            "in_flight": self.in_flight,
            "capacity": self.capacity,
            "heartbeat_age_s": self.heartbeat_age_s,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
        }


def may_take_work(heartbeat: AgentHeartbeat, now_ms: int) -> bool:
    """Whether routing may send new work to an agent: what "live" means for routing.

    Not dead, and serving by its own last word. A *stale* agent (3 to 10 heartbeats
    missed) still counts: silence that short is a GC pause, a CPU-starved host, a broker
    leader moving; its consumer is still in its capability's group, and a task sent now
    waits in the topic for whichever member reads it, so holding work back on every
    hiccup would stall the fleet for nothing. A *dead* one (10 missed: 20 s at the
    default 2 s) is gone, and work sent to it would sit out its timeout. An agent
    *draining* (stopping: it finishes what it runs) or *paused* said it takes nothing
    new. An agent that stopped cleanly tombstoned its heartbeat: it is not in the view.
    """
    state = liveness(max(0.0, (now_ms - heartbeat.at_ms) / 1000), heartbeat.heartbeat_s)
    return state is not Liveness.DEAD and heartbeat.status == "serving"


@dataclass(frozen=True)
class Routes:
    """Which capabilities some agent may take work for now, and why not for the others."""

    serving: frozenset[str]
    refused: Mapping[str, str] = field(default_factory=dict)  # capability -> why no agent

    def serves(self, capability: str) -> bool:
        return capability in self.serving

    def why_not(self, capability: str) -> str:
        why = self.refused.get(capability, "none is registered")
        return f"no live agent serves capability {capability!r} ({why})"


def error_rate(heartbeat: AgentHeartbeat) -> float | None:
    finished = heartbeat.window_completed + heartbeat.window_failed
    return round(heartbeat.window_failed / finished, 4) if finished else None


class AgentView:
    """The latest heartbeat of every agent that has not stopped cleanly."""

    def __init__(self) -> None:
        self._latest: dict[str, AgentHeartbeat] = {}

    def apply(self, heartbeat: AgentHeartbeat) -> None:
        """Take a heartbeat, unless an older one of the same process (a reordered read)."""
        known = self._latest.get(heartbeat.agent_id)
        if (
            known is not None
            and known.started_at_ms == heartbeat.started_at_ms
            and known.seq > heartbeat.seq
        ):
            return
        self._latest[heartbeat.agent_id] = heartbeat

    def forget(self, agent_id: str) -> None:
        """A tombstone: the agent stopped cleanly, it is gone (not dead)."""
        self._latest.pop(agent_id, None)

    def replay(self, records: Iterable[tuple[str, AgentHeartbeat | None]]) -> None:
        """Apply ``(agent_id, heartbeat or None for a tombstone)`` in topic order."""
        for agent_id, heartbeat in records:
            if heartbeat is None:
                self.forget(agent_id)
            else:
                self.apply(heartbeat)

    def __len__(self) -> int:
        return len(self._latest)

    def row(self, heartbeat: AgentHeartbeat, now_ms: int) -> AgentRow:
        age_s = max(0.0, (now_ms - heartbeat.at_ms) / 1000)
        state = liveness(age_s, heartbeat.heartbeat_s)
        return AgentRow(
            agent_id=heartbeat.agent_id,
            status=heartbeat.status if state is Liveness.LIVE else state.value,
            liveness=state,
            capabilities=tuple(heartbeat.capabilities),
            in_flight=heartbeat.in_flight,
            capacity=heartbeat.capacity,
            heartbeat_age_s=round(age_s, 1),
            error_rate=error_rate(heartbeat),
            p95_ms=heartbeat.p95_ms,
            p50_ms=heartbeat.p50_ms,
            region=heartbeat.region,
            worker_id=heartbeat.worker_id,
        )

    def rows(self, now_ms: int, capability: str | None = None) -> list[AgentRow]:
        """Every agent (serving ``capability``, if given) at ``now_ms``, by agent id."""
        rows = [self.row(h, now_ms) for _, h in sorted(self._latest.items())]
        return [r for r in rows if capability is None or r.serves(capability)]

    def routes(self, now_ms: int) -> Routes:
        """The capabilities some agent may take work for at ``now_ms`` (see
        :func:`may_take_work`), and for the others how their agents stand."""
        serving: set[str] = set()
        states: dict[str, Counter[str]] = {}
        for heartbeat in self._latest.values():
            takes = may_take_work(heartbeat, now_ms)
            state = self.row(heartbeat, now_ms).status  # its own word while live
            for served in heartbeat.capabilities:
                if takes:
                    serving.add(served.capability)
                else:
                    states.setdefault(served.capability, Counter())[state] += 1
        refused = {
            capability: ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            for capability, counts in states.items()
            if capability not in serving
        }
        return Routes(frozenset(serving), refused)

    def live(self, now_ms: int, capability: str, version: str | None = None) -> list[AgentRow]:
        """The agents that may take ``capability`` (at ``version``) now: live and serving."""
        return [
            r
            for r in self.rows(now_ms, capability)
            if r.liveness is Liveness.LIVE
            and r.status == "serving"
            and r.serves(capability, version)
        ]
