"""The benchmark's measured runs: the raw relay baseline and the platform, as a burst,
as a paced load and at a sweep of offered loads, the helper processes they start
(relay, collect), and the restore of in-flight state from the changelog."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench_common import (
    FAN_OUT_100,
    NOOP,
    PARTITIONS,
    SEQUENCE_10,
    FleetLoad,
    RawLoad,
    clients,
    fresh_topics,
    latencies,
    paced,
    paced_figures,
    percentile,
    quantiles,
    raw_topics,
    spawn,
    take_batch,
)
from bench_peers import PeerRun, run_celery
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from pydantic import JsonValue

from fleet.kafka.client import FleetClient
from fleet.messages import WorkflowEvent, WorkflowSubmitted
from fleet.settings import Settings
from fleet.topology import Topics
from fleetctl.supervisor import Supervisor
from orchestrator.engine import Engine
from orchestrator.shell import changelog

COLLECT_TIMEOUT_S = 180
WORKER_CONCURRENCY = 16  # the platform's worker; the peers' Celery worker gets the same


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


def relay(settings: Settings, source: str, sink: str, count: int, group: str | None) -> None:
    """The baseline worker: consume, answer, commit — no decoding, no orchestration.

    ``count`` 0 relays until killed (the recovery baseline: two relays in ``group``)."""
    kafka = clients(settings, "bench-relay")
    consumer: Consumer = kafka.consumer(group or f"bench-relay-{uuid.uuid4().hex}")
    producer: Producer = kafka.producer()
    consumer.subscribe([source])
    seen = 0
    while seen < count or count == 0:
        # consume(500, timeout) would hold a part-filled batch for its whole timeout (it
        # did: 50 ms, most of the relay's paced latency): block for the first record
        # only, then take what is already fetched. Under a burst batches still grow.
        records = take_batch(consumer, 500, 0.5)
        offsets: dict[int, int] = {}
        for record in records:
            if record.error() is None:
                producer.produce(sink, key=record.key(), value=record.value())
                offsets[record.partition() or 0] = (record.offset() or 0) + 1
                seen += 1
        if offsets:
            # Like a worker: results durable first, then the inputs' offsets.
            producer.flush(30)
            try:
                consumer.commit(
                    offsets=[TopicPartition(source, p, o) for p, o in offsets.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                # A rebalance under way (the recovery baseline kills a member): like a
                # worker, go on; the uncommitted records are redelivered to their owner.
                print(f"relay: commit failed, going on: {exc}", file=sys.stderr)
    consumer.close()


def collect(settings: Settings, topic: str, count: int, out: Path, events: bool) -> None:
    """Record the arrival time of each result (raw) or terminal workflow event (platform)."""
    consumer: Consumer = clients(settings, "bench-collect").consumer(
        f"bench-collect-{uuid.uuid4().hex}"
    )
    client = FleetClient(settings, role="bench-collect") if events else None
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    took: list[float] = []
    first = last = 0.0
    deadline = time.monotonic() + COLLECT_TIMEOUT_S
    while len(took) < count and time.monotonic() < deadline:
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
                sent = json.loads(record.value() or b"{}")["sent"]
            took.append(now - sent)
            first = first or now
            last = now
    consumer.close()
    out.write_text(json.dumps({"latencies": took, "last": last}))


def _summary(name: str, start: float, result: Path, count: int) -> dict[str, float]:
    data = json.loads(result.read_text())
    return burst_figures(name, start, data["latencies"], data["last"], count)


def burst_figures(
    name: str, start: float, took: list[float], last: float, count: int
) -> dict[str, float]:
    """A burst's throughput (``count`` over start to ``last`` result) and latencies."""
    lat = sorted(took)
    if len(lat) < count:
        raise SystemExit(f"{name}: only {len(lat)} of {count} arrived")
    return {
        "tasks_per_s": count / (last - start),
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
    } | quantiles("burst", lat)


def celery_figures(run: PeerRun, count: int) -> dict[str, float]:
    """The peers section's Celery run in the platform rows' figures."""
    missing = run.paced_sent - len(run.paced)
    if missing:
        raise SystemExit(f"paced Celery: {missing} of {run.paced_sent} did not come back")
    last = max((seen for _, seen in run.burst), default=run.start)
    burst = [seen - sent for sent, seen in run.burst]
    figures = burst_figures("Celery", run.start, burst, last, count)
    figures["submit_per_s"] = count / (run.submitted - run.start)
    return figures | paced_figures([seen - sent for sent, seen in run.paced])


def run_peers(
    settings: Settings,
    count: int,
    work: Path,
    *,
    paced_load: tuple[float, float],
    pool: str,
) -> tuple[dict[str, float], dict[str, float], str]:
    """The platform (default guarantee) and Celery, each a burst then a paced load:
    (platform figures, Celery figures, what Celery ran as). Celery's venv is kept in
    ``$XDG_CACHE_HOME/fleet/bench-peers`` (``~/.cache`` by default)."""
    platform = run_platform(settings, count, work, paced_load=paced_load)
    print("peers: Celery with Redis", flush=True)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    peer = run_celery(
        count,
        paced_load,
        work,
        cache=cache / "fleet" / "bench-peers",
        concurrency=WORKER_CONCURRENCY,
        pool=pool,
    )
    return platform, celery_figures(peer, count), peer.label


def run_baseline(settings: Settings, count: int, work: Path) -> dict[str, float]:
    source, sink = raw_topics(settings)
    out = work / "baseline.json"
    procs = [
        spawn(settings, "relay", source, sink, str(count)),
        spawn(settings, "collect", sink, str(count), str(out)),
    ]
    time.sleep(3)  # let both join before the clock starts
    producer = clients(settings, "bench-produce").producer()
    start = time.time()
    for i in range(count):
        value = json.dumps({"sent": time.time(), "n": i}).encode()
        producer.produce(source, key=str(i).encode(), value=value)
        producer.poll(0)
    producer.flush(60)
    _wait_all(procs)
    return _summary("baseline", start, out, count)


