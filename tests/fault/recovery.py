"""Recovery times: pure, from the fault log and the workflow events read back."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tests.fault.checker import SeenEvent
from tests.fault.plan import FaultKind


@dataclass(frozen=True)
class FaultRecord:
    kind: FaultKind
    target: str
    at_ms: int  # wall clock, comparable with the events' at_ms (same machine)
    detail: str = ""


@dataclass(frozen=True)
class Recovery:
    fault: FaultRecord
    next_terminal_s: float | None  # until the next terminal event of any workflow
    all_partitions_s: float | None  # until every partition with work in flight moved again
    stalled_partitions: int


def recovery_times(
    faults: Sequence[FaultRecord], events: Sequence[SeenEvent], submitted_ms: dict[str, int]
) -> list[Recovery]:
    """For each disruptive fault: how long until progress resumed.

    *next terminal*: the first terminal event after the fault (the fleet as a whole goes
    on). *all partitions*: every partition that had a workflow in flight at the fault
    (submitted before, terminal after) shows an event again; this is what a kill of the
    owner of some partitions costs them (rebalance, restore, hung transactions).
    """
    terminal_at = sorted(s.event.at_ms for s in events if s.event.kind.terminal)
    partition_of: dict[str, int] = {}
    end_of: dict[str, int] = {}
    by_partition: dict[int, list[int]] = defaultdict(list)
    for seen in events:
        partition_of.setdefault(seen.event.workflow_id, seen.partition)
        by_partition[seen.partition].append(seen.event.at_ms)
        if seen.event.kind.terminal:
            prev = end_of.get(seen.event.workflow_id)
            end_of[seen.event.workflow_id] = (
                seen.event.at_ms if prev is None else min(prev, seen.event.at_ms)
            )
    for times in by_partition.values():
        times.sort()
    recoveries = []
    for fault in faults:
        if fault.kind is FaultKind.GARBAGE:
            continue
        t = fault.at_ms
        after = _first_from(terminal_at, t)
        busy = {
            partition_of[w]
            for w, sub in submitted_ms.items()
            if sub <= t and w in partition_of and end_of.get(w, t + 1) > t
        }
        waits: list[float] = []
        never = False
        for p in busy:
            nxt = _first_from(by_partition[p], t)
            if nxt is None:
                never = True
            else:
                waits.append((nxt - t) / 1000)
        recoveries.append(
            Recovery(
                fault,
                None if after is None else (after - t) / 1000,
                None if never or not busy else max(waits),
                len(busy),
            )
        )
    return recoveries


def _first_from(ordered: list[int], t: int) -> int | None:
    """The first value >= t of a sorted list, or None."""
    i = bisect.bisect_left(ordered, t)
    return ordered[i] if i < len(ordered) else None
