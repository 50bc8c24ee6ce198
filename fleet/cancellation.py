"""The cancellation signal a handler sees: a one-shot, thread-safe event.

Part of the handler contract (:mod:`fleet.app`): a :class:`~fleet.app.TaskContext`
carries one. Which attempts get it, and what the worker does then, is the worker
runtime's business (:mod:`workers.cancellation`, which explains the whole design).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Cancellation:
    """A one-shot, thread-safe signal: set once (from any thread), seen from any thread
    (``is_set``, ``event``) and awaited from any asyncio loop (``wait``)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.reason: str | None = None

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def event(self) -> threading.Event:
        return self._event

    def cancel(self, reason: str) -> bool:
        """Set the signal and wake every waiter; False if it was already set."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            # A closed loop has nobody left waiting on it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, future)
        return True

    async def wait(self) -> None:
        """Return once the signal is set (at once if it is)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append(entry)
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(entry)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
