"""Usage per task: the meter handlers report into, and the sums the orchestrator makes."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.messages import UsageLine
from fleet.usage import MAX_MODELS, Meter, describe, merge, total

pytestmark = pytest.mark.unit

lines = st.lists(
    st.builds(
        UsageLine,
        model=st.sampled_from(["", "gpt-x", "claude-y", "rules"]),
        tokens_in=st.integers(0, 10**9),
        tokens_out=st.integers(0, 10**9),
        cost=st.integers(0, 10**12),
    ),
    max_size=12,
)


def test_reports_add_up_per_model_with_exact_credits() -> None:
    meter = Meter()
    meter.report(tokens_in=100, tokens_out=20, cost=0.1, model="gpt-x")
    meter.report(tokens_in=50, tokens_out=5, cost="0.2", model="gpt-x")
    meter.report(cost=1)  # a tool with a price and no tokens
    assert meter.lines() == [
        UsageLine(model="", cost=1_000_000),
        # 0.1 + 0.2 is 0.30000000000000004 in floats; exactly 0.3 credits here.
        UsageLine(model="gpt-x", tokens_in=150, tokens_out=25, cost=300_000),
    ]
    assert describe(meter.lines()) == "150 tokens in, 25 out, 1.3 credits (gpt-x)"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tokens_in": -1}, "tokens_in must be between 0 and"),
        ({"tokens_out": 1.5}, "tokens_out must be an integer, got 1.5"),
        ({"tokens_in": True}, "tokens_in must be an integer, got True"),
        ({"cost": -0.5}, "cost: credits must not be negative"),
        ({"cost": "1e3"}, 'cost: expected credits as a decimal such as "2" or "0.25"'),
        ({"cost": 0.0000001}, "cost: at most 6 decimals"),
        ({"model": 7}, "model must be a string, got int"),
    ],
)
def test_a_bad_report_says_what_is_wrong_and_adds_nothing(
    arguments: dict[str, object], message: str
) -> None:
    meter = Meter()
    meter.report(tokens_in=1, model="m")
    with pytest.raises(ValueError, match="report_usage: ") as raised:
        meter.report(**arguments)  # type: ignore[arg-type]
    assert message in str(raised.value)
    assert meter.lines() == [UsageLine(model="m", tokens_in=1)]


def test_the_models_of_one_task_are_bounded() -> None:
    meter = Meter()
    for n in range(MAX_MODELS):
        meter.report(tokens_in=1, model=f"m{n}")
    meter.report(tokens_in=1, model="m0")  # a known model still adds
    with pytest.raises(ValueError, match=f"at most {MAX_MODELS} models"):
        meter.report(tokens_in=1, model="one-more")
    assert len(meter.lines()) == MAX_MODELS


def test_reports_from_many_threads_are_all_counted() -> None:
    meter = Meter()

    def report() -> None:
        for _ in range(1000):
            meter.report(tokens_in=1, tokens_out=2, cost="0.000001", model="m")

    workers = [threading.Thread(target=report) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert meter.lines() == [UsageLine(model="m", tokens_in=8000, tokens_out=16000, cost=8000)]


@given(lines, lines, lines)
def test_merging_is_a_sum_per_model_whatever_the_grouping(
    a: list[UsageLine], b: list[UsageLine], c: list[UsageLine]
) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c)) == merge(c, b, a)
    merged = merge(a, b, c)
    assert [line.model for line in merged] == sorted({line.model for line in a + b + c})
    whole = total(merged)
    assert whole.tokens_in == sum(line.tokens_in for line in a + b + c)
    assert whole.tokens_out == sum(line.tokens_out for line in a + b + c)
    assert whole.cost == sum(line.cost for line in a + b + c)
