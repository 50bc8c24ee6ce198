"""Which offset may be committed when records of one partition finish out of order.

Workers run many records of a partition at once, so they finish in any order. Kafka
keeps one committed offset per partition, meaning "everything below this is done".
The tracker answers with the lowest offset not yet finished: committing it never skips
an unfinished record (a crash redelivers it and everything after it; duplicates are
dropped downstream by ``(task_id, attempt)``). Pure: no Kafka, no clock, no threads.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class PartitionOffsets:
    """Started and finished offsets of one partition within one assignment."""

    def __init__(self) -> None:
        self._unfinished: set[int] = set()
        self._heap: list[int] = []  # the unfinished offsets, plus finished ones not yet popped
        self._next = -1  # one past the highest offset started; -1 until the first start
        self._committed = -1  # the last watermark handed out by take_commit

    def start(self, offset: int) -> bool:
        """Record that ``offset`` is being processed; False if it was seen before.

        Offsets arrive in increasing order within an assignment (with gaps: transaction
        markers, compaction). One at or below the highest seen is a redelivery of work
        already tracked, and must not be processed twice.
        """
        if offset < 0:
            raise ValueError(f"offset {offset} is negative")
        if offset < self._next:
            return False
        self._unfinished.add(offset)
        heapq.heappush(self._heap, offset)
        self._next = offset + 1
        return True

    def finish(self, offset: int) -> None:
        """Record that ``offset``'s effect is durable."""
        try:
            self._unfinished.remove(offset)
        except KeyError:
            raise ValueError(f"offset {offset} was not started or already finished") from None

    def watermark(self) -> int | None:
        """The offset to commit: the lowest unfinished one, else one past the highest seen."""
        while self._heap and self._heap[0] not in self._unfinished:
            heapq.heappop(self._heap)
        if self._heap:
            return self._heap[0]
        return self._next if self._next >= 0 else None

    def take_commit(self) -> int | None:
        """The watermark if it moved since the last call (so idle partitions commit nothing)."""
        mark = self.watermark()
        if mark is None or mark <= self._committed:
            return None
        self._committed = mark
        return mark

    @property
    def in_flight(self) -> int:
        return len(self._unfinished)


Key = tuple[str, int]  # (topic, partition)


class OffsetTracker:
    """A :class:`PartitionOffsets` per assigned partition of one consumer.

    A partition revoked and assigned again gets a fresh :class:`PartitionOffsets`, and
    work started under the old one finishes on the old object (which nobody commits any
    more), so a late completion can never move the new assignment's watermark.
    """

    def __init__(self) -> None:
        self._partitions: dict[Key, PartitionOffsets] = {}

    def assign(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._partitions[key] = PartitionOffsets()

    def revoke(self, keys: Iterable[Key]) -> dict[Key, int]:
        """Forget ``keys``; return their watermarks, to commit synchronously.

        Every known watermark is returned, even one already taken: an asynchronous commit
        of it may have failed, and committing an offset twice is harmless.
        """
        commits: dict[Key, int] = {}
        for key in keys:
            partition = self._partitions.pop(key, None)
            mark = partition.watermark() if partition else None
            if mark is not None:
                commits[key] = mark
        return commits

    def get(self, key: Key) -> PartitionOffsets | None:
        return self._partitions.get(key)

    def take_commits(self) -> dict[Key, int]:
        """Watermarks that moved since they were last taken, for every assigned partition."""
        commits: dict[Key, int] = {}
        for key, partition in self._partitions.items():
            mark = partition.take_commit()
            if mark is not None:
                commits[key] = mark
        return commits

    @property
    def keys(self) -> list[Key]:
        return list(self._partitions)
