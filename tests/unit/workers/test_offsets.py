"""The offset tracker: a commit never passes an unfinished record, whatever the order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.offsets import OffsetTracker, PartitionOffsets

pytestmark = pytest.mark.unit


def test_nothing_started_means_nothing_to_commit() -> None:
    offsets = PartitionOffsets()
    assert offsets.watermark() is None
    assert offsets.take_commit() is None


def test_watermark_is_the_lowest_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 6, 7, 8):
        assert offsets.start(offset)
    assert offsets.watermark() == 5
    offsets.finish(7)
    offsets.finish(6)
    assert offsets.watermark() == 5  # 5 still runs: committing 6+ would skip it
    offsets.finish(5)
    assert offsets.watermark() == 8
    offsets.finish(8)
    assert offsets.watermark() == 9
    assert offsets.in_flight == 0


def test_gaps_in_offsets_do_not_hold_the_watermark_back() -> None:
    # Transaction markers and compaction leave holes that are never delivered.
    offsets = PartitionOffsets()
    for offset in (10, 13, 20):
        offsets.start(offset)
    offsets.finish(10)
    assert offsets.watermark() == 13
    offsets.finish(20)
    offsets.finish(13)
    assert offsets.watermark() == 21


def test_a_redelivered_offset_is_refused() -> None:
    offsets = PartitionOffsets()
    assert offsets.start(3)
    assert not offsets.start(3)
    assert not offsets.start(1)
    offsets.finish(3)
    assert not offsets.start(3)  # done already: running it again would be a duplicate
    assert offsets.start(4)


def test_finishing_an_unknown_offset_is_an_error() -> None:
    offsets = PartitionOffsets()
    offsets.start(1)
    offsets.finish(1)
    with pytest.raises(ValueError, match="already finished"):
        offsets.finish(1)
    with pytest.raises(ValueError, match="not started"):
        offsets.finish(2)
    with pytest.raises(ValueError, match="negative"):
        offsets.start(-1)


def test_take_commit_only_reports_a_moved_watermark() -> None:
    offsets = PartitionOffsets()
    offsets.start(0)
    offsets.start(1)
    assert offsets.take_commit() == 0
    assert offsets.take_commit() is None
    offsets.finish(1)
    assert offsets.take_commit() is None  # 0 still unfinished
    offsets.finish(0)
    assert offsets.take_commit() == 2
    assert offsets.take_commit() is None


def test_tracker_revoke_returns_watermarks_and_forgets() -> None:
    tracker = OffsetTracker()
    tracker.assign([("t", 0), ("t", 1)])
    p0, p1 = tracker.get(("t", 0)), tracker.get(("t", 1))
    assert p0 is not None and p1 is not None
    p0.start(4)
    p0.finish(4)
    p1.start(9)
    assert tracker.take_commits() == {("t", 0): 5, ("t", 1): 9}
    assert tracker.take_commits() == {}
    # Revoke hands out every known watermark again: an async commit may have failed.
    assert tracker.revoke([("t", 0), ("t", 1), ("t", 7)]) == {("t", 0): 5, ("t", 1): 9}
    assert tracker.keys == []
    assert tracker.get(("t", 0)) is None


def test_a_reassigned_partition_starts_fresh_and_late_work_cannot_move_it() -> None:
    tracker = OffsetTracker()
    tracker.assign([("t", 0)])
    old = tracker.get(("t", 0))
    assert old is not None
    old.start(1)
    tracker.revoke([("t", 0)])
    tracker.assign([("t", 0)])
    new = tracker.get(("t", 0))
    assert new is not None and new is not old
    assert new.start(1)  # redelivered after the rebalance: runs again in this assignment
    old.finish(1)  # the old run finishing late touches only the old object
    assert tracker.take_commits() == {("t", 0): 1}


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]]]:
    """Increasing offsets with gaps, and a random interleaving of starts and finishes."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=60))
    first = draw(st.integers(min_value=0, max_value=1000))
    offsets = [first + sum(gaps[:i]) for i in range(len(gaps))]
    steps: list[tuple[str, int]] = []
    pending: list[int] = []
    next_start = 0
    while next_start < len(offsets) or pending:
        can_start = next_start < len(offsets)
        if can_start and (not pending or draw(st.booleans())):
            steps.append(("start", offsets[next_start]))
            pending.append(offsets[next_start])
            next_start += 1
        else:
            done = pending.pop(draw(st.integers(min_value=0, max_value=len(pending) - 1)))
            steps.append(("finish", done))
    return offsets, steps


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_committed_offset_never_passes_an_unfinished_one(
    schedule: tuple[list[int], list[tuple[str, int]]],
) -> None:
    offsets, steps = schedule
    tracker = PartitionOffsets()
    unfinished: set[int] = set()
    finished: set[int] = set()
    previous = -1
    for action, offset in steps:
        if action == "start":
            assert tracker.start(offset)
            unfinished.add(offset)
        else:
            tracker.finish(offset)
            unfinished.remove(offset)
            finished.add(offset)
        mark = tracker.watermark()
        assert mark is not None
        if unfinished:
            assert mark == min(unfinished)
        # Everything below the mark that was delivered is finished; it never goes back.
        assert all(o in finished for o in offsets if o < mark)
        assert mark >= previous
        previous = mark
        committed = tracker.take_commit()
        assert committed is None or committed == mark
    assert tracker.watermark() == offsets[-1] + 1
    assert tracker.in_flight == 0
