"""The kernel: contracts and plumbing every process shares (settings, errors, messages,
codec, topology, Kafka clients). It imports nothing else of ours.

It is also the one import path for users: everything an agent module or a client
program needs is here, ``from fleet import App, TaskContext, RetryableError,
PermanentError, FleetClient``. The handler contract and the client load on first use
(PEP 562), so ``import fleet`` stays cheap for a process that needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.errors import ConfigError, FleetError, PermanentError, RetryableError
from fleet.settings import Settings

if TYPE_CHECKING:
    from fleet.app import App, TaskContext
    from fleet.kafka.client import FleetClient

__all__ = [
    "App",
    "ConfigError",
    "FleetClient",
    "FleetError",
    "PermanentError",
    "RetryableError",
    "Settings",
    "TaskContext",
]

_LAZY = {"App": "fleet.app", "TaskContext": "fleet.app", "FleetClient": "fleet.kafka.client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - only on first use of a lazy name

    return getattr(importlib.import_module(module), name)
