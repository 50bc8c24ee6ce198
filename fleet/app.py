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
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import JsonValue

from fleet.cancellation import Cancellation
from fleet.errors import ConfigError
from fleet.messages import LeaseGrant, TaskAssigned
from fleet.topology import check_capability
from fleet.usage import Meter

F = TypeVar("F", bound=Callable[..., Any])

# A capability's version: semver-like, and safe in a topic or group name should a later
# routing scheme give each version its own (letters, digits, '.', '_', '+', '-').
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
UNVERSIONED = "0.0.0"  # what a capability declared without a version is


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


@dataclass
class Said:
    """What a handler says about its output besides the output (the context is frozen)."""

    confidence: float | None = None


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
    # What report_usage added up; the worker puts its lines on the result.
    usage: Meter = field(default_factory=Meter, repr=False, compare=False)
    # What set_confidence said; the worker puts it on the result.
    said: Said = field(default_factory=Said, repr=False, compare=False)

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

    def report_usage(
        self,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: object = 0,
        model: str | None = None,
    ) -> None:
        """Record what this attempt consumed, as often as needed (once per model call):
        tokens, and ``cost`` in credits as the market writes them (``0.0042``,
        ``"1.5"``), kept exact. Summed per model onto the result, then per workflow onto
        its terminal event; a failed or timed-out attempt's usage counts too. Raises
        ValueError on a negative, fractional or non-numeric amount (nothing is added)."""
        self.usage.report(tokens_in=tokens_in, tokens_out=tokens_out, cost=cost, model=model)

    def set_confidence(self, confidence: float) -> None:
        """How sure the handler is of its output, from 0 to 1, sent with the result. A
        step with ``min_confidence`` does not accept a result below it: it escalates to
        its next fallback, or fails at its chain's end. The last call counts."""
        if isinstance(confidence, bool) or not isinstance(confidence, int | float):
            raise ValueError(f"set_confidence: expected a number, got {confidence!r}")
        if not 0 <= confidence <= 1:  # NaN fails this too
            raise ValueError(f"set_confidence: expected 0 to 1, got {confidence!r}")
        self.said.confidence = float(confidence)

    @property
    def confidence(self) -> float | None:
        """What :meth:`set_confidence` said last (None: nothing)."""
        return self.said.confidence

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
class CapabilityInfo:
    """What a capability's agent card says about it (:mod:`fleet.cards`), as declared on
    ``@app.capability``. Every field has a default, so a handler registered with a name
    alone gets a valid card: version 0.0.0, its docstring as description, its name as tag."""

    version: str = UNVERSIONED
    description: str = ""
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    # JSON Schemas of the payload and the output, published as they are (not enforced).
    input_schema: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None
    # What a task costs, in the caller's terms, e.g. {"unit": "task", "credits": "0.002"}.
    cost_model: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Capability:
    """A registered handler and how to call it, decided once at registration."""

    name: str
    handler: Callable[..., Any]
    is_async: bool
    wants_context: bool
    info: CapabilityInfo = field(default_factory=CapabilityInfo)

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


def _json_object(name: str, what: str, value: Mapping[str, Any] | None) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"capability {name!r}: {what} must be a JSON object (a dict)")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"capability {name!r}: {what} is not JSON: {exc}") from exc


def _info(name: str, handler: Callable[..., Any], declared: CapabilityInfo) -> CapabilityInfo:
    """``declared`` checked, with the defaults that depend on the handler filled in."""
    if not VERSION_RE.match(declared.version):
        raise ConfigError(
            f"capability {name!r}: version {declared.version!r} must be letters, digits, "
            "'.', '_', '+', '-' (e.g. 2.1.0), at most 64 characters"
        )
    for what in ("input_schema", "output_schema", "cost_model"):
        _json_object(name, what, getattr(declared, what))
    doc = (inspect.getdoc(handler) or "").split("\n\n")[0].replace("\n", " ").strip()
    return CapabilityInfo(
        version=declared.version,
        description=declared.description or doc or f"The {name} capability.",
        tags=declared.tags or (name,),  # A2A requires at least one tag per skill
        examples=declared.examples,
        input_schema=declared.input_schema,
        output_schema=declared.output_schema,
        cost_model=declared.cost_model,
    )


def _is_async(handler: Callable[..., Any]) -> bool:
    # A callable object with an ``async def __call__`` is async too.
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - we need the method, not callable()
    )


class App:
    """A set of capability handlers: what one worker pool process can do."""

    def __init__(self) -> None:
        self._capabilities: dict[str, Capability] = {}

    def capability(
        self,
        name: str,
        *,
        version: str = UNVERSIONED,
        description: str = "",
        tags: Iterable[str] = (),
        examples: Iterable[str] = (),
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        cost_model: Mapping[str, Any] | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function (sync or async) as the handler of ``name``.

        The keywords are what the capability's agent card publishes (:class:`CapabilityInfo`);
        all are optional."""
        check_capability(name)
        declared = CapabilityInfo(
            version=version,
            description=description,
            tags=tuple(tags),
            examples=tuple(examples),
            input_schema=input_schema,
            output_schema=output_schema,
            cost_model=cost_model,
        )

        def register(handler: F) -> F:
            if name in self._capabilities:
                raise ConfigError(f"capability {name!r} is registered twice in this app")
            self._capabilities[name] = Capability(
                name,
                handler,
                _is_async(handler),
                _wants_context(name, handler),
                _info(name, handler, declared),
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
