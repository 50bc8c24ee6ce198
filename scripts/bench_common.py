"""What the benchmark's sections share: clients, fresh topics, helper processes and a
paced load that records when each unit of work comes back, and on which partition."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from pydantic import JsonValue

from fleet.kafka import KafkaClients, watermarks
from fleet.kafka.client import FleetClient
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.messages import WorkflowEvent
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleetctl.supervisor import child_env

PARTITIONS = 6
BENCH = Path(__file__).with_name("bench.py")
NOOP: JsonValue = {"name": "bench", "steps": [{"id": "a", "capability": "noop", "input": {}}]}
# Ten noop steps one after the other: what each extra sequential step costs.
SEQUENCE_10: JsonValue = {
    "name": "bench-sequence",
    "steps": [
        {"id": f"s{i}", "capability": "noop", "needs": [f"s{i - 1}"] if i else []}
        for i in range(10)
    ],
}
# A hundred noop steps at once, then one that needs them all.
_FANNED: list[JsonValue] = [{"id": f"f{i}", "capability": "noop"} for i in range(100)]
FAN_OUT_100: JsonValue = {
    "name": "bench-fan-out",
    "steps": [
        *_FANNED,
        {"id": "join", "capability": "noop", "needs": [f"f{i}" for i in range(100)]},
    ],
}


def clients(settings: Settings, role: str) -> KafkaClients:
    return KafkaClients(settings, settings.require_bootstrap(), role=role)


def spawn(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """One of bench.py's helper subcommands (relay, collect) as a process of its own."""
    extra = {"FLEET_LOG_LEVEL": "warning", **(env or {})}
    return subprocess.Popen([sys.executable, str(BENCH), *args], env=child_env(settings, extra))


def fresh_topics(settings: Settings) -> Settings:
    """Settings with a topic prefix of their own, topics applied: runs do not see each
    other's records, committed offsets or state."""
    settings = settings.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:6]}."})
    topology = Topology.load(settings.topology_file)
    apply_topics(
        clients(settings, "bench").admin(),
        topology,
        desired_topics(topology, Topics(settings.topic_prefix), ["noop"]),
    )
    return settings


def raw_topics(settings: Settings) -> tuple[str, str]:
    """A fresh source and sink topic pair for the raw confluent-kafka relay."""
    run = uuid.uuid4().hex[:6]
    source = f"{settings.topic_prefix}bench.raw.{run}.tasks"
    sink = f"{settings.topic_prefix}bench.raw.{run}.results"
    admin = clients(settings, "bench").admin()
    for future in admin.create_topics(
        [NewTopic(t, PARTITIONS, 1) for t in (source, sink)]
    ).values():
        future.result()
    return source, sink


