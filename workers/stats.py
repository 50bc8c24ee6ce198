"""What an agent reports about its handlers in each heartbeat: counts and usage (tokens,
cost, per model) since it started, and over a sliding window the tasks finished, failed
and their latency percentiles.

Fed by the worker's metrics (``workers.shell.metrics``) from the Kafka loop's thread and
read by the heartbeat's thread, so it locks. Bounded: at most ``max_samples`` finished
tasks are kept for the window (the newest), whatever the rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet import usage
from fleet.messages import UsageLine


@dataclass(frozen=True)
class StatsSnapshot:
    completed: int
    failed: int
    window_completed: int
    window_failed: int
    p50_ms: float | None
    p95_ms: float | None
    window_s: float
    usage: list[UsageLine] = field(default_factory=list)  # since start, per model


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ascending values; None if none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class HandlerStats:
    def __init__(
        self,
        window_s: float = 60.0,
        *,
        max_samples: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float, bool]] = deque(maxlen=max_samples)
        self.completed = 0
        self.failed = 0
        self._usage: list[UsageLine] = []

    def add_usage(self, lines: list[UsageLine]) -> None:
        """What a finished attempt's handler reported (cancelled ones included: consumed)."""
        if lines:
            with self._lock:
                self._usage = usage.merge(self._usage, lines)

    def record(self, duration_ms: float, *, failed: bool) -> None:
        with self._lock:
            self._samples.append((self._clock(), duration_ms, failed))
            if failed:
                self.failed += 1
            else:
                self.completed += 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            horizon = self._clock() - self.window_s
            while self._samples and self._samples[0][0] < horizon:
                self._samples.popleft()
            window = list(self._samples)
            completed, failed = self.completed, self.failed
            used = list(self._usage)
        durations = sorted(d for _, d, _ in window)
        window_failed = sum(1 for _, _, f in window if f)
        return StatsSnapshot(
            completed=completed,
            failed=failed,
            window_completed=len(window) - window_failed,
            window_failed=window_failed,
            p50_ms=percentile(durations, 50),
            p95_ms=percentile(durations, 95),
            window_s=self.window_s,
            usage=used,
        )
