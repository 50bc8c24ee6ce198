"""The latency floor: the platform's four hops with plain confluent-kafka clients tuned
for latency, under the same paced load as the platform.

A one-step workflow is four produce->consume hops: request -> (orchestrator) -> task ->
(worker) -> result -> (orchestrator) -> event. Here an "orchestrator" process relays
requests to tasks and results to events, and a "worker" process relays tasks to results,
each with no decoding and no state: it blocks only for the first record, takes what is
already fetched without waiting, produces with a small linger and commits as it goes.
With ``transactional`` the orchestrator side does what exactly_once must at least do:
one transaction per batch (begin, produce, send the input offsets, commit), read by
read_committed consumers. What the platform costs beyond these rows is its own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench_common import PARTITIONS, RawLoad, clients, latencies, paced, spawn
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from fleet.kafka.client import FleetClient
from fleet.settings import Settings

FLOOR_LINGER_MS = 1  # a small linger: what a latency-tuned client would set
FIRST_WAIT_S = 0.5  # how long to block for the first record; never for a full batch
BATCH = 500
FLOOR_TXN_RETRY_BACKOFF_MS = 2
FLOOR_SETTLE_S = 5.0  # after the groups are stable, before the paced run
HOPS = ("requests", "tasks", "results", "events")


def floor_relay(
    settings: Settings, routes: dict[str, str], group: str, transactional: bool
) -> None:
    """Relay each record of a source topic to its destination (``routes``) until killed."""
    kafka = clients(settings, "bench-floor")
    consumer_config: dict[str, Any] = {}
    if not transactional:
        # A floor, not a worker: offsets stored when consumed and committed in the
        # background, no flush per batch.
        consumer_config |= {"enable.auto.commit": True, "enable.auto.offset.store": True}
    consumer: Consumer = kafka.consumer(group, **consumer_config)
    producer_config: dict[str, Any] = {"linger.ms": FLOOR_LINGER_MS}
    if transactional:
        producer_config |= {
            "transactional.id": f"bench-floor-{uuid.uuid4().hex}",
            # A transaction begun right after the last commit is refused with
            # CONCURRENT_TRANSACTIONS until the coordinator has written the markers; the
            # retry comes after this backoff (librdkafka's 100 ms, or the Java client's
            # 20, would be most of the floor).
            "retry.backoff.ms": FLOOR_TXN_RETRY_BACKOFF_MS,
        }
    producer: Producer = kafka.producer(**producer_config)
    if transactional:
        producer.init_transactions(60)
    consumer.subscribe(list(routes))
    while True:
        # Block for the first record only; then take whatever is already fetched.
        records = consumer.consume(1, timeout=FIRST_WAIT_S)
        if not records:
            continue
        records += consumer.consume(BATCH - 1, timeout=0)
        if transactional:
            producer.begin_transaction()
        offsets: dict[tuple[str, int], int] = {}
        for record in records:
            if record.error() is not None:
                continue
            topic = record.topic() or ""
            producer.produce(routes[topic], key=record.key(), value=record.value())
            offsets[(topic, record.partition() or 0)] = (record.offset() or 0) + 1
        if transactional:
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                consumer.consumer_group_metadata(),
                10,
            )
            producer.commit_transaction(10)
        else:
            producer.poll(0)


def floor_topics(settings: Settings) -> dict[str, str]:
    """Fresh topics for the four hops, named for the platform's."""
    run = uuid.uuid4().hex[:6]
    topics = {hop: f"{settings.topic_prefix}bench.floor.{run}.{hop}" for hop in HOPS}
    admin = clients(settings, "bench").admin()
    for future in admin.create_topics(
        [NewTopic(t, PARTITIONS, 1) for t in topics.values()]
    ).values():
        future.result()
    return topics


def paced_floor_latency(
    settings: Settings, rate: float, seconds: float, *, transactional: bool
) -> dict[str, float]:
    """The four hops under the paced load: the floor for the platform's paced rows."""
    topics = floor_topics(settings)
    run_id = uuid.uuid4().hex[:6]
    groups = [f"bench-floor-orchestrator-{run_id}", f"bench-floor-worker-{run_id}"]
    routes = [
        (groups[0], [("requests", "tasks"), ("results", "events")], transactional),
        (groups[1], [("tasks", "results")], False),
    ]
    procs = []
    for group, pairs, txn in routes:
        args = ["floor", "--group", group]
        args += [f"--route={topics[src]}={topics[dst]}" for src, dst in pairs]
        procs.append(spawn(settings, *args, *(["--transactional"] if txn else [])))
    try:
        FleetClient(settings, role="bench").wait_for_groups(groups, 1, timeout_s=60)
        # Measured runs started at once saw every hop stall for 100-300 ms about 2.6 s in,
        # each time (not the first offset commit, not the first fetch of a partition);
        # started 5 s later, none did. The platform's rows are measured after a burst.
        time.sleep(FLOOR_SETTLE_S)
        load = RawLoad(settings, topics["requests"], topics["events"], linger_ms=FLOOR_LINGER_MS)
        try:
            run = paced(load, rate, seconds)
        finally:
            load.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    return latencies("paced floor", run)
