"""The handler contract: an :class:`App` of capability handlers, and the context a
handler gets. Users import it as ``from fleet import App, TaskContext``.

It lives in the kernel because it is a contract between two parties, the user's code and
the worker runtime, and user code should need nothing but the kernel: an agent module
imports ``fleet`` alone, never the runtime's packages (README, "One import path").
Registration decides once how each handler is called (sync or async, with or without a
:class:`TaskContext`); ``fleet worker --app`` finds the app (:mod:`workers.loading`), and
:mod:`workers.execute` runs one task.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import JsonValue

from fleet.cancellation import Cancellation
from fleet.errors import ConfigError
from fleet.messages import LeaseGrant, TaskAssigned
from fleet.topology import check_capability

F = TypeVar("F", bound=Callable[..., Any])


def handler_deadline(task: TaskAssigned) -> tuple[int | None, LeaseGrant | None]:
    """When the worker stops waiting on ``task`` (epoch ms; None: never), and the lease
    whose expiry sets that time (None: the task's own deadline does, or nothing does).

    An expired lease may already be someone else's units, so no handler runs past it; on
    a tie the lease is named, the more specific cause.
    """
    first = min(task.leases, key=lambda lease: lease.expires_at_ms, default=None)
    if first is not None and (task.deadline_ms is None or first.expires_at_ms <= task.deadline_ms):
        return first.expires_at_ms, first
    return task.deadline_ms, None


@dataclass(frozen=True)
class TaskContext:
    """What a handler may want to know about the task it runs (its optional 2nd argument)."""

    task_id: str
    workflow_id: str
    step_id: str
    capability: str
    attempt: int
    index: int | None
    # Epoch seconds when the worker stops waiting: the task's deadline or its first
    # lease's expiry, whichever comes first; None means neither.
    deadline: float | None
    traceparent: str | None
    leases: tuple[LeaseGrant, ...] = ()  # on contended resources, as the auctioneer granted
    # Set when the orchestrator cancels this attempt or the worker gives up on it
    # (workers.cancellation says which); read it through the members below.
    cancellation: Cancellation = field(default_factory=Cancellation, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once this attempt is cancelled: its result will be dropped, stop working."""
        return self.cancellation.is_set

    async def wait_cancelled(self) -> None:
        """Return once this attempt is cancelled (for an async handler's watcher task)."""
        await self.cancellation.wait()

    @property
    def cancel_event(self) -> threading.Event:
        """Set once this attempt is cancelled: a sync handler may ``wait(timeout)`` on it
        instead of ``time.sleep``. The worker sets it; a handler only reads or waits."""
        return self.cancellation.event

    def remaining_s(self) -> float | None:
        """Seconds left before the worker stops waiting on this task (None: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    def lease(self, resource: str) -> LeaseGrant | None:
        """This task's lease on ``resource`` (None: the task holds none there)."""
        return next((lease for lease in self.leases if lease.resource == resource), None)

    @classmethod
    def of(
        cls,
        task: TaskAssigned,
        traceparent: str | None = None,
        cancellation: Cancellation | None = None,
    ) -> TaskContext:
        stop_ms, _ = handler_deadline(task)
        return cls(
            task_id=task.task_id,
            workflow_id=task.workflow_id,
            step_id=task.step_id,
            capability=task.capability,
            attempt=task.attempt,
            index=task.index,
            deadline=None if stop_ms is None else stop_ms / 1000,
            traceparent=traceparent,
            leases=tuple(task.leases),
            cancellation=cancellation or Cancellation(),
        )


@dataclass(frozen=True)
class Capability:
    """A registered handler and how to call it, decided once at registration."""

    name: str
    handler: Callable[..., Any]
    is_async: bool
    wants_context: bool

    def arguments(self, payload: JsonValue, context: TaskContext) -> tuple[Any, ...]:
        return (payload, context) if self.wants_context else (payload,)


def _wants_context(name: str, handler: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"capability {name!r}: cannot read the handler's signature: {exc}"
        ) from exc
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = [p for p in positional if p.kind != p.VAR_POSITIONAL and p.default is p.empty]
    if not positional or len(required) > 2:
        raise ConfigError(
            f"capability {name!r}: the handler must take (payload) or (payload, ctx), "
            f"not {inspect.signature(handler)}"
        )
    return len(positional) >= 2 or positional[0].kind == inspect.Parameter.VAR_POSITIONAL


def _is_async(handler: Callable[..., Any]) -> bool:
    # A callable object with an ``async def __call__`` is async too.
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - we need the method, not callable()
    )


class App:
    """A set of capability handlers: what one worker pool process can do."""

    def __init__(self) -> None:
        self._capabilities: dict[str, Capability] = {}

    def capability(self, name: str) -> Callable[[F], F]:
        """Register the decorated function (sync or async) as the handler of ``name``."""
        check_capability(name)

        def register(handler: F) -> F:
            if name in self._capabilities:
                raise ConfigError(f"capability {name!r} is registered twice in this app")
            self._capabilities[name] = Capability(
                name, handler, _is_async(handler), _wants_context(name, handler)
            )
            return handler

        return register

    @property
    def capabilities(self) -> list[str]:
        return sorted(self._capabilities)

    def get(self, name: str) -> Capability:
        try:
            return self._capabilities[name]
        except KeyError:
            raise ConfigError(f"capability {name!r} is not registered in this app") from None

    def __contains__(self, name: object) -> bool:
        return name in self._capabilities

    def __len__(self) -> int:
        return len(self._capabilities)
