"""Applying the topology to a cluster: create what is missing, report drift."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, TopicMetadata

from fleet.errors import BrokerError
from fleet.topology import Topics, TopicSpec, Topology

log = structlog.get_logger()


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
    reports.sort(key=lambda r: r.topic)
    for report in reports:
        # Drift is reported, never repaired: partitions cannot shrink and a config change
        # to a live topic is an operator's decision.
        if report.status == "drift":
            log.warning(
                "topic drift; fix topics.yaml or the topic",
                topic=report.topic,
                detail=report.detail,
            )
        elif report.status == "created":
            log.debug("created topic", topic=report.topic)  # `fleet topics apply` prints them
    return reports


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


class CapabilityCheck:
    """Does a capability's task topic exist? Cached once seen: topics are never deleted
    under a running fleet, and the check sits on the submit and dispatch paths."""

    def __init__(self, admin: AdminClient, topics: Topics) -> None:
        self.admin = admin
        self.topics = topics
        self.known: set[str] = set()

    def __call__(self, capability: str) -> bool:
        if capability in self.known:
            return True
        name = self.topics.tasks(capability)
        topic = self.admin.list_topics(topic=name, timeout=10).topics.get(name)
        if topic is not None and topic.error is None:
            self.known.add(capability)
            return True
        return False
