"""The product's Kafka clients across a broker restart (a private broker, restarted)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from fleet.kafka import KafkaClients
from fleet.settings import Settings
from fleetctl.localkafka import LocalKafka

pytestmark = pytest.mark.kafka


# A finding of the fault runs: with librdkafka's default metadata.recovery.strategy
# (rebootstrap), send_offsets_to_transaction() hung past its own timeout after a single
# broker restart (librdkafka#5511) and wedged every orchestrator. The loop below is the
# orchestrator's transaction cycle; each call must return within its timeout.
@pytest.mark.timeout(240)
def test_transactions_go_on_after_a_broker_restart(tmp_path: Path) -> None:
    base = Settings.from_env(dict(os.environ))
    local = LocalKafka(base.model_copy(update={"kafka_run_dir": tmp_path / "kafka"}))
    bootstrap = local.start(timeout_s=120)
    try:
        clients = KafkaClients(base, bootstrap, role="test")
        admin = clients.ready_admin()
        for future in admin.create_topics([NewTopic("in", 2, 1), NewTopic("out", 2, 1)]).values():
            future.result(30)
        feeder = clients.producer()
        for i in range(5000):
            feeder.produce("in", value=b"%d" % i)
        assert feeder.flush(30) == 0
        consumer = clients.consumer(f"g-{uuid.uuid4().hex}")
        consumer.subscribe(["in"])
        producer = clients.producer(**{"transactional.id": f"t-{uuid.uuid4().hex}"})
        producer.init_transactions(30)
        restarter = threading.Thread(target=lambda: local.restart(down_s=7, timeout_s=120))
        batches_after_restart = 0
        slowest = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and batches_after_restart < 20:
            records = [r for r in consumer.consume(20, timeout=0.2) if r.error() is None]
            if not records:
                continue
            if not restarter.is_alive() and restarter.ident is None:
                restarter.start()  # the broker goes down with a transaction in flight
            producer.begin_transaction()
            for record in records:
                producer.produce("out", value=record.value())
            offsets = [
                TopicPartition("in", r.partition() or 0, (r.offset() or 0) + 1) for r in records
            ]
            started = time.monotonic()
            try:
                producer.send_offsets_to_transaction(
                    offsets,
                    consumer.consumer_group_metadata(),
                    40,
                )
                producer.commit_transaction(40)
            except KafkaException as exc:
                assert exc.args[0].txn_requires_abort(), exc
                producer.abort_transaction(40)
                for tp in consumer.committed(consumer.assignment(), timeout=30):
                    consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
            slowest = max(slowest, time.monotonic() - started)
            if restarter.ident is not None and not restarter.is_alive():
                batches_after_restart += 1
        restarter.join(120)
        consumer.close()
        assert batches_after_restart >= 20, f"transactions stalled (slowest call {slowest:.1f} s)"
        assert slowest < 45
    finally:
        local.stop()
