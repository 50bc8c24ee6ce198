"""The kernel: contracts and plumbing every process shares (settings, errors, messages,
codec, topology, Kafka clients). It imports nothing else of ours."""

from fleet.errors import FleetError
from fleet.settings import Settings

__all__ = ["FleetError", "Settings"]
