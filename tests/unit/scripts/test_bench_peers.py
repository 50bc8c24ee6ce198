"""The peers section's pure parts: Celery's run in the platform rows' figures, and the
ratios and goals it prints. No broker, no Celery: the runs are made up here."""

from __future__ import annotations

import pytest
from bench_peers import PeerRun, goal_lines, ratio_rows
from bench_runs import celery_figures

pytestmark = pytest.mark.unit

FIGURES = ("tasks_per_s", "p50_ms", "p99_ms", "paced_p50_ms", "paced_p99_ms")


def _run(paced_sent: int = 2) -> PeerRun:
    # Four tasks sent at 0.0-0.3, the last seen 2 s after the start; two paced ones.
    burst = [(0.1 * i, 1.0 + 0.1 * i + (0.7 if i == 3 else 0)) for i in range(4)]
    return PeerRun(0.0, 0.4, burst, [(10.0, 10.002), (10.01, 10.014)], paced_sent, "Celery x")


def test_celery_figures_as_the_platform_rows_count_them() -> None:
    figures = celery_figures(_run(), 4)
    assert figures["tasks_per_s"] == pytest.approx(4 / 2.0)
    assert figures["submit_per_s"] == pytest.approx(4 / 0.4)
    assert figures["p50_ms"] == pytest.approx(1000.0)
    assert figures["paced_p50_ms"] == pytest.approx(3.0)
    assert figures["paced_q1.000"] == pytest.approx(4.0)


def test_celery_figures_refuse_a_run_with_results_missing() -> None:
    with pytest.raises(SystemExit, match="1 of 3 did not come back"):
        celery_figures(_run(paced_sent=3), 4)
    with pytest.raises(SystemExit, match="only 4 of 5 arrived"):
        celery_figures(_run(), 5)


def test_ratios_are_platform_over_celery() -> None:
    platform = dict(zip(FIGURES, (1500.0, 1000.0, 2000.0, 20.0, 60.0), strict=True))
    celery = dict(zip(FIGURES, (500.0, 500.0, 1000.0, 2.0, 4.0), strict=True))
    assert ratio_rows(platform, celery) == dict(
        zip(FIGURES, (3.0, 2.0, 2.0, 10.0, 15.0), strict=True)
    )


def test_goals_met_say_so() -> None:
    lines = goal_lines({"tasks_per_s": 3.0, "paced_p50_ms": 10.0})
    assert lines == [
        "burst throughput 3.00x Celery's: goal >= 3x met",
        "paced p50 10.00x Celery's: goal <= 10x met",
    ]


def test_goals_missed_give_the_distance() -> None:
    lines = goal_lines({"tasks_per_s": 1.5, "paced_p50_ms": 25.0})
    assert lines == [
        "burst throughput 1.50x Celery's: goal >= 3x NOT met, 2.00x short",
        "paced p50 25.00x Celery's: goal <= 10x NOT met, 2.50x over",
    ]
