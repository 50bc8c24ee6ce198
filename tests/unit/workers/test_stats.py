"""The figures an agent heartbeats: counts since start, and over a sliding window the
finished and failed tasks and the handler latency percentiles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.messages import UsageLine
from workers.stats import HandlerStats, percentile

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_empty_window_has_no_percentiles() -> None:
    snapshot = HandlerStats(60).snapshot()
    assert (snapshot.p50_ms, snapshot.p95_ms, snapshot.window_completed) == (None, None, 0)


def test_counts_and_percentiles_over_the_window() -> None:
    clock = Clock()
    stats = HandlerStats(60, clock=clock)
    for ms in range(1, 101):  # 1..100 ms, every 10th failed
        stats.record(ms, failed=ms % 10 == 0)
    snapshot = stats.snapshot()
    assert (snapshot.completed, snapshot.failed) == (90, 10)
    assert (snapshot.window_completed, snapshot.window_failed) == (90, 10)
    assert (snapshot.p50_ms, snapshot.p95_ms) == (50, 95)
    clock.now += 61  # all of it leaves the window; the totals stay
    stats.record(7, failed=False)
    snapshot = stats.snapshot()
    assert (snapshot.completed, snapshot.failed) == (91, 10)
    assert (snapshot.window_completed, snapshot.window_failed) == (1, 0)
    assert (snapshot.p50_ms, snapshot.p95_ms) == (7, 7)


def test_the_window_is_bounded() -> None:
    stats = HandlerStats(60, max_samples=10)
    for _ in range(100):
        stats.record(1, failed=False)
    snapshot = stats.snapshot()
    assert snapshot.window_completed == 10 and snapshot.completed == 100


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_percentiles_are_values_of_the_sample_in_order(values: list[float]) -> None:
    ordered = sorted(values)
    p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
    assert p50 in ordered and p95 in ordered
    assert p50 is not None and p95 is not None and p50 <= p95 <= ordered[-1]


def test_usage_adds_up_per_model_since_start_and_outlives_the_window() -> None:
    now = [0.0]
    stats = HandlerStats(window_s=10, clock=lambda: now[0])
    stats.add_usage([UsageLine(model="m", tokens_in=5, cost=2)])
    stats.add_usage([])
    now[0] = 100.0  # far past the window: usage is a total, not a window figure
    stats.add_usage([UsageLine(model="m", tokens_out=1), UsageLine(model="n", cost=3)])
    assert stats.snapshot().usage == [
        UsageLine(model="m", tokens_in=5, tokens_out=1, cost=2),
        UsageLine(model="n", cost=3),
    ]
