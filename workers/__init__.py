"""The worker SDK: register capability handlers on an :class:`App`; ``fleet worker`` runs it."""

from fleet.errors import PermanentError, RetryableError
from workers.app import App, TaskContext

__all__ = ["App", "PermanentError", "RetryableError", "TaskContext"]
