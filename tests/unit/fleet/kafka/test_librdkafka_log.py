"""librdkafka's log lines: a condition it retries by itself is logged at debug, not as a
warning every demo printed ("GETPID ... Coordinator load in progress: retrying")."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from confluent_kafka import KafkaError
from structlog.testing import capture_logs

from fleet.kafka import clients

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """capture_logs needs loggers not cached by an earlier configure_logging; the
    configuration is put back afterwards."""
    before = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**before)


GETPID = (
    "GETPID [fleet-demo-vm-24442#producer-4] [thrd:main]: Failed to acquire idempotence PID "
    "from broker 127.0.0.1:44887/1: Broker: Coordinator load in progress: retrying"
)


def _librdkafka_line(level: int, message: str) -> list[dict[str, object]]:
    """What our handler makes of one librdkafka log line (it logs ``fac [name] text``)."""
    record = logging.LogRecord("fleet.librdkafka", level, "", 0, "%s [%s] %s", (), None)
    fac, rest = message.split(" ", 1)
    record.args = (fac, "rdkafka", rest)
    with capture_logs() as logs:
        clients._ToStructlog().emit(record)
    return logs


def test_the_coordinator_load_retry_is_debug() -> None:
    (entry,) = _librdkafka_line(logging.WARNING, GETPID)
    assert entry["log_level"] == "debug" and entry["source"] == "librdkafka"
    assert "Coordinator load in progress" in str(entry["event"])


def test_other_warnings_stay_warnings() -> None:
    (entry,) = _librdkafka_line(logging.WARNING, "FAIL [thrd:x]: Connection refused")
    assert entry["log_level"] == "warning"


def test_a_coordinator_load_error_is_debug() -> None:
    with capture_logs() as logs:
        clients._log_client_error(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS))
        clients._log_client_error(KafkaError(KafkaError._TRANSPORT))
    assert [entry["log_level"] for entry in logs] == ["debug", "warning"]
