"""Benchmark: the platform against a raw confluent-kafka baseline, measured in one run.

(a) baseline: a producer process sends N trivial tasks; a relay process (plain consumer
    + producer, commits like a worker) answers each with a result; a collector process
    records when each result arrives.
(b) platform: N one-step workflows (capability ``noop``) through orchestrator and worker
    processes; the collector records each terminal workflow event.
Both report tasks/s and end-to-end p50/p99; the ratio is what to watch, since these
machines are shared and noisy. The orchestrator runs under cProfile to show where the
time goes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from fleet.client import FleetClient
from fleet.kafka import KafkaClients, resolve_bootstrap
from fleet.localkafka import LocalKafka
from fleet.logs import configure_logging
from fleet.messages import WorkflowEvent, WorkflowSubmitted
from fleet.settings import Settings
from fleet.supervisor import Supervisor, child_env
from fleet.topology import Topics, Topology, apply_topics, desired_topics
from orchestrator import changelog
from orchestrator.engine import Engine

PARTITIONS = 6
COLLECT_TIMEOUT_S = 180


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the helper processes; one failing ends the benchmark at once."""
    deadline = time.monotonic() + COLLECT_TIMEOUT_S + 30
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise SystemExit(f"benchmark process failed: {[p.args for p in failed]}")
        time.sleep(0.2)


def _clients(settings: Settings, role: str) -> KafkaClients:
    return KafkaClients(settings, resolve_bootstrap(settings), role=role)


