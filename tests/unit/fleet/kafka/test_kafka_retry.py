"""Which client errors fleet retries: pure judgement on real KafkaError values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from fleet.errors import BrokerError
from fleet.kafka import retry_transient

pytestmark = pytest.mark.unit


def _failing(errors: list[BaseException]) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return calls, call


def test_a_retriable_error_wrapped_in_a_broker_error_is_retried() -> None:
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "waiting for controller"))
    wrapped = BrokerError("cannot list topics")
    wrapped.__cause__ = timed_out
    calls, call = _failing([wrapped, timed_out])
    assert retry_transient(call, timeout_s=5) == "done"
    assert len(calls) == 3


def test_a_permanent_error_is_raised_at_once_wrapped_or_not() -> None:
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    wrapped = BrokerError("cannot create topic")
    wrapped.__cause__ = denied
    for error in (denied, wrapped):
        calls, call = _failing([error])
        with pytest.raises(type(error)):
            retry_transient(call, timeout_s=5)
        assert len(calls) == 1
