"""How one task runs: its deadline, its cancellation, what its result says.

``execute`` is the pure core of a worker: one :class:`TaskAssigned` and its handler in,
one :class:`TaskResult` out, whatever the handler does (returns, raises, hangs, is
cancelled or returns something that is not JSON). The Kafka shell in
:mod:`workers.shell.worker` only feeds it tasks and produces what it returns. Every
handler runs as a task of the one asyncio loop of :class:`~workers.bridge.HandlerLoop`
(sync handlers in :class:`~workers.bridge.HandlerThreads`); what a cancellation does to
a running handler is decided here (:mod:`workers.cancellation` says why).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from pydantic import JsonValue

from fleet.app import Capability, TaskContext, handler_deadline
from fleet.cancellation import Cancellation
from fleet.errors import HandlerError
from fleet.messages import LeaseGrant, TaskAssigned, TaskError, TaskResult, TaskStatus
from fleet.tracing import trace_id
from workers.cancellation import DEADLINE
from workers.leases import LeaseExpired

log = structlog.get_logger()

T = TypeVar("T")

# Error messages travel in every result record; a handler's giant exception text must
# not make one record huge.
MAX_ERROR_CHARS = 2000
# A result record must fit the producer's default message.max.bytes (1,000,000) with room
# for the other fields and headers; put bigger outputs in a blob store and return a link.
MAX_OUTPUT_CHARS = 900_000


@dataclass(frozen=True)
class Outcome:
    """One task's result plus what the runtime counts about how it ended.

    A ``cancelled`` outcome's result is not produced: the orchestrator cancelled the
    attempt, so it would drop it (its error says why, for the log)."""

    result: TaskResult
    timed_out: bool = False
    thread_abandoned: bool = False
    cancelled: bool = False


async def execute(
    capability: Capability,
    task: TaskAssigned,
    *,
    worker_id: str,
    threads: Executor,
    traceparent: str | None = None,
    on_thread_released: Callable[[], None] | None = None,
    cancellation: Cancellation | None = None,
) -> Outcome:
    """Run one task to a :class:`TaskResult`; never raises (except when the worker
    cancels the asyncio task running it, at shutdown).

    ``on_thread_released`` is called (from the handler thread) when a sync handler that
    was abandoned after its deadline finally returns. ``cancellation`` is the attempt's
    signal (:mod:`workers.cancellation`): once set, the handler is stopped or asked to
    stop, and the outcome is ``cancelled``.
    """
    started = time.monotonic()
    cancellation = cancellation or Cancellation()
    context = TaskContext.of(task, traceparent, cancellation)
    # The task's deadline or, if earlier, its first lease's expiry (then ``lease`` is set).
    _, lease = handler_deadline(task)
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
            version=capability.info.version,
            # Reported before it failed or timed out counts too: it was consumed.
            usage=context.usage.lines(),
            confidence=context.confidence,
        )
        return Outcome(result, **flags)

    if cancellation.is_set:
        return done(error=_cancelled_error(task, cancellation), cancelled=True)
    if timeout is not None and timeout <= 0:
        # Waited in the queue past its deadline: running it now only wastes the slot.
        if lease is None:
            log.warning("task deadline passed before it started; failing it as timed out")
        else:
            log.warning(
                "lease expired before the task started; failing it without running it",
                **_lease_fields(lease),
            )
        return done(error=_late_error(task, lease), timed_out=True)

    try:
        called = await _invoke(
            capability,
            capability.arguments(task.input, context),
            threads,
            timeout,
            on_thread_released,
            cancellation=cancellation,
        )
        if isinstance(called, _Stopped):
            if called.cancelled:
                stopped = _cancelled_error(task, cancellation)
                return done(error=stopped, cancelled=True, thread_abandoned=called.abandoned)
            if lease is not None:
                log.warning(
                    "lease expired while the handler ran; failing the task (retryable) so "
                    "the units can go to their next holder",
                    **_lease_fields(lease),
                )
            return done(
                error=_late_error(task, lease), timed_out=True, thread_abandoned=called.abandoned
            )
        if cancellation.is_set:
            # It ended just as its cancellation came: the orchestrator decided before it
            # sent the cancellation, so the result would be dropped.
            return done(error=_cancelled_error(task, cancellation), cancelled=True)
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
class _Stopped:
    """The handler was cancelled, or passed its deadline; ``abandoned``: its thread still
    runs (a sync handler that neither returned nor got its thread by the deadline)."""

    cancelled: bool
    abandoned: bool


async def _invoke(
    capability: Capability,
    arguments: tuple[Any, ...],
    threads: Executor,
    timeout: float | None,
    on_thread_released: Callable[[], None] | None,
    *,
    cancellation: Cancellation,
) -> tuple[bool, Any] | _Stopped:
    """Call the handler, waiting at most ``timeout``: (failed, value or exception), or
    stopped.

    On cancellation an async handler's task is cancelled and a sync handler that has
    not started never starts; either way the handler is then waited for until the
    deadline, since it may still hold what the slot stands for (a thread, a connection).
    At the deadline the signal is set too, so a sync handler left running can see it."""
    due = None if timeout is None else time.monotonic() + timeout
    in_thread: Future[tuple[bool, Any]] | None = None
    waiter: asyncio.Future[tuple[bool, Any]]
    if capability.is_async:
        waiter = asyncio.ensure_future(_guard_async(capability.handler, arguments))
    else:
        run = contextvars.copy_context().run  # so structlog's bound fields reach the thread
        in_thread = threads.submit(run, _guard_sync, capability.handler, arguments)
        waiter = asyncio.wrap_future(in_thread)
    if await _wait(waiter, due, cancellation):
        return waiter.result()
    cancelled = cancellation.is_set
    if cancelled:
        log.info("task cancelled; stopping its handler", reason=cancellation.reason)
        if in_thread is None:
            waiter.cancel()  # CancelledError at the handler's next await
        else:
            in_thread.cancel()  # succeeds only if no thread took it up yet
        if await _wait(waiter, due, None):
            return _Stopped(cancelled=True, abandoned=False)
    cancellation.cancel(DEADLINE)
    if in_thread is None:
        waiter.cancel()
        log.warning("handler passed its deadline; cancelled it", timeout_s=_round(timeout))
        return _Stopped(cancelled, abandoned=False)
    if in_thread.cancel():
        # It never left the pool's queue (all threads busy): nothing is abandoned.
        log.warning("sync handler got no thread before its deadline", timeout_s=_round(timeout))
        return _Stopped(cancelled, abandoned=False)
    # A thread cannot be killed: stop waiting, keep count, say so.
    log.warning(
        "sync handler passed its deadline; its thread still runs and is abandoned",
        timeout_s=_round(timeout),
    )
    if on_thread_released is not None:
        release = on_thread_released
        in_thread.add_done_callback(lambda _: release())
    return _Stopped(cancelled, abandoned=True)


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
    waiter: asyncio.Future[T], due: float | None, cancellation: Cancellation | None
) -> bool:
    """Wait for ``waiter`` until ``due`` (monotonic) or until ``cancellation`` is set;
    True if it is done."""
    timeout = None if due is None else max(0.0, due - time.monotonic())
    watch = None if cancellation is None else asyncio.ensure_future(cancellation.wait())
    waiting: set[asyncio.Future[Any]] = {waiter} if watch is None else {waiter, watch}
    try:
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The runtime gave up on this task (shutdown): the handler must not run on.
        waiter.cancel()
        raise
    finally:
        if watch is not None:
            watch.cancel()
    return waiter.done()


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


def _cancelled_error(task: TaskAssigned, cancellation: Cancellation) -> TaskError:
    """Why a cancelled attempt has no result (logged, never produced)."""
    return TaskError(
        type="Cancelled",
        message=f"task {task.task_id} attempt {task.attempt} cancelled: {cancellation.reason}",
        retryable=False,
    )


def _late_error(task: TaskAssigned, lease: LeaseGrant | None) -> TaskError:
    """Past its deadline, or past ``lease``'s expiry when that came first: retryable like
    any timeout (the step's retries decide); the expired lease is no use to a retry."""
    if lease is None:
        return TaskError(
            type="TimeoutError",
            message=f"task {task.task_id} attempt {task.attempt} passed its deadline "
            f"({task.deadline_ms} ms since epoch)",
            retryable=True,
        )
    return TaskError(
        type=LeaseExpired.__name__,
        message=f"task {task.task_id} attempt {task.attempt} outlived its lease "
        f"{lease.lease_id} on {lease.resource!r} (units {lease.units}, token {lease.token}), "
        f"which expired at {lease.expires_at_ms} ms since epoch",
        retryable=True,
    )


def _lease_fields(lease: LeaseGrant) -> dict[str, Any]:
    return {
        "resource": lease.resource,
        "lease_id": lease.lease_id,
        "expires_at_ms": lease.expires_at_ms,
    }


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


async def handle_task(
    capability: Capability,
    task: TaskAssigned,
    *,
    worker_id: str,
    threads: Executor,
    traceparent: str | None,
    on_thread_abandoned: Callable[[], None],
    on_thread_released: Callable[[], None],
    cancellation: Cancellation | None = None,
) -> Outcome:
    """:func:`execute` as the worker runs it: logged, with the task's fields bound.

    ``on_thread_abandoned`` is called once a sync handler is left running past its
    deadline, ``on_thread_released`` when that handler finally returns.
    """
    # Bound in this asyncio task's own context, so concurrent tasks never mix.
    structlog.contextvars.bind_contextvars(
        workflow_id=task.workflow_id,
        task_id=task.task_id,
        capability=task.capability,
        attempt=task.attempt,
        trace_id=trace_id(traceparent),
    )
    log.debug("task started", deadline_ms=task.deadline_ms)
    outcome = await execute(
        capability,
        task,
        worker_id=worker_id,
        threads=threads,
        traceparent=traceparent,
        on_thread_released=on_thread_released,
        cancellation=cancellation,
    )
    if outcome.thread_abandoned:
        on_thread_abandoned()
    if outcome.cancelled:
        error = outcome.result.error
        log.info("task cancelled; no result is produced", why=error.message if error else None)
    else:
        log.debug("task finished; producing its result", status=outcome.result.status.value)
    return outcome
