"""Typed messages of the agents and of what routing learns about them: the registry's
cards, the heartbeats, and the task outcomes the circuit breakers share.

Like :mod:`fleet.messages` (whose :class:`~fleet.messages.Message` they extend): the
in-process form of Avro records, converted by the codec and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, JsonValue

from fleet.messages import Message, UsageLine


class AgentCard(Message):
    """One capability of one agent, as its A2A card (``fleet.cards``): the registry's record."""

    schema_name: ClassVar[str] = "io.fleet.AgentCard"
    json_fields: ClassVar[tuple[str, ...]] = ("card",)

    agent_id: str
    capability: str
    version: str
    region: str = ""
    card: JsonValue
    published_at_ms: int

    @property
    def key(self) -> str:
        return registry_key(self.agent_id, self.capability)


def registry_key(agent_id: str, capability: str) -> str:
    """The registry's key of one agent's card of one capability ('/' is in neither name)."""
    return f"{agent_id}/{capability}"


class AgentStatus(StrEnum):
    """What an agent says it is doing; liveness (stale, dead) is the reader's judgement."""

    SERVING = "serving"
    DRAINING = "draining"  # stopping: finishes what it runs, takes nothing new
    PAUSED = "paused"  # alive but taking nothing new (reserved: nothing pauses one yet)


class CapabilityVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    capability: str
    version: str


class AgentHeartbeat(Message):
    schema_name: ClassVar[str] = "io.fleet.AgentHeartbeat"

    agent_id: str
    worker_id: str
    # An AgentStatus, kept a plain string (as on the wire), like TaskCancelled.reason.
    status: str
    capabilities: list[CapabilityVersion]
    region: str = ""
    in_flight: int
    capacity: int
    completed: int
    failed: int
    window_completed: int
    window_failed: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    window_s: float
    heartbeat_s: float
    seq: int
    started_at_ms: int
    at_ms: int
    usage: list[UsageLine] = []  # what its handlers reported since it started, per model


class BreakerObservation(Message):
    """Task outcomes of one capability version seen by one orchestrator instance since
    its last commit: what every instance's circuit breakers are fed with
    (orchestrator.breaker), so all of them hold the same view."""

    schema_name: ClassVar[str] = "io.fleet.BreakerObservation"

    capability: str
    version: str  # "" when unknown (a timed-out attempt has no result to say)
    instance: str  # the orchestrator instance that saw them
    ok: int
    failed: int  # task errors and timeouts
    at_ms: int