def relay(settings: Settings, source: str, sink: str, count: int) -> None:
    """The baseline worker: consume, answer, commit — no decoding, no orchestration."""
    clients = _clients(settings, "bench-relay")
    consumer: Consumer = clients.consumer(f"bench-relay-{uuid.uuid4().hex}")
    producer: Producer = clients.producer()
    consumer.subscribe([source])
    seen = 0
    while seen < count:
        records = consumer.consume(500, timeout=0.5)
        offsets = {}
        for record in records:
            if record.error() is None:
                producer.produce(sink, key=record.key(), value=record.value())
                offsets[record.partition()] = record.offset() + 1
                seen += 1
        if offsets:
            # Like a worker: results durable first, then the inputs' offsets.
            producer.flush(30)
            consumer.commit(
                offsets=[TopicPartition(source, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
    consumer.close()


def collect(settings: Settings, topic: str, count: int, out: Path, events: bool) -> None:
    """Record the arrival time of each result (raw) or terminal workflow event (platform)."""
    clients = _clients(settings, "bench-collect")
    consumer: Consumer = clients.consumer(f"bench-collect-{uuid.uuid4().hex}")
    client = FleetClient(settings, role="bench-collect") if events else None
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    latencies: list[float] = []
    first = last = 0.0
    deadline = time.monotonic() + COLLECT_TIMEOUT_S
    while len(latencies) < count and time.monotonic() < deadline:
        for record in consumer.consume(500, timeout=0.5):
            if record.error() is not None:
                continue
            now = time.time()
            if client is not None:
                event = client.codec.decode(record.value(), WorkflowEvent)
                if not event.kind.terminal or event.submitted_at_ms is None:
                    continue
                sent = event.submitted_at_ms / 1000
            else:
                sent = json.loads(record.value())["sent"]
            latencies.append(now - sent)
            first = first or now
            last = now
    consumer.close()
    out.write_text(json.dumps({"latencies": latencies, "last": last}))


def _spawn(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], env=child_env(settings, {"FLEET_LOG_LEVEL": "warning"})
    )


def _summary(name: str, start: float, result: Path, count: int) -> dict[str, float]:
    data = json.loads(result.read_text())
    lat = sorted(data["latencies"])
    if len(lat) < count:
        raise SystemExit(f"{name}: only {len(lat)} of {count} arrived")
    return {
        "tasks_per_s": count / (data["last"] - start),
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000,
    }


def run_baseline(settings: Settings, count: int, work: Path) -> dict[str, float]:
    admin = _clients(settings, "bench").admin()
    source, sink = (
        f"{settings.topic_prefix}bench.raw.tasks",
        f"{settings.topic_prefix}bench.raw.results",
    )
    for future in admin.create_topics(
        [NewTopic(t, PARTITIONS, 1) for t in (source, sink)]
    ).values():
        future.result()
    out = work / "baseline.json"
    procs = [
        _spawn(settings, "relay", source, sink, str(count)),
        _spawn(settings, "collect", sink, str(count), str(out)),
    ]
    time.sleep(3)  # let both join before the clock starts
    producer = _clients(settings, "bench-produce").producer()
    start = time.time()
    for i in range(count):
        value = json.dumps({"sent": time.time(), "n": i}).encode()
        producer.produce(source, key=str(i).encode(), value=value)
        producer.poll(0)
    producer.flush(60)
    _wait_all(procs)
    return _summary("baseline", start, out, count)


def run_platform(settings: Settings, count: int, work: Path) -> dict[str, float]:
    out = work / "platform.json"
    profile = work / "orchestrator.prof"
    with Supervisor(settings, work / "logs") as supervisor:
        supervisor.start("orchestrator", ["orchestrator"], profile_to=profile)
        supervisor.start(
            "worker", ["worker", "--app", "workers.examples:app", "--concurrency", "16"]
        )
        collector = _spawn(
            settings,
            "collect",
            Topics(settings.topic_prefix).events,
            str(count),
            str(out),
            "--events",
        )
        client = FleetClient(settings, role="bench")
        client.wait_for_pools(["noop"], 1, timeout_s=60)
        # Warm-up: the first workflow pays for group joins and metadata.
        warm = client.event_consumer(from_beginning=False)
        wid = client.submit({"name": "warm", "steps": [{"id": "a", "capability": "noop"}]})
        client.wait(warm, [wid], 60)
        warm.close()
        time.sleep(1)
        spec = {"name": "bench", "steps": [{"id": "a", "capability": "noop", "input": {}}]}
        start = time.time()
        for _ in range(count):
            client.submit(spec, flush=False)
        client.flush(60)
        _wait_all([collector])
        supervisor.stop_all()
    result = _summary("platform", start, out, count + 1)
    result["profile"] = str(profile)  # type: ignore[assignment]
    return result


def run_restore(settings: Settings, count: int) -> dict[str, float]:
    """Restore time: ``count`` in-flight workflows' state read back from the changelog."""
    engine = Engine(has_capability=lambda _cap: True)
    spec = {
        "name": "restore",
        "steps": [
            {"id": "a", "capability": "noop", "input": {"x": 1}},
            {"id": "b", "capability": "noop", "needs": ["a"], "input": {"y": "$.steps.a.output"}},
        ],
    }
    producer = _clients(settings, "bench-restore").producer()
    topic = Topics(settings.topic_prefix).state
    for i in range(count):
        request = WorkflowSubmitted(workflow_id=f"wf-{i}", spec=spec, submitted_at_ms=i)
        engine.submit(request, now_ms=1_000 + i)
        for workflow_id, record in engine.take_changes().items():
            producer.produce(topic, key=workflow_id, value=changelog.encode(record))
            producer.poll(0)
    producer.flush(120)
    fresh = Engine(has_capability=lambda _cap: True)
    started = time.monotonic()
    restored = changelog.read_partitions(
        _clients(settings, "bench-restore"), topic, range(PARTITIONS)
    )
    read_s = time.monotonic() - started
    gc.disable()  # as the orchestrator does during a restore
    for workflow_id, (_partition, record) in restored.items():
        fresh.restore(workflow_id, record)
    gc.enable()
    total_s = time.monotonic() - started
    if fresh.active != count:
        raise SystemExit(f"restored {fresh.active} workflows, expected {count}")
    return {"workflows": count, "read_s": read_s, "total_s": total_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    r = sub.add_parser("relay")
    r.add_argument("source")
    r.add_argument("sink")
    r.add_argument("count", type=int)
    c = sub.add_parser("collect")
    c.add_argument("topic")
    c.add_argument("count", type=int)
    c.add_argument("out", type=Path)
    c.add_argument("--events", action="store_true")
    parser.add_argument("-n", "--tasks", type=int, default=2000)
    parser.add_argument(
        "--restore", type=int, default=0, help="also time restoring N workflows' state"
    )
    args = parser.parse_args()

    settings = Settings.from_env(os.environ)
    configure_logging(settings.model_copy(update={"log_level": "warning"}))
    if args.cmd == "relay":
        relay(settings, args.source, args.sink, args.count)
        return
    if args.cmd == "collect":
        collect(settings, args.topic, args.count, args.out, args.events)
        return

    started_broker = False
    if not settings.bootstrap_servers:
        local = LocalKafka(settings)
        started_broker = local.status() is None
        settings = settings.with_bootstrap(local.start())
    settings = settings.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:6]}."})
    topology = Topology.load(settings.topology_file)
    apply_topics(
        _clients(settings, "bench").admin(),
        topology,
        desired_topics(topology, Topics(settings.topic_prefix), ["noop"]),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            work = Path(tmp)
            print(
                f"benchmark: {args.tasks} tasks each; baseline first, then the platform", flush=True
            )
            baseline = run_baseline(settings, args.tasks, work)
            platform = run_platform(settings, args.tasks, work)
            print()
            print(f"{'':26}{'tasks/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
            for name, row in (
                ("raw confluent-kafka relay", baseline),
                ("platform (1-step noop)", platform),
            ):
                print(
                    f"{name:26}{row['tasks_per_s']:>10.0f}{row['p50_ms']:>10.0f}{row['p99_ms']:>10.0f}"
                )
            ratio = {
                key: platform[key] / baseline[key] for key in ("tasks_per_s", "p50_ms", "p99_ms")
            }
            print(
                f"{'platform / baseline':26}{ratio['tasks_per_s']:>10.2f}"
                f"{ratio['p50_ms']:>10.2f}{ratio['p99_ms']:>10.2f}"
            )
            if args.restore:
                restore = run_restore(settings, args.restore)
                print(
                    f"\nrestore: {restore['workflows']:.0f} in-flight workflows from the "
                    f"changelog in {restore['total_s']:.1f} s (reading {restore['read_s']:.1f} s, "
                    f"{restore['workflows'] / restore['total_s']:.0f} workflows/s)"
                )
            print("\nwhere the orchestrator's time goes (cProfile, top 15 by own time):")
            stats = pstats.Stats(str(platform["profile"]))
            stats.sort_stats("tottime").print_stats(15)
    finally:
        if started_broker:
            LocalKafka(settings).stop()


if __name__ == "__main__":
    main()