def delete_bench_topics(settings: Settings) -> None:
    """Delete every bench-* topic of the local broker: each run makes fresh topics, and
    the kept broker piled them up (6,171 partitions after a day), until it took minutes
    to start. Not on a cluster named by KAFKA_BOOTSTRAP_SERVERS: not ours to clean.
    One bench at a time: a second one running would lose its topics."""
    admin = clients(settings, "bench").admin()
    names = [n for n in admin.list_topics(timeout=30).topics if n.startswith("bench-")]
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=60).values():
        try:
            future.result(timeout=120)
        except KafkaException as exc:  # already gone, or the broker is slow: not fatal
            print(f"bench: could not delete a topic: {exc}", file=sys.stderr)
    print(f"bench: deleted its {len(names)} topics", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


# The quantiles a row keeps of its latencies, for the plots' CDFs (bench_plots.py): every
# percent, and the tail finer. Kept as figures like any other, so a table's median over
# reps is taken key by key (the median of quantile functions is one too).
CDF_QUANTILES = (*(i / 100 for i in range(100)), 0.995, 0.999, 1.0)


def quantiles(prefix: str, seconds: Sequence[float]) -> dict[str, float]:
    """``{prefix}_q{q}`` -> the latency at quantile q, in ms."""
    ordered = sorted(seconds)
    return {f"{prefix}_q{q:.3f}": percentile(ordered, q) * 1000 for q in CDF_QUANTILES}


def median_max(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


@dataclass(frozen=True)
class Arrival:
    key: str  # the workflow id, or the raw task's number
    partition: int
    sent: float  # epoch seconds, stamped by the sender
    arrived: float  # epoch seconds, when this process read the result


class Load(Protocol):
    def send(self) -> str: ...
    def poll(self, timeout_s: float) -> list[Arrival]: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def take_batch(consumer: Consumer, most: int, wait_s: float) -> list[Message]:
    """Up to ``most`` records: block up to ``wait_s`` for the first, then take what is
    already fetched without waiting (``consume(most, wait_s)`` holds a part-filled batch
    for the whole wait)."""
    records = consumer.consume(1, timeout=wait_s)
    if records and most > 1:
        records += consumer.consume(most - 1, timeout=0)
    return records


def _reader(kafka: KafkaClients, topic: str) -> Consumer:
    """A group-less reader of every partition of ``topic``, from its current end."""
    consumer = kafka.consumer(f"bench-reader-{uuid.uuid4().hex}")
    consumer.assign(
        [TopicPartition(topic, p, watermarks(consumer, topic, p)[1]) for p in range(PARTITIONS)]
    )
    return consumer


class FleetLoad:
    """Workflows of one spec (one noop step by default); each comes back with its
    terminal event."""

    def __init__(self, settings: Settings, spec: JsonValue = NOOP) -> None:
        self.client = FleetClient(settings, role="bench-load")
        self.consumer = _reader(self.client.clients, self.client.topics.events)
        self.spec = spec

    def send(self) -> str:
        return self.client.submit(self.spec, flush=False)

    def poll(self, timeout_s: float) -> list[Arrival]:
        arrivals = []
        for record in take_batch(self.consumer, 500, timeout_s):
            if record.error() is not None:
                continue
            now = time.time()
            event = self.client.codec.decode(record.value(), WorkflowEvent)
            if event.kind.terminal and event.submitted_at_ms is not None:
                arrivals.append(
                    Arrival(
                        event.workflow_id,
                        record.partition() or 0,
                        event.submitted_at_ms / 1000,
                        now,
                    )
                )
        return arrivals

    def flush(self) -> None:
        self.client.flush(30)

    def close(self) -> None:
        self.consumer.close()
        self.client.close()


class RawLoad:
    """Trivial JSON tasks onto ``source``; a task comes back as the relay's copy on ``sink``."""

    def __init__(self, settings: Settings, source: str, sink: str, linger_ms: int = 5) -> None:
        kafka = clients(settings, "bench-load")
        self.producer: Producer = kafka.producer(**{"linger.ms": linger_ms})
        self.consumer = _reader(kafka, sink)
        self.source = source
        self.sent = 0

    def send(self) -> str:
        key = str(self.sent)
        self.sent += 1
        value = json.dumps({"sent": time.time(), "n": key}).encode()
        self.producer.produce(self.source, key=key.encode(), value=value)
        self.producer.poll(0)
        return key

    def poll(self, timeout_s: float) -> list[Arrival]:
        arrivals = []
        records = take_batch(self.consumer, 500, timeout_s)
        now = time.time()
        for record in records:
            if record.error() is not None:
                continue
            body = json.loads(record.value() or b"{}")
            arrivals.append(Arrival(body["n"], record.partition() or 0, body["sent"], now))
        return arrivals

    def flush(self) -> None:
        self.producer.flush(30)

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)


@dataclass
class PacedRun:
    start: float
    sent_at: dict[str, float] = field(default_factory=dict)  # key -> when it was sent
    arrivals: list[Arrival] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return len(self.sent_at.keys() - {a.key for a in self.arrivals})

    @property
    def duplicates(self) -> int:
        return len(self.arrivals) - len({a.key for a in self.arrivals})


def warm_up(load: Load, timeout_s: float = 60.0) -> None:
    """One unit there and back first: it pays for joins, metadata and producer ids, so
    the paced run starts from a fleet that already works."""
    key = load.send()
    load.flush()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(a.key == key for a in load.poll(0.2)):
            return
    raise SystemExit(f"warm-up: nothing came back within {timeout_s:g} s")


def paced(
    load: Load,
    rate: float,
    seconds: float,
    *,
    at: Sequence[tuple[float, Callable[[], None]]] = (),
    stop_when: Callable[[PacedRun], bool] | None = None,
    drain_s: float = 30.0,
) -> PacedRun:
    """Send ``rate`` units a second for up to ``seconds`` (``at``: (offset s, action) pairs
    fired once; ``stop_when`` ends sending early), then wait up to ``drain_s`` for the rest.
    Results are read in the same loop, so their arrival times are this process's clock."""
    warm_up(load)
    run = PacedRun(start=time.time())
    actions = sorted(at, key=lambda pair: pair[0])
    next_check = run.start
    while (elapsed := time.time() - run.start) < seconds:
        while actions and actions[0][0] <= elapsed:
            actions.pop(0)[1]()
        while len(run.sent_at) < rate * elapsed:
            run.sent_at[load.send()] = time.time()
        run.arrivals.extend(load.poll(0.01))
        if stop_when is not None and time.time() >= next_check:
            next_check = time.time() + 0.5  # the check scans every arrival: not every loop
            if stop_when(run):
                break
    load.flush()
    deadline = time.time() + drain_s
    while run.missing and time.time() < deadline:
        run.arrivals.extend(load.poll(0.2))
    return run


def latencies(name: str, run: PacedRun) -> dict[str, float]:
    """A paced run's p50 and p99, once every unit came back."""
    if run.missing:
        raise SystemExit(f"{name}: {run.missing} of {len(run.sent_at)} did not come back")
    return paced_figures([a.arrived - a.sent for a in run.arrivals])


def paced_figures(took: Sequence[float]) -> dict[str, float]:
    """p50, p99 and the quantiles of a paced run's latencies (seconds)."""
    return {
        "paced_p50_ms": statistics.median(took) * 1000,
        "paced_p99_ms": percentile(took, 0.99) * 1000,
    } | quantiles("paced", took)
