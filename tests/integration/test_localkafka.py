from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fleet.errors import LocalKafkaError
from fleet.localkafka import LocalKafka
from fleet.settings import Settings


def _local(run_dir: Path, **update: object) -> LocalKafka:
    # The user's jar cache and version (FLEET_KAFKA_CACHE/VERSION) are shared; the run
    # dir is this test's own, so the broker started here is nobody else's.
    base = Settings.from_env(dict(os.environ))
    return LocalKafka(base.model_copy(update={"kafka_run_dir": run_dir, **update}))


@pytest.mark.kafka
def test_start_is_idempotent_serves_records_and_stop_is_idempotent(tmp_path: Path) -> None:
    local = _local(tmp_path / "run")
    try:
        bootstrap = local.start(timeout_s=120)
        status = local.status()
        assert status is not None
        assert status.bootstrap == bootstrap
        assert status.run_dir == (tmp_path / "run").resolve()
        assert bootstrap.startswith("127.0.0.1:")

        # A second start, even from another LocalKafka on the same run dir, finds it.
        assert _local(tmp_path / "run").start() == bootstrap
        assert local.status() == status

        topic = f"localkafka-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, key=b"k", value=b"hello")
        assert producer.flush(30) == 0
        assert _read_all(bootstrap, topic) == [(b"k", b"hello")]

        # A restart keeps the data, the cluster id and the port: clients need not follow.
        assert local.restart(timeout_s=120) == bootstrap
        restarted = local.status()
        assert restarted is not None
        assert restarted.pid != status.pid
        assert _read_all(bootstrap, topic) == [(b"k", b"hello")]
    finally:
        stopped = local.stop()
    assert stopped is True
    assert local.status() is None
    assert local.stop() is False


def _read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        records = consumer.consume(1, timeout=30)
    finally:
        consumer.close()
    assert [r.error() for r in records] == [None]
    return [(r.key(), r.value()) for r in records]


@pytest.mark.unit
def test_missing_java_says_how_to_fix_it(tmp_path: Path) -> None:
    no_tools = LocalKafka(
        Settings(kafka_cache_dir=tmp_path / "cache", kafka_run_dir=tmp_path / "run"),
        which=lambda _name: None,
    )
    for action in (no_tools.ensure_jars, no_tools.start):
        with pytest.raises(LocalKafkaError) as raised:
            action()
        message = str(raised.value)
        assert "Java 17+ is required" in message
        assert "openjdk-17-jre-headless" in message
        assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert no_tools.status() is None
    assert no_tools.stop() is False


@pytest.mark.unit
def test_missing_maven_says_how_to_fix_it(tmp_path: Path) -> None:
    # Java must pass the version check, so hand over the real one (or skip without it).
    real_java = shutil.which("java")
    if real_java is None:
        pytest.skip("no java on PATH")
    no_mvn = LocalKafka(
        Settings(kafka_cache_dir=tmp_path / "cache", kafka_run_dir=tmp_path / "run"),
        which=lambda name: real_java if name == "java" else None,
    )
    with pytest.raises(LocalKafkaError, match=r"Maven \(mvn\) is required"):
        no_mvn.ensure_jars()
    assert not (tmp_path / "cache").exists()
