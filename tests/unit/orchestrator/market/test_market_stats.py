"""Jain's fairness index over a window of awards."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.market.stats import FairnessWindow, fill_rate

pytestmark = pytest.mark.unit


def test_equal_shares_score_one_and_one_taker_scores_one_over_n() -> None:
    equal = FairnessWindow()
    for n in range(4):
        equal.add(1_000, f"wf-{n}", 2)
    assert equal.index(1_000) == 1.0
    hog = FairnessWindow()
    hog.add(1_000, "wf-0", 8)
    for n in range(1, 4):
        hog.add(1_000, f"wf-{n}", 0)
    assert hog.index(1_000) == pytest.approx(1 / 4)


def test_awards_leave_the_window() -> None:
    window = FairnessWindow(window_ms=1_000)
    window.add(0, "wf-a", 5)
    window.add(900, "wf-b", 1)
    assert window.index(900) == pytest.approx(36 / (2 * 26))
    assert window.index(1_500) == 1.0  # only wf-b's award is left
    assert window.index(5_000) is None


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 9)), min_size=1))
def test_the_index_lies_between_one_over_n_and_one(awards: list[tuple[str, int]]) -> None:
    window = FairnessWindow()
    for workflow_id, units in awards:
        window.add(0, workflow_id, units)
    index = window.index(0)
    n = len({w for w, _u in awards})
    assert index is not None and 1 / n - 1e-9 <= index <= 1 + 1e-9


def test_fill_rate_is_what_a_round_sold_out_of_what_it_could() -> None:
    assert fill_rate(free=2, demanded=5, awarded=2) == 1.0
    assert fill_rate(free=4, demanded=3, awarded=0) == 0.0  # a big bid held the rest back
    assert fill_rate(free=3, demanded=2, awarded=1) == 0.5
    assert fill_rate(free=0, demanded=5, awarded=0) is None
    assert fill_rate(free=2, demanded=0, awarded=0) is None
