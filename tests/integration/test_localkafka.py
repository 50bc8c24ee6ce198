from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from fleet.errors import LocalKafkaError
from fleet.settings import Settings
from fleetctl.localkafka import KeptBroker, LocalKafka
from fleetctl.localkafka.kept import read_kept, write_kept
from fleetctl.localkafka.nodes import free_ports, layout, server_properties


def _local(run_dir: Path, nodes: int = 1, **update: object) -> LocalKafka:
    # The user's jar cache and version (FLEET_KAFKA_CACHE/VERSION) are shared; the run
    # dir is this test's own, so the broker started here is nobody else's.
    base = Settings.from_env(dict(os.environ))
    return LocalKafka(base.model_copy(update={"kafka_run_dir": run_dir, **update}), nodes)


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


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_stopped_broker_starts_again_on_its_port_and_data_and_fresh_wipes_it(
    tmp_path: Path,
) -> None:
    # The trap of issue 10: stop then start wiped every topic and moved the port, so the
    # orchestrator and worker still running retried the old address forever.
    run_dir = tmp_path / "run"
    local = _local(run_dir)
    try:
        bootstrap = local.start(timeout_s=120)
        status = local.status()
        assert status is not None
        assert status.data_dirs == (run_dir.resolve() / "data",)
        topic = f"localkafka-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, key=b"k", value=b"kept")
        assert producer.flush(30) == 0
        del producer, admin  # no client outlives the broker it talks to

        assert local.stop() is True
        kept = local.kept()
        assert kept is not None
        assert kept.bootstrap == bootstrap
        assert kept.data_dirs == status.data_dirs

        # Another process's LocalKafka (a new `fleet kafka start`) finds the same place.
        again = _local(run_dir)
        assert again.start(timeout_s=120) == bootstrap
        assert _read_all(bootstrap, topic) == [(b"k", b"kept")]

        # Fresh on request: the data goes (the port stays, being free).
        assert again.start(timeout_s=120, fresh=True) == bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert topic not in admin.list_topics(timeout=30).topics
        del admin
    finally:
        local.stop()


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_three_nodes_lose_nothing_when_a_partition_leader_is_killed(tmp_path: Path) -> None:
    cluster = _local(tmp_path / "run", nodes=3)
    try:
        bootstrap = cluster.start(timeout_s=120)
        assert len(bootstrap.split(",")) == 3
        status = cluster.status()
        assert status is not None
        assert sorted(status.pids) == [1, 2, 3]
        assert cluster.start() == bootstrap  # finds the running cluster

        topic = f"localkafka-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        new = NewTopic(topic, 3, 3, config={"min.insync.replicas": "2"})
        admin.create_topics([new])[topic].result(timeout=30)
        producer = Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True}
        )
        _produce(producer, topic, range(100))

        leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
        cluster.kill_node(leader)
        down = cluster.status()
        assert down is not None
        assert sorted(down.pids) == sorted({1, 2, 3} - {leader})
        # acks=all with min ISR 2 still succeeds once partition 0 has a new leader.
        _produce(producer, topic, range(100, 200))
        assert _read_partitions(bootstrap, topic, 3) == {
            partition: [f"{partition}-{i}".encode() for i in range(200)] for partition in range(3)
        }

        cluster.start_node(leader, timeout_s=90)
        assert _brokers(admin, want=3) == 3
    finally:
        assert cluster.stop() is True
    assert cluster.status() is None


def _produce(producer: Producer, topic: str, numbers: range) -> None:
    failed: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(err)

    for i in numbers:
        for partition in range(3):
            producer.produce(
                topic, value=f"{partition}-{i}", partition=partition, on_delivery=delivered
            )
    assert producer.flush(60) == 0
    assert failed == []


def _read_partitions(bootstrap: str, topic: str, partitions: int) -> dict[int, list[bytes | None]]:
    """Every record of each partition, in offset order, up to its high watermark."""
    # Assigned, not subscribed: no group rebalance to wait for, and each partition is
    # read from its first offset to the high watermark taken here.
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        read: dict[int, list[bytes | None]] = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + 60
        while any(len(read[p]) < ends[p] for p in read) and time.monotonic() < deadline:
            for record in consumer.consume(500, timeout=1):
                assert record.error() is None
                read[record.partition()].append(record.value())
    finally:
        consumer.close()
    return read


def _brokers(admin: AdminClient, want: int) -> int:
    # The restarted node answers once unfenced; the others' metadata may lag a moment.
    deadline = time.monotonic() + 30
    while True:
        brokers = len(admin.list_topics(timeout=10).brokers)
        if brokers == want or time.monotonic() > deadline:
            return brokers
        time.sleep(0.5)


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


