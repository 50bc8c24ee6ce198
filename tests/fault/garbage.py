"""Garbage: records no consumer can decode, one of each kind per consumed topic.

The pure part builds them (and proves each undecodable for its consumer);
:class:`GarbageInjector` produces a round and remembers where each record landed, so
the checker can match every dead letter to its source.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from confluent_kafka import KafkaError
from pydantic import JsonValue

from fleet.codec import Codec
from fleet.errors import DecodeError, FleetError
from fleet.kafka import KafkaClients
from fleet.messages import (
    Message,
    TaskAssigned,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowSubmitted,
)
from fleet.topology import Topics


class GarbageKind(StrEnum):
    RANDOM = "random-bytes"
    UNKNOWN_SCHEMA = "unknown-fingerprint"
    WRONG_SCHEMA = "wrong-schema"
    TRUNCATED = "truncated-avro"


@dataclass(frozen=True)
class Garbage:
    topic: str
    kind: GarbageKind
    key: bytes
    value: bytes
    partition: int | None = None  # where it landed, from the delivery report
    offset: int | None = None


# What each consumer accepts, so garbage is built (and proven) undecodable for it.
ACCEPTS: dict[str, tuple[type[Message], ...]] = {
    "requests": (WorkflowSubmitted, WorkflowCancelRequested),
    "results": (TaskResult,),
    "tasks": (TaskAssigned,),
}


def _valid_record(role: str, serial: str, capability: str) -> Message:
    """A well-formed record of the type ``role`` accepts (to be truncated)."""
    if role == "requests":
        spec: JsonValue = {"name": serial, "steps": [{"id": "a", "capability": "noop"}]}
        return WorkflowSubmitted(workflow_id=f"garbage-{serial}", spec=spec, submitted_at_ms=1)
    if role == "results":
        return _garbage_result(serial)
    return TaskAssigned(
        task_id=f"garbage-{serial}/a/0",
        workflow_id=f"garbage-{serial}",
        step_id="a",
        capability=capability,
        attempt=1,
        input={"serial": serial},
        dispatched_at_ms=1,
    )


def _garbage_result(serial: str) -> TaskResult:
    return TaskResult(
        task_id=f"garbage-{serial}/a/0",
        workflow_id=f"garbage-{serial}",
        step_id="a",
        capability="noop",
        attempt=1,
        status=TaskStatus.SUCCEEDED,
        output={"serial": serial},
        duration_ms=1,
        worker_id="fault-driver",
        finished_at_ms=1,
    )


def _wrong_record(role: str, serial: str) -> Message:
    """A valid record of a type ``role`` does NOT accept."""
    if role == "results":
        return WorkflowSubmitted(workflow_id=f"garbage-{serial}", spec={}, submitted_at_ms=1)
    return _garbage_result(serial)


def garbage_value(
    codec: Codec,
    role: str,
    kind: GarbageKind,
    rng: random.Random,
    serial: str,
    capability: str = "noop",
) -> bytes:
    """One undecodable value for a consumer of ``role`` (requests, results or tasks)."""
    accepts = ACCEPTS[role]
    for _ in range(50):
        if kind is GarbageKind.RANDOM:
            value = rng.randbytes(rng.randint(1, 64)) + serial.encode()
        elif kind is GarbageKind.UNKNOWN_SCHEMA:
            value = b"\xc3\x01" + rng.randbytes(8) + serial.encode()
        elif kind is GarbageKind.WRONG_SCHEMA:
            value = codec.encode(_wrong_record(role, serial))
        else:
            whole = codec.encode(_valid_record(role, serial, capability))
            # Cut after the serial (so values stay unique) and before the end.
            keep_from = whole.index(serial.encode()) + len(serial)
            value = whole[: rng.randint(keep_from, len(whole) - 1)]
        if not _decodes(codec, value, accepts):
            return value
    raise AssertionError(f"could not make {kind} garbage for {role}")  # never: 50 draws


def _decodes(codec: Codec, value: bytes, accepts: tuple[type[Message], ...]) -> bool:
    try:
        codec.decode_any(value, accepts)  # type: ignore[arg-type]
    except DecodeError:
        return False
    return True


def garbage_round(
    codec: Codec, topics: Topics, capabilities: Sequence[str], rng: random.Random, round_no: int
) -> list[Garbage]:
    """Every garbage kind for every consumed topic: requests, results, each task topic."""
    targets = [(topics.requests, "requests", "noop"), (topics.results, "results", "noop")]
    targets += [(topics.tasks(cap), "tasks", cap) for cap in capabilities]
    batch = []
    for topic, role, capability in targets:
        for kind in GarbageKind:
            serial = f"r{round_no}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
            value = garbage_value(codec, role, kind, rng, serial, capability)
            batch.append(Garbage(topic, kind, f"garbage-{serial}".encode(), value))
    return batch


class GarbageInjector:
    """Produces garbage rounds and remembers where each record landed."""

    def __init__(
        self,
        clients: KafkaClients,
        codec: Codec,
        topics: Topics,
        capabilities: Sequence[str],
        seed: int,
    ) -> None:
        self.producer = clients.producer()
        self.codec = codec
        self.topics = topics
        self.capabilities = list(capabilities)
        self.rng = random.Random(seed ^ 0x9A5BA9E)
        admin = clients.admin()
        meta = admin.list_topics(timeout=30).topics
        self.partitions = {name: len(t.partitions) for name, t in meta.items()}

    def inject(self, round_no: int) -> list[Garbage]:
        batch = garbage_round(self.codec, self.topics, self.capabilities, self.rng, round_no)
        landed: list[Garbage] = []
        errors: list[str] = []

        def delivered(g: Garbage) -> Callable[[KafkaError | None, Any], None]:
            def callback(err: KafkaError | None, msg: Any) -> None:
                if err is not None:
                    errors.append(f"{g.topic}: {err}")
                else:
                    landed.append(replace(g, partition=msg.partition(), offset=msg.offset()))

            return callback

        for n, g in enumerate(batch):
            # Spread over partitions, so over rounds every owner of a topic gets some.
            partition = (round_no * len(GarbageKind) + n) % self.partitions.get(g.topic, 1)
            self.producer.produce(
                g.topic, key=g.key, value=g.value, partition=partition, on_delivery=delivered(g)
            )
        # Up to 150 s, not 60: on the three-broker run a round can land while a killed
        # node restarts, and CI once saw all 41 records of a round still queued (no error)
        # after 60 s, the restarting node slow on a loaded machine. The run checks where
        # the records end up, not how fast they got there; a round still queued after
        # this is a failure as before.
        remaining = self.producer.flush(150)
        if remaining or errors:
            raise FleetError(
                f"garbage round {round_no}: {remaining} undelivered, errors {errors[:3]}"
            )
        return landed
