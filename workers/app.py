"""The worker SDK: an :class:`App` of capability handlers, and how one task runs.

``execute`` is the pure core of a worker: one :class:`TaskAssigned` and its handler in,
one :class:`TaskResult` out, whatever the handler does (returns, raises, hangs or
returns something that is not JSON). The Kafka shell in :mod:`workers.runtime` only
feeds it tasks and produces what it returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import json
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from pydantic import JsonValue

from fleet.errors import ConfigError, HandlerError
from fleet.messages import TaskAssigned, TaskError, TaskResult, TaskStatus
from fleet.topology import check_capability

log = structlog.get_logger()

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Error messages travel in every result record; a handler's giant exception text must
# not make one record huge.
MAX_ERROR_CHARS = 2000
# A result record must fit the producer's default message.max.bytes (1,000,000) with room
# for the other fields and headers; put bigger outputs in a blob store and return a link.
MAX_OUTPUT_CHARS = 900_000


@dataclass(frozen=True)
class TaskContext:
    """What a handler may want to know about the task it runs (its optional 2nd argument)."""

    task_id: str
    workflow_id: str
    step_id: str
    capability: str
    attempt: int
    index: int | None
    deadline: float | None  # epoch seconds; None means no deadline
    traceparent: str | None

    def remaining_s(self) -> float | None:
        """Seconds left before the worker stops waiting on this task (None: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    @classmethod
    def of(cls, task: TaskAssigned, traceparent: str | None = None) -> TaskContext:
        return cls(
            task_id=task.task_id,
            workflow_id=task.workflow_id,
            step_id=task.step_id,
            capability=task.capability,
            attempt=task.attempt,
            index=task.index,
            deadline=None if task.deadline_ms is None else task.deadline_ms / 1000,
            traceparent=traceparent,
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


def load_app(reference: str) -> App:
    """Import ``package.module:attribute`` and check that it is an :class:`App`."""
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"app reference {reference!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(
                f"app module {module_name!r} not found (is it installed, or is the working "
                "directory its parent?)"
            ) from exc
        raise ConfigError(f"importing app module {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # any import-time failure of user code
        raise ConfigError(
            f"importing app module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"app module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not isinstance(target, App):
        raise ConfigError(
            f"{reference!r} is a {type(target).__name__}, not a workers.App; "
            "point --app at the App instance your handlers are registered on"
        )
    if not len(target):
        raise ConfigError(f"app {reference!r} has no capabilities registered")
    return target


class HandlerThreads(Executor):
    """A fixed pool of daemon threads for sync handlers.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so
    one sync handler that hangs forever would keep a drained worker from ever exiting.
    Daemon threads let the process exit; the hung call is lost with it.
    """

    def __init__(self, size: int, name: str = "fleet-handler") -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._work.put((future, lambda: fn(*args, **kwargs)))
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter, never lost
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


@dataclass(frozen=True)
class Outcome:
    """One task's result plus what the runtime counts about how it ended."""

    result: TaskResult
    timed_out: bool = False
    thread_abandoned: bool = False


async def execute(
    capability: Capability,
    task: TaskAssigned,
    *,
    worker_id: str,
    threads: Executor,
    traceparent: str | None = None,
    on_thread_released: Callable[[], None] | None = None,
) -> Outcome:
    """Run one task to a :class:`TaskResult`; never raises (except on cancellation).

    ``on_thread_released`` is called (from the handler thread) when a sync handler that
    was abandoned after its deadline finally returns.
    """
    started = time.monotonic()
    context = TaskContext.of(task, traceparent)
    timeout = None if context.deadline is None else context.deadline - time.time()

    def done(output: JsonValue = None, error: TaskError | None = None, **flags: bool) -> Outcome:
        result = TaskResult(
            task_id=task.task_id,
            workflow_id=task.workflow_id,
            step_id=task.step_id,
            capability=task.capability,
            attempt=task.attempt,
            index=task.index,
            status=TaskStatus.FAILED if error else TaskStatus.SUCCEEDED,
            output=output,
            error=error,
            duration_ms=int((time.monotonic() - started) * 1000),
            worker_id=worker_id,
            finished_at_ms=int(time.time() * 1000),
        )
        return Outcome(result, **flags)

    if timeout is not None and timeout <= 0:
        # Waited in the queue past its deadline: running it now only wastes the slot.
        log.warning("task deadline passed before it started; failing it as timed out")
        return done(error=_timeout_error(task), timed_out=True)

    try:
        called = await _invoke(
            capability,
            capability.arguments(task.input, context),
            threads,
            timeout,
            on_thread_released,
        )
        if isinstance(called, _Late):
            return done(
                error=_timeout_error(task), timed_out=True, thread_abandoned=called.abandoned
            )
        failed, value = called
        output, error = (None, _error_of(value)) if failed else _to_json(value)
    except Exception as exc:
        # Not the handler's failure but ours (or an exception whose str() raises): the task
        # still gets a result, and the line goes on.
        log.exception("worker failed around the handler; failing the task")
        output, error = (
            None,
            TaskError(
                type=type(exc).__name__, message="worker error around the handler", retryable=True
            ),
        )
    return done(output=output, error=error)


@dataclass(frozen=True)
class _Late:
    """The handler passed its deadline; ``abandoned``: its thread still runs."""

    abandoned: bool


async def _invoke(
    capability: Capability,
    arguments: tuple[Any, ...],
    threads: Executor,
    timeout: float | None,
    on_thread_released: Callable[[], None] | None,
) -> tuple[bool, Any] | _Late:
    """Call the handler, waiting at most ``timeout``: (failed, value or exception) or late."""
    if capability.is_async:
        waiter: asyncio.Future[tuple[bool, Any]] = asyncio.ensure_future(
            _guard_async(capability.handler, arguments)
        )
        finished, _ = await _wait(waiter, timeout)
        if not finished:
            waiter.cancel()
            log.warning("handler passed its deadline; cancelled it", timeout_s=_round(timeout))
            return _Late(abandoned=False)
        return waiter.result()
    run = contextvars.copy_context().run  # so structlog's bound fields reach the thread
    in_thread = threads.submit(run, _guard_sync, capability.handler, arguments)
    waiter = asyncio.wrap_future(in_thread)
    finished, _ = await _wait(waiter, timeout)
    if finished:
        return waiter.result()
    if in_thread.cancel():
        # It never left the pool's queue (all threads busy): nothing is abandoned.
        log.warning("sync handler got no thread before its deadline", timeout_s=_round(timeout))
        return _Late(abandoned=False)
    # A thread cannot be killed: stop waiting, keep count, say so.
    log.warning(
        "sync handler passed its deadline; its thread still runs and is abandoned",
        timeout_s=_round(timeout),
    )
    if on_thread_released is not None:
        release = on_thread_released
        in_thread.add_done_callback(lambda _: release())
    return _Late(abandoned=True)


def _round(timeout: float | None) -> float:
    return round(timeout or 0.0, 3)


def _to_json(value: Any) -> tuple[JsonValue, TaskError | None]:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        log.warning("handler returned a value that is not JSON; failing the task", error=str(exc))
        message = f"handler returned a value that is not JSON-serialisable: {exc}"
        return None, TaskError(type="TypeError", message=message[:MAX_ERROR_CHARS], retryable=False)
    if len(text) > MAX_OUTPUT_CHARS:
        # Kafka would refuse the result record, and the task's redelivery would fail again.
        log.warning("handler output too large for a result record; failing the task")
        message = f"output is {len(text)} characters of JSON, over the {MAX_OUTPUT_CHARS} limit"
        return None, TaskError(type="ValueError", message=message, retryable=False)
    return json.loads(text), None  # normalised: tuples become lists, keys strings


async def _wait(
    waiter: asyncio.Future[T], timeout: float | None
) -> tuple[set[asyncio.Future[T]], set[asyncio.Future[T]]]:
    try:
        return await asyncio.wait({waiter}, timeout=timeout)
    except asyncio.CancelledError:
        # The runtime gave up on this task (shutdown): the handler must not run on.
        waiter.cancel()
        raise


async def _guard_async(
    handler: Callable[..., Awaitable[Any]], arguments: tuple[Any, ...]
) -> tuple[bool, Any]:
    # Catching here, inside the task, keeps even SystemExit from escaping into the loop.
    try:
        return False, await handler(*arguments)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a handler fails its task, never the process
        return True, exc


def _guard_sync(handler: Callable[..., Any], arguments: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        value = handler(*arguments)
    except BaseException as exc:  # noqa: BLE001 - a handler fails its task, never the process
        return True, exc
    if inspect.isawaitable(value):
        # Without this the coroutine is dropped un-awaited and the output is a confusing
        # "not JSON" error; the handler was registered as sync (plain ``def``).
        if inspect.iscoroutine(value):
            value.close()
        return True, TypeError("sync handler returned an awaitable; declare it with 'async def'")
    return False, value


def _timeout_error(task: TaskAssigned) -> TaskError:
    return TaskError(
        type="TimeoutError",
        message=f"task {task.task_id} attempt {task.attempt} passed its deadline "
        f"({task.deadline_ms} ms since epoch)",
        retryable=True,
    )


def _error_of(exc: BaseException) -> TaskError:
    retryable = exc.retryable if isinstance(exc, HandlerError) else True
    if not isinstance(exc, HandlerError):
        # An unexpected exception: its traceback is what the operator needs.
        log.warning(
            "handler raised; the task fails and may be retried",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    else:
        log.info("handler failed the task", error=str(exc), retryable=retryable)
    return TaskError(
        type=type(exc).__name__,
        message=(str(exc) or repr(exc))[:MAX_ERROR_CHARS],
        retryable=retryable,
    )
