"""Shared fixtures: one real broker per test session, unique topics per test.

The broker is chosen as DESIGN §9 says: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a
testcontainers Kafka if a Docker engine answers; else the local Maven-fetched broker in a
run dir of its own (never the user's ``fleet kafka start`` broker). It starts only when a
test asks for it, so ``-m unit`` runs need neither Docker nor Java.
"""

from __future__ import annotations

import gc
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from fleet.settings import Settings
from fleetctl.localkafka import LocalKafka

# Confluent Platform 8.1 is Apache Kafka 4.1, which has share groups (KIP-932) as a preview;
# testcontainers' KafkaContainer drives the cp-kafka image's own start scripts.
_DEFAULT_TEST_IMAGE = "confluentinc/cp-kafka:8.1.0"


UNIT_DIR = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # Every test under tests/unit/ says so: an unmarked one is silently skipped by
        # `-m unit` (the market's property tests were, before this check).
        if item.path.is_relative_to(UNIT_DIR) and item.get_closest_marker("unit") is None:
            raise pytest.UsageError(
                f"{item.nodeid} is under tests/unit/ but not marked unit; add "
                "`pytestmark = pytest.mark.unit` to its module"
            )
        # A unit test that pulls in the broker would make `-m unit` need Java or Docker.
        uses_broker = "kafka_bootstrap" in getattr(item, "fixturenames", ())
        if uses_broker and item.get_closest_marker("unit") is not None:
            raise pytest.UsageError(
                f"{item.nodeid} is marked unit but uses the Kafka broker; mark it kafka"
            )


def _docker_answers() -> bool:
    """A cheap probe: is there a Docker engine that answers within a few seconds?"""
    # The docker SDK leaks its socket when the engine is absent; its ResourceWarning would
    # surface (as an error) in some unrelated test, so collect it here with warnings off.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # noqa: PLC0415 - Docker machinery only when no cluster is named

            client = docker.from_env(timeout=5)
            try:
                answers = bool(client.ping())
            finally:
                client.close()
        except Exception:
            answers = False
        gc.collect()
    return answers


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """Put structlog back after each test. A test that runs the CLI's main() configures it
    to print to pytest's captured stderr, which is closed once the test ends; the session
    broker's teardown would then log into a closed file."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of a real broker, shared by the whole session."""
    env = dict(os.environ)
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield env["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_answers():
        yield from _container_broker(env.get("FLEET_TEST_KAFKA_IMAGE") or _DEFAULT_TEST_IMAGE)
        return
    # The user's FLEET_KAFKA_CACHE / FLEET_KAFKA_VERSION still apply (the jar cache is
    # shared and read-only once fetched); only the run dir is private to this session.
    base = Settings.from_env(env)
    run_dir = tmp_path_factory.mktemp("localkafka")
    local = LocalKafka(base.model_copy(update={"kafka_run_dir": run_dir}))
    bootstrap = local.start(timeout_s=120)
    try:
        yield bootstrap
    finally:
        local.stop()


def _container_broker(image: str) -> Iterator[str]:
    # Newer testcontainers moved KafkaContainer and warn (an error here) on the old path.
    try:
        from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415
    except ImportError:
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415

    container = KafkaContainer(image).with_kraft()
    # One broker: internal topics must not ask for three replicas, or transactions and
    # share groups never get their coordinators. The product creates its topics itself.
    for key, value in {
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }.items():
        container.with_env(key, value)
    with container as kafka:
        _enable_share_groups(kafka.get_wrapped_container())
        yield kafka.get_bootstrap_server()


def _enable_share_groups(container: Any) -> None:
    # Share groups are off by default before Kafka 4.2 (feature share.version=0), and a
    # broker that does not know the feature cannot have them at all.
    tool = "kafka-features --bootstrap-server localhost:9092"
    _, described = container.exec_run(f"{tool} describe")
    level = re.search(rb"Feature: share\.version\s.*?FinalizedVersionLevel: (\d+)", described)
    if level is None or int(level[1]) >= 1:
        return
    code, output = container.exec_run(f"{tool} upgrade --feature share.version=1")
    if code != 0:
        raise RuntimeError(f"could not enable share groups: {output.decode(errors='replace')}")


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    """Settings for one test: the session's broker and a topic prefix no other test uses."""
    env = dict(os.environ)  # keeps FLEET_KAFKA_CLIENT_* (SASL/SSL) for an external cluster
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    env["FLEET_TOPIC_PREFIX"] = f"t-{uuid.uuid4().hex[:8]}."
    return Settings.from_env(env)
