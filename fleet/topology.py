"""The topology in ``topics.yaml``: load it, name topics, create what is missing, report drift."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, TopicMetadata
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import BrokerError, ConfigError

CAPABILITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
REQUESTS, RESULTS, EVENTS, DEAD_LETTERS, STATE = (
    "workflow.requests",
    "task.results",
    "workflow.events",
    "dead.letters",
    "orchestrator.state",
)
TASKS_PREFIX = "tasks."
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
        missing = {REQUESTS, RESULTS, EVENTS, DEAD_LETTERS, STATE} - topology.topics.keys()
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

    def tasks(self, capability: str) -> str:
        return self.prefix + TASKS_PREFIX + check_capability(capability)

    def capability_of(self, topic: str) -> str | None:
        head = self.prefix + TASKS_PREFIX
        return topic[len(head) :] if topic.startswith(head) else None


@dataclass(frozen=True)
class TopicReport:
    topic: str
    status: Literal["created", "ok", "drift"]
    detail: str = ""


def desired_topics(
    topology: Topology, topics: Topics, capabilities: list[str]
) -> dict[str, TopicSpec]:
    wanted = {topics.prefix + name: spec for name, spec in topology.topics.items()}
    for cap in capabilities:
        wanted[topics.tasks(cap)] = topology.task_topics
    return wanted


def apply_topics(
    admin: AdminClient,
    topology: Topology,
    wanted: dict[str, TopicSpec],
    timeout_s: float = 30.0,
) -> list[TopicReport]:
    """Create missing topics; compare existing ones with the topology and report drift."""
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot list topics: {exc}") from exc
    reports: list[TopicReport] = []
    to_create = [
        NewTopic(
            name,
            num_partitions=spec.partitions,
            replication_factor=topology.replication_factor,
            config=dict(spec.config),
        )
        for name, spec in wanted.items()
        if name not in existing
    ]
    raced: list[str] = []
    if to_create:
        for name, future in admin.create_topics(to_create, operation_timeout=timeout_s).items():
            try:
                future.result()
                reports.append(TopicReport(name, "created"))
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
                # Someone created it between our list and create: check it like the others.
                raced.append(name)
    created = [r.topic for r in reports]
    if raced or created:
        # Return only once every topic is usable: created topics need partition leaders.
        existing = _await_metadata(admin, raced + created, timeout_s)
    present = {n: wanted[n] for n in wanted if n in existing and n not in created}
    missing = [n for n in wanted if n not in existing and n not in created]
    if missing:
        raise BrokerError(f"topics {missing} exist but do not show in metadata; try again")
    reports.extend(_drift(admin, existing, present, timeout_s))
    return sorted(reports, key=lambda r: r.topic)


def _await_metadata(
    admin: AdminClient, names: list[str], timeout_s: float
) -> dict[str, TopicMetadata]:
    """Cluster metadata once it shows ``names`` with a leader for every partition.

    A new topic reaches the brokers' metadata caches, and gets its leaders, a little
    after CreateTopics returns.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        topics: dict[str, TopicMetadata] = admin.list_topics(timeout=timeout_s).topics
        ready = all(
            name in topics and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        )
        if ready or time.monotonic() > deadline:
            return topics
        time.sleep(0.1)


def _drift(
    admin: AdminClient,
    existing: Mapping[str, TopicMetadata],
    wanted: dict[str, TopicSpec],
    timeout_s: float,
) -> list[TopicReport]:
    if not wanted:
        return []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted]
    configs = admin.describe_configs(resources, request_timeout=timeout_s)
    reports = []
    for resource, future in configs.items():
        name = resource.name
        spec = wanted[name]
        problems = []
        partitions = len(existing[name].partitions)
        if partitions != spec.partitions:
            problems.append(f"partitions {partitions} (topics.yaml says {spec.partitions})")
        actual = future.result(timeout=timeout_s)
        for key, value in spec.config.items():
            got = actual[key].value if key in actual else None
            if got != value:
                problems.append(f"{key}={got} (topics.yaml says {value})")
        reports.append(
            TopicReport(name, "drift", "; ".join(problems)) if problems else TopicReport(name, "ok")
        )
    return reports
