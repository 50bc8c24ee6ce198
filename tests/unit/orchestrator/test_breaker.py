"""Circuit breakers: the state machine, against an independent count of the window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.breaker import (
    BUCKET_MS,
    Breaker,
    BreakerBoard,
    BreakerPolicy,
    BreakerState,
)

pytestmark = pytest.mark.unit

POLICY = BreakerPolicy(failure_rate=0.2, window_s=10, min_calls=5, cooldown_s=3, half_open_calls=2)

# One step: outcomes (ok, failed) observed now, or an admission asked now, then time moves.
steps = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(st.just("observe"), st.integers(0, 4), st.integers(0, 3)),
            st.tuples(st.just("admit"), st.just(0), st.just(0)),
        ),
        st.integers(0, 2500),  # ms until the next step
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_breaker_keeps_its_rules_whatever_happens(
    script: list[tuple[tuple[str, int, int], int]],
) -> None:
    breaker = Breaker(POLICY)
    now = 1_000_000
    seen: list[tuple[int, int, int]] = []  # every observation since the last close
    trials = 0  # admitted in the current half-open period
    for (what, ok, failed), wait_ms in script:
        before = breaker.state(now)
        if before is not BreakerState.HALF_OPEN:
            trials = 0
        if what == "admit":
            admitted = breaker.admit(now)
            if before is BreakerState.CLOSED:
                assert admitted, "a closed breaker refused a task"
            if before is BreakerState.OPEN:
                assert not admitted, "an open breaker admitted a task"
            if breaker.state(now) is BreakerState.HALF_OPEN and admitted:
                trials += 1
            assert trials <= POLICY.half_open_calls, "more trials than the half-open quota"
        else:
            changed = breaker.observe(now, ok, failed)
            if ok + failed:
                seen.append((now, ok, failed))
            after = breaker.state(now)
            if before is BreakerState.CLOSED and after is BreakerState.OPEN:
                # Opened only past the threshold, with the minimum of calls, counted here
                # independently over the window's whole buckets.
                horizon = now - now % BUCKET_MS - round(POLICY.window_s * 1000)
                window = [(o, f) for at, o, f in seen if at - at % BUCKET_MS > horizon]
                calls = sum(o + f for o, f in window)
                fails = sum(f for _, f in window)
                assert calls >= POLICY.min_calls
                assert fails / calls > POLICY.failure_rate
                assert breaker.opened_at_ms == now
            if before is BreakerState.HALF_OPEN and failed:
                assert after is BreakerState.OPEN, "a failed trial did not reopen it"
            if after is BreakerState.CLOSED and before is not BreakerState.CLOSED:
                seen = []
            assert changed == (after is not before)
        now += wait_ms


def test_open_half_open_closed_in_order() -> None:
    breaker = Breaker(POLICY)
    t = 10_000
    breaker.observe(t, ok=3, failed=0)
    assert breaker.observe(t + 100, ok=0, failed=1) is False  # 1 of 4: too few calls
    assert breaker.observe(t + 200, ok=0, failed=1) is True  # 2 of 5 = 40 % > 20 %
    assert breaker.state(t + 200) is BreakerState.OPEN and breaker.opened_at_ms == t + 200
    assert not breaker.admit(t + 3_199)  # cooling down
    assert breaker.admit(t + 3_200) and breaker.state(t + 3_200) is BreakerState.HALF_OPEN
    assert breaker.admit(t + 3_201) and not breaker.admit(t + 3_202)  # quota of 2
    breaker.observe(t + 3_500, ok=1, failed=0)
    assert breaker.state(t + 3_500) is BreakerState.HALF_OPEN
    breaker.observe(t + 3_600, ok=1, failed=0)
    view = breaker.view(t + 3_600)
    assert (view.state, view.calls, view.opened_at_ms) == (BreakerState.CLOSED, 0, None)


def test_failures_age_out_of_the_window() -> None:
    breaker = Breaker(POLICY)
    breaker.observe(0, ok=0, failed=4)  # 4 calls: below the minimum
    # 11 s later those failures left the window: 5 successes and 1 failure is 17 %.
    assert not breaker.observe(11_000, ok=5, failed=1)
    assert breaker.view(11_000).calls == 6


def test_a_board_gates_per_capability_and_shows_versions() -> None:
    board = BreakerBoard(POLICY)
    board.observe("summarize", "1.0.0", 5_000, ok=4, failed=0)
    board.observe("summarize", "2.0.0", 5_000, ok=0, failed=3)
    assert board.generation == 1 and not board.admit("summarize", 5_001)
    assert board.admit("classify", 5_001)  # never seen: closed
    assert "circuit breaker of summarize open: 3 of 7 calls failed" in board.why_not(
        "summarize", 5_001
    )
    rows = [(r.capability, r.version, r.view.state, r.view.calls) for r in board.rows(5_001)]
    assert rows == [
        ("summarize", "*", BreakerState.OPEN, 7),
        ("summarize", "1.0.0", BreakerState.CLOSED, 4),
        ("summarize", "2.0.0", BreakerState.CLOSED, 3),  # under min_calls alone
    ]
    board.refresh(8_000)  # the cool-down is over: half-open, and the generation moves
    assert board.generation == 2 and board.admit("summarize", 8_000)
    assert "half-open" in board.why_not("summarize", 8_000)


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        BreakerPolicy(failure_rate=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        BreakerPolicy(min_calls=0)


def test_outcomes_after_the_cool_down_are_trials_even_when_nobody_asked() -> None:
    """A reader replaying the observations (a restarted orchestrator, ``fleet breakers``)
    never admits anything, and must reach the state the live instances reached."""
    breaker = Breaker(POLICY)
    assert breaker.observe(0, ok=0, failed=5)  # open at 0, half-open from 3 s
    assert not breaker.observe(2_000, ok=1, failed=0)  # still cooling: changes nothing
    assert breaker.observe(3_000, ok=1, failed=0) is False  # a first trial: half-open
    assert breaker.state(3_000) is BreakerState.HALF_OPEN
    assert breaker.observe(3_100, ok=1, failed=0) is True  # the second: closed
    assert breaker.view(3_100).calls == 0
