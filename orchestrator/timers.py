"""Timers: what is due when, derived from durable state and never from a sleeping thread.

The engine keeps at most one pending timer per ``(workflow_id, task_id)``: a task is
either in flight (its TIMEOUT), backing off (its RETRY) or waiting for a live agent (its
NO_AGENT), and a workflow either runs
(its DEADLINE) or is finished (its record's EXPIRY). Every timer can be recomputed from
the workflow's state, so a restored engine has exactly the timers the lost one had.
"""

from __future__ import annotations

import heapq
from enum import IntEnum
from typing import NamedTuple

WORKFLOW = ""  # the task_id of a workflow-level timer


class TimerKind(IntEnum):
    """Also the firing order of timers due in the same millisecond."""

    EXPIRY = 0  # a finished workflow's record has been kept long enough
    DEADLINE = 1  # a workflow ran past its deadline_s
    TIMEOUT = 2  # a dispatched attempt has no result by its deadline_ms
    RETRY = 3  # a failed attempt's backoff (orchestrator.retry) is over: dispatch the next
    NO_AGENT = 4  # a task waited no_agent_timeout_s for a live agent (orchestrator.waiting)


class Timer(NamedTuple):
    # Field order is the heap order: due time first, then a total order for ties.
    due_ms: int
    kind: TimerKind
    workflow_id: str
    task_id: str


class Timers:
    """Pending timers in due order: a heap with lazy invalidation.

    ``set`` and ``cancel`` only update the map of live timers; a heap entry that no
    longer matches it is skipped when it reaches the top. When stale entries outnumber
    live ones the heap is rebuilt, so its size stays within a constant of the live
    count. Peeking and popping cost O(log n) amortised; nothing scans all timers.
    """

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], Timer] = {}
        self._heap: list[Timer] = []
        self._counts = dict.fromkeys(TimerKind, 0)

    def __len__(self) -> int:
        return len(self._live)

    def count(self, kind: TimerKind) -> int:
        """Live timers of ``kind`` (TIMEOUT: the attempts in flight), in O(1)."""
        return self._counts[kind]

    def get(self, workflow_id: str, task_id: str = WORKFLOW) -> Timer | None:
        return self._live.get((workflow_id, task_id))

    def pending(self) -> list[Timer]:
        """Every live timer in due order (O(n log n): for tests and tools)."""
        return sorted(self._live.values())

    def set(self, timer: Timer) -> None:
        """Make ``timer`` the one pending timer of its ``(workflow_id, task_id)``."""
        key = (timer.workflow_id, timer.task_id)
        old = self._live.get(key)
        if old == timer:
            return
        if old is not None:
            self._counts[old.kind] -= 1
        self._live[key] = timer
        self._counts[timer.kind] += 1
        heapq.heappush(self._heap, timer)
        self._compact()

    def cancel(self, workflow_id: str, task_id: str = WORKFLOW) -> None:
        old = self._live.pop((workflow_id, task_id), None)
        if old is not None:
            self._counts[old.kind] -= 1
            self._compact()

    def next_due_ms(self) -> int | None:
        self._skip_stale()
        return self._heap[0].due_ms if self._heap else None

    def pop_due(self, now_ms: int) -> Timer | None:
        """The earliest timer due at or before ``now_ms``, removed; None if none is."""
        self._skip_stale()
        if not self._heap or self._heap[0].due_ms > now_ms:
            return None
        timer = heapq.heappop(self._heap)
        del self._live[(timer.workflow_id, timer.task_id)]
        self._counts[timer.kind] -= 1
        return timer

    def _compact(self) -> None:
        # Rebuilding costs O(live log live) and happens after at least live + 64 entries
        # went stale since the last one: amortised O(log n) per operation.
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = sorted(self._live.values())  # a sorted list is a valid heap

    def _skip_stale(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get((heap[0].workflow_id, heap[0].task_id)) != heap[0]:
            heapq.heappop(heap)