def paced_relay_latency(settings: Settings, rate: float, seconds: float) -> dict[str, float]:
    """The raw relay under the same paced load as the platform's: the latency floor."""
    source, sink = raw_topics(settings)
    group = f"bench-relay-{uuid.uuid4().hex}"
    relay_process = spawn(settings, "relay", source, sink, "0", "--group", group)
    try:
        FleetClient(settings, role="bench").wait_for_groups([group], 1, timeout_s=60)
        load = RawLoad(settings, source, sink)
        try:
            run = paced(load, rate, seconds)
        finally:
            load.close()
    finally:
        relay_process.kill()
        relay_process.wait(10)
    return latencies("paced relay", run)


def run_platform(
    settings: Settings,
    count: int,
    work: Path,
    *,
    orchestrator_args: tuple[str, ...] = (),
    profile: Path | None = None,
    paced_load: tuple[float, float] | None = None,
    shapes: bool = False,
    sweep: tuple[tuple[float, ...], float] | None = None,
) -> dict[str, float]:
    """A burst of ``count`` workflows on fresh topics; then, with ``paced_load`` (rate,
    seconds), a steady load whose latency is the guarantee's own, not queueing; with
    ``sweep`` (shares of the burst's rate, seconds each), paced loads at those rates."""
    settings = fresh_topics(settings)
    out = work / f"platform-{settings.topic_prefix}json"
    with Supervisor(settings, work / "logs" / settings.topic_prefix) as supervisor:
        supervisor.start("orchestrator", ["orchestrator", *orchestrator_args], profile_to=profile)
        supervisor.start(
            "worker",
            ["worker", "--app", "workers.examples:app", "--concurrency", str(WORKER_CONCURRENCY)],
        )
        collector = spawn(
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
        start = time.time()
        for _ in range(count):
            client.submit(NOOP, flush=False)
        client.flush(60)
        _wait_all([collector])
        result = _summary("platform", start, out, count + 1)
        if paced_load is not None:
            result |= _paced_latency(settings, *paced_load)
            if shapes:
                result |= _shape_latencies(settings)
        if sweep is not None:
            result |= _sweep(settings, result["tasks_per_s"], *sweep)
        supervisor.stop_all()
    return result


def _paced_latency(
    settings: Settings, rate: float, seconds: float, spec: JsonValue = NOOP
) -> dict[str, float]:
    load = FleetLoad(settings, spec)
    try:
        run = paced(load, rate, seconds)
    finally:
        load.close()
    return latencies("paced platform", run)


# Paced runs of the other shapes: (name, spec, workflows/s, seconds). Low rates: each
# workflow is 10 or 101 tasks, and the point is latency without queueing.
SHAPES = (("seq10", SEQUENCE_10, 10.0, 3.0), ("fan100", FAN_OUT_100, 2.0, 3.0))


def _shape_latencies(settings: Settings) -> dict[str, float]:
    """p50/p99 of a ten-step sequence and of a fan-out of 100 with fan-in, paced."""
    result: dict[str, float] = {}
    for name, spec, rate, seconds in SHAPES:
        row = _paced_latency(settings, rate, seconds, spec)
        result[f"{name}_p50_ms"] = row["paced_p50_ms"]
        result[f"{name}_p99_ms"] = row["paced_p99_ms"]
    return result


def _sweep(
    settings: Settings, peak: float, shares: tuple[float, ...], seconds: float
) -> dict[str, float]:
    """p50/p99 at paced loads offered at ``shares`` of the ``peak`` rate (the burst's):
    ``load{i}_share``, ``load{i}_rate``, ``load{i}_p50_ms``, ``load{i}_p99_ms``."""
    result: dict[str, float] = {}
    for i, share in enumerate(shares):
        row = _paced_latency(settings, share * peak, seconds)
        result |= {f"load{i}_share": share, f"load{i}_rate": share * peak}
        result |= {f"load{i}_p50_ms": row["paced_p50_ms"], f"load{i}_p99_ms": row["paced_p99_ms"]}
        print(
            f"  load {share:.0%} of peak ({share * peak:.0f}/s): {row['paced_p50_ms']:.0f} ms p50, "
            f"{row['paced_p99_ms']:.0f} ms p99",
            flush=True,
        )
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
    producer = clients(settings, "bench-restore").producer()
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
        clients(settings, "bench-restore"), topic, range(PARTITIONS)
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


def print_platform(baseline: dict[str, float], platform: dict[str, float]) -> None:
    print()
    print(f"{'':26}{'tasks/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, row in (
        ("raw confluent-kafka relay", baseline),
        ("platform (1-step noop)", platform),
    ):
        print(f"{name:26}{row['tasks_per_s']:>10.0f}{row['p50_ms']:>10.0f}{row['p99_ms']:>10.0f}")
    ratio = {key: platform[key] / baseline[key] for key in ("tasks_per_s", "p50_ms", "p99_ms")}
    print(
        f"{'platform / baseline':26}{ratio['tasks_per_s']:>10.2f}"
        f"{ratio['p50_ms']:>10.2f}{ratio['p99_ms']:>10.2f}"
    )


def print_restore(restore: dict[str, float]) -> None:
    print(
        f"\nrestore: {restore['workflows']:.0f} in-flight workflows from the "
        f"changelog in {restore['total_s']:.1f} s (reading {restore['read_s']:.1f} s, "
        f"{restore['workflows'] / restore['total_s']:.0f} workflows/s)"
    )
