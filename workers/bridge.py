"""Where handlers run: the one asyncio loop of the worker, and the threads of sync handlers.

Every handler runs as a task of :class:`HandlerLoop`'s loop, in a thread of its own (the
Kafka loop stays in the calling thread and never blocks on a handler); a sync handler
runs in one of :class:`HandlerThreads`, awaited from that loop. How one task runs there
is :mod:`workers.execute`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")


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


class HandlerLoop:
    """The asyncio bridge: every handler runs as a task of one loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fleet-handler-loop", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T], on_done: Callable[[], None]) -> Future[T]:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(lambda _: on_done())
        return future

    def close(self, timeout_s: float = 2.0) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout_s + 1)
        except TimeoutError:
            log.warning("some async handlers ignore cancellation; leaving them behind")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()