@pytest.mark.unit
def test_server_properties_replicate_by_cluster_size(tmp_path: Path) -> None:
    def props(node_id: int, ports: list[tuple[int, int]]) -> dict[str, str]:
        text = server_properties(node_id, ports, tmp_path / "data")
        return dict(line.split("=", 1) for line in text.splitlines())

    single = props(1, [(9092, 9093)])
    assert single["node.id"] == "1"
    assert single["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert single["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert single["log.dirs"] == str(tmp_path / "data")

    second = props(2, [(9092, 9093), (9192, 9193), (9292, 9293)])
    assert second["node.id"] == "2"
    assert second["controller.quorum.voters"] == (
        "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"
    )
    assert second["listeners"] == "PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193"
    assert second["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9192"

    # One node replicates nothing; three tolerate one node down for acks=all writes.
    for config, replicas, min_isr in ((single, "1", "1"), (second, "3", "2")):
        for key in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "share.coordinator.state.topic.replication.factor",
        ):
            assert config[key] == replicas, key
        for key in (
            "min.insync.replicas",
            "transaction.state.log.min.isr",
            "share.coordinator.state.topic.min.isr",
        ):
            assert config[key] == min_isr, key


@pytest.mark.unit
def test_a_single_broker_keeps_its_files_in_the_run_dir(tmp_path: Path) -> None:
    (single,) = layout(tmp_path, ["127.0.0.1:9092"])
    assert single.pid_file == tmp_path / "broker.pid"
    assert single.data == tmp_path / "data"
    cluster = layout(tmp_path, ["127.0.0.1:9092", "127.0.0.1:9192", "127.0.0.1:9292"])
    assert [node.node_id for node in cluster] == [1, 2, 3]
    assert cluster[2].dir == tmp_path / "node-3"
    assert cluster[2].address == "127.0.0.1:9292"


def _keep(run_dir: Path, ports: list[tuple[int, int]], version: str = "4.2.1") -> None:
    """A run dir as a stopped broker leaves it: its recorded ports, its formatted data."""
    run_dir.mkdir(parents=True)
    write_kept(KeptBroker(run_dir, version, tuple(ports)))
    for node in layout(run_dir, [f"127.0.0.1:{port}" for port, _ in ports]):
        node.data.mkdir(parents=True)
        (node.data / "meta.properties").write_text("cluster.id=kept\n")


@pytest.mark.unit
def test_a_taken_port_is_an_error_not_a_silent_move(tmp_path: Path) -> None:
    port, cport = free_ports(2)
    _keep(tmp_path / "run", [(port, cport)])
    local = LocalKafka(Settings(kafka_cache_dir=tmp_path / "cache", kafka_run_dir=tmp_path / "run"))
    kept = local.kept()
    assert kept is not None
    assert kept.bootstrap == f"127.0.0.1:{port}"
    assert kept.data_dirs == ((tmp_path / "run").resolve() / "data",)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(LocalKafkaError) as raised:
            local.start()
    message = str(raised.value)
    assert f"listens on 127.0.0.1:{port}, but another process holds port(s) {port}" in message
    assert "fleet kafka start --fresh" in message
    assert (tmp_path / "run" / "data" / "meta.properties").is_file()  # nothing wiped
    assert read_kept(tmp_path / "run") == kept  # nor moved


@pytest.mark.unit
def test_a_throwaway_broker_lives_beside_and_never_resumes(tmp_path: Path) -> None:
    settings = Settings(kafka_cache_dir=tmp_path / "cache", kafka_run_dir=tmp_path / "kafka")
    demo = LocalKafka.throwaway(settings, "demo")
    assert demo.run_dir == tmp_path.resolve() / "demo-kafka"
    assert demo.keep is False
    # Kept data and a squatted port would stop a resume; a throw-away start is a fresh one
    # instead (it gets as far as looking for Java, which this test hides).
    port, cport = free_ports(2)
    _keep(tmp_path / "demo-kafka", [(port, cport)])
    own = settings.model_copy(update={"kafka_run_dir": tmp_path / "demo-kafka"})
    no_java = LocalKafka(own, keep=False, which=lambda _name: None)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(LocalKafkaError, match="Java 17\\+ is required"):
            no_java.start()
        with pytest.raises(LocalKafkaError, match="another process holds"):
            LocalKafka(own, which=lambda _name: None).start()  # kept: resumed, so refused


@pytest.mark.unit
def test_what_a_run_dir_keeps(tmp_path: Path) -> None:
    settings = Settings(kafka_cache_dir=tmp_path / "cache", kafka_run_dir=tmp_path / "run")
    assert LocalKafka(settings).kept() is None  # never started
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ports.json").write_text("{not json")
    assert read_kept(tmp_path / "run") is None
    # Ports recorded but no data (a format that failed, data removed): nothing to resume.
    write_kept(KeptBroker(tmp_path / "run", "4.2.1", ((9092, 9093),)))
    assert LocalKafka(settings).kept() is None
    # A kept 3-node cluster is not resumed as one broker, nor wiped without asking.
    _keep(tmp_path / "three", [(9092, 9093), (9192, 9193), (9292, 9293)])
    three = LocalKafka(settings.model_copy(update={"kafka_run_dir": tmp_path / "three"}))
    kept = three.kept()
    assert kept is not None
    assert kept.bootstrap == "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    assert kept.data_dirs[2] == (tmp_path / "three").resolve() / "node-3" / "data"
    with pytest.raises(LocalKafkaError, match="has 3 node\\(s\\), not 1; start it fresh"):
        three.start()
    assert (tmp_path / "three" / "node-1" / "data" / "meta.properties").is_file()


@pytest.mark.unit
def test_node_operations_need_a_cluster(tmp_path: Path) -> None:
    settings = Settings(kafka_cache_dir=tmp_path / "cache", kafka_run_dir=tmp_path / "run")
    with pytest.raises(LocalKafkaError, match="at least one node"):
        LocalKafka(settings, nodes=0)
    local = LocalKafka(settings, nodes=3)
    with pytest.raises(LocalKafkaError, match="start it first"):
        local.kill_node(1)
    with pytest.raises(LocalKafkaError, match="start it first"):
        local.start_node(1)
