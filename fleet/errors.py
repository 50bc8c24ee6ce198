"""One error root for the whole product, with a few branches.

Errors that come from a Kafka record keep that record (like confluent-kafka's
``ConsumeError.kafka_message``), so whoever catches them can dead-letter it.
"""

from __future__ import annotations

from typing import Any


class FleetError(Exception):
    """Root of every error this product raises on purpose."""


class ConfigError(FleetError):
    """Settings, topology or environment are wrong; the message says how to fix it."""


class BrokerError(FleetError):
    """The Kafka broker could not be reached or refused an operation after retries."""


class LocalKafkaError(FleetError):
    """The embedded local broker could not be fetched, started or stopped."""


class SchemaError(FleetError):
    """A schema file is missing, invalid or incompatible with its previous version."""


class DecodeError(FleetError):
    """A record could not be decoded; ``record`` is the raw Kafka message, if any."""

    def __init__(self, reason: str, *, record: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record = record


class SpecError(FleetError):
    """A workflow spec is invalid. ``problems`` lists every (location, reason) found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {why}" for where, why in problems))


class ResolutionError(FleetError):
    """A ``$.`` reference could not be resolved against the workflow context at run time."""


class HandlerError(FleetError):
    """Raised by user handlers (through its two subclasses) to steer retries."""

    retryable: bool = True


class RetryableError(HandlerError):
    """The task failed but may succeed if tried again (the step's ``retries`` decide)."""

    retryable = True


class PermanentError(HandlerError):
    """The task failed and retrying cannot help: the step fails at once."""

    retryable = False


class MarketError(FleetError):
    """The market's books disagree with themselves (a replay that does not reproduce the
    ledger, a bid or lease applied against its rules)."""
