"""Shared plumbing of the fleet control plane: settings, codec, Kafka clients and the CLI."""

from fleet.errors import FleetError
from fleet.settings import Settings

__all__ = ["FleetError", "Settings"]
