"""The topology in ``topics.yaml``: load it and name topics (applying it is fleet.kafka.topics)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import ConfigError

CAPABILITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
REQUESTS, RESULTS, EVENTS, DEAD_LETTERS, STATE = (
    "workflow.requests",
    "task.results",
    "workflow.events",
    "dead.letters",
    "orchestrator.state",
)
TASKS_PREFIX = "tasks."
# Read by every worker process, each on its own (no consumer group): see the topic's
# entry in topics.yaml and workers.shell.cancellations.
CANCELLATIONS = "task.cancellations"
# Read whole by every reader (fleet.kafka.registry): an agent's cards and its heartbeats.
AGENT_REGISTRY, AGENT_HEARTBEATS = "agents.registry", "agents.heartbeats"
# Every orchestrator's circuit breakers read it (orchestrator.shell.breakers).
BREAKER_OBSERVATIONS = "breaker.observations"
MARKET_BIDS, MARKET_OUTCOMES, MARKET_LEDGER, MARKET_STATE = (
    "market.bids",
    "market.outcomes",
    "market.ledger",
    "market.state",
)


class TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    partitions: int = Field(ge=1)
    config: dict[str, str] = {}


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    replication_factor: int = Field(ge=1)
    topics: dict[str, TopicSpec]
    co_partitioned: list[str] = []
    task_topics: TopicSpec
    capabilities: list[str] = []

    @classmethod
    def load(cls, path: Path) -> Topology:
        try:
            raw = yaml.safe_load(path.read_text())
            topology = cls.model_validate(raw)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"topology file {path} is invalid: {exc}") from exc
        core = {REQUESTS, RESULTS, EVENTS, DEAD_LETTERS, STATE, CANCELLATIONS}
        core |= {AGENT_REGISTRY, AGENT_HEARTBEATS, BREAKER_OBSERVATIONS}
        missing = core - topology.topics.keys()
        if missing:
            raise ConfigError(f"topology file {path} lacks topics: {sorted(missing)}")
        counts = {topology.topics[t].partitions for t in topology.co_partitioned}
        if len(counts) > 1:
            raise ConfigError(
                f"topology file {path}: co-partitioned topics {topology.co_partitioned} "
                f"must have equal partition counts, found {sorted(counts)}"
            )
        for cap in topology.capabilities:
            check_capability(cap)
        return topology


def check_capability(name: str) -> str:
    if not CAPABILITY_RE.match(name):
        raise ConfigError(
            f"capability {name!r} is not a valid name: letters, digits, '.', '_', '-', "
            "starting with a letter or digit, at most 200 characters"
        )
    return name


@dataclass(frozen=True)
class Topics:
    """Full topic names for one prefix. The only place that builds topic names."""

    prefix: str

    @property
    def requests(self) -> str:
        return self.prefix + REQUESTS

    @property
    def results(self) -> str:
        return self.prefix + RESULTS

    @property
    def events(self) -> str:
        return self.prefix + EVENTS

    @property
    def dead_letters(self) -> str:
        return self.prefix + DEAD_LETTERS

    @property
    def state(self) -> str:
        return self.prefix + STATE

    @property
    def cancellations(self) -> str:
        return self.prefix + CANCELLATIONS

    @property
    def market_bids(self) -> str:
        return self.prefix + MARKET_BIDS

    @property
    def market_outcomes(self) -> str:
        return self.prefix + MARKET_OUTCOMES

    @property
    def market_ledger(self) -> str:
        return self.prefix + MARKET_LEDGER

    @property
    def market_state(self) -> str:
        return self.prefix + MARKET_STATE

    @property
    def agent_registry(self) -> str:
        return self.prefix + AGENT_REGISTRY

    @property
    def agent_heartbeats(self) -> str:
        return self.prefix + AGENT_HEARTBEATS

    @property
    def breaker_observations(self) -> str:
        return self.prefix + BREAKER_OBSERVATIONS

    def tasks(self, capability: str) -> str:
        return self.prefix + TASKS_PREFIX + check_capability(capability)

    def capability_of(self, topic: str) -> str | None:
        head = self.prefix + TASKS_PREFIX
        return topic[len(head) :] if topic.startswith(head) else None
