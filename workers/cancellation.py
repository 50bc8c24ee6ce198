"""Cancellation on the worker: the signal a handler sees, and which attempts get it.

The orchestrator cancels a dispatched attempt when it stops waiting for it (its workflow
was cancelled or failed, or the attempt timed out: ``orchestrator.cancellation``). Every
worker process reads those cancellations (``workers.shell.cancellations``) and hands each
to a :class:`CancelRegistry`, which signals the matching attempt if it runs here.

What a handler sees: its :class:`~fleet.app.TaskContext` carries a
:class:`~fleet.cancellation.Cancellation`. ``ctx.cancelled`` turns true, ``await
ctx.wait_cancelled()`` returns and ``ctx.cancel_event`` (a ``threading.Event``) is set,
whichever suits the handler. An async handler's task is also cancelled
(``CancelledError`` at its next ``await``), which stops the common case, an agent
awaiting a model, with no code at all. A sync handler cannot be stopped from outside
(Python cannot kill a thread), so it is asked: a handler with a loop checks
``ctx.cancelled`` or waits on ``ctx.cancel_event``. The worker's own deadline sets the
same signal when it gives up on a handler, so a sync handler left running past its
deadline learns it too.

What the worker does with a cancelled attempt (:mod:`workers.execute`): it waits for the
handler to end, at most until the attempt's deadline (the slot stays taken while the
handler really runs, so ``--concurrency`` keeps meaning what it says), produces no
result (the orchestrator would drop it: it already decided) and marks the record
finished, so the partition's committed offset moves on as for any other record.

Why the registry remembers recent cancellations: a cancellation can come before the
worker takes the task up (queued behind others, redelivered after another worker died).
An attempt cancelled in the last ``remember`` cancellations is never started. That memory
is bounded; past it, an attempt runs and its result is dropped, as without cancellation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fleet.cancellation import Cancellation

# (task_id, attempt): what a cancellation names, and what a worker runs.
Key = tuple[str, int]

DEADLINE = "deadline passed"  # the reason the worker's own deadline gives


class CancelRegistry:
    """The attempts running in this process and the attempts recently cancelled.

    Thread-safe: the Kafka thread starts, ends and cancels; nothing else touches it.
    """

    def __init__(self, remember: int = 20_000) -> None:
        self.remember = remember
        self._running: dict[Key, list[Cancellation]] = {}
        self._cancelled: OrderedDict[Key, str] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def start(self, key: Key) -> Cancellation | None:
        """The signal of an attempt about to run; None: it was cancelled, do not run it.

        A list per key: a redelivered record can run the same attempt twice at once in
        one process (its partition revoked and assigned back), and both must stop."""
        with self._lock:
            if key in self._cancelled:
                return None
            cancellation = Cancellation()
            self._running.setdefault(key, []).append(cancellation)
            return cancellation

    def end(self, key: Key, cancellation: Cancellation) -> None:
        """The attempt's handler is done (or given up on): forget its signal."""
        with self._lock:
            running = self._running.get(key, [])
            if cancellation in running:
                running.remove(cancellation)
            if not running:
                self._running.pop(key, None)

    def cancel(self, key: Key, reason: str) -> int:
        """Remember ``key`` as cancelled and signal it where it runs; how many it stopped."""
        with self._lock:
            self._cancelled[key] = reason
            self._cancelled.move_to_end(key)
            while len(self._cancelled) > self.remember:
                self._cancelled.popitem(last=False)
            running = list(self._running.get(key, []))
        return sum(cancellation.cancel(reason) for cancellation in running)

    @property
    def running(self) -> int:
        with self._lock:
            return sum(len(signals) for signals in self._running.values())
