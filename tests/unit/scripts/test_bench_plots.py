"""The benchmark's plots: the rows' figures shaped into what each plot draws, and the
PNGs written headless. No broker: the data is made up here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from bench_common import CDF_QUANTILES, quantiles
from bench_plots import cdf, cdfs, load_curve, throughputs, timeline, write_plots

pytestmark = pytest.mark.unit


@dataclass
class Outcome:
    served_s: float | None
    drained_s: float | None
    rebalanced_s: float | None = None
    restored_s: float | None = None


def test_quantiles_are_kept_in_ms_and_read_back_as_a_cdf() -> None:
    seconds = [i / 1000 for i in range(1, 1001)]  # 1 ms to 1,000 ms
    row = {"paced_p50_ms": 500.0} | quantiles("paced", seconds)
    ms, fractions = cdf(row, "paced")
    assert len(ms) == len(CDF_QUANTILES)
    assert fractions == sorted(fractions)
    assert ms == sorted(ms)
    assert (ms[0], fractions[0]) == (1.0, 0.0)
    assert (ms[-1], fractions[-1]) == (1000.0, 1.0)
    assert ms[fractions.index(0.5)] == pytest.approx(500.0, abs=1)
    assert cdf(row, "burst") == ([], [])  # another prefix's keys are not taken


def test_cdfs_only_for_rows_that_have_them() -> None:
    rows = {
        "relay": quantiles("burst", [0.01, 0.02]) | quantiles("paced", [0.001]),
        "floor": quantiles("paced", [0.002]),
    }
    assert set(cdfs(rows, "burst")) == {"relay"}
    assert set(cdfs(rows, "paced")) == {"relay", "floor"}


def test_load_curve_is_ordered_by_share() -> None:
    row: dict[str, float] = {}
    for i, (share, p50) in enumerate([(0.5, 20.0), (0.1, 15.0), (1.0, 900.0)]):
        row |= {f"load{i}_share": share, f"load{i}_rate": share * 1000}
        row |= {f"load{i}_p50_ms": p50, f"load{i}_p99_ms": p50 * 3}
    assert load_curve(row) == [
        (0.1, 100.0, 15.0, 45.0),
        (0.5, 500.0, 20.0, 60.0),
        (1.0, 1000.0, 900.0, 2700.0),
    ]
    assert load_curve({"tasks_per_s": 1.0}) == []


def test_throughputs_of_the_rows_with_a_burst() -> None:
    rows = {"relay": {"tasks_per_s": 3000.0}, "floor": {"paced_p50_ms": 6.0}}
    assert throughputs(rows) == {"relay": 3000.0}


def test_timeline_takes_medians_and_skips_what_no_run_logged() -> None:
    named = [Outcome(4.0, 5.0, 1.0, 1.5), Outcome(6.0, 7.0, 2.0, 2.5), Outcome(5.0, 6.0, 3, 3.5)]
    assert timeline(named) == [
        ("until rebalanced", 0.0, 2.0),
        ("restoring", 2.0, 2.5),
        ("until served", 2.5, 5.0),
        ("draining", 5.0, 6.0),
    ]
    raw = [Outcome(12.0, 12.5), Outcome(13.0, 13.5)]  # a raw group logs no restore
    assert timeline(raw) == [("until served", 0.0, 12.5), ("draining", 12.5, 13.0)]
    assert timeline([Outcome(None, None)]) == []


def test_write_plots_writes_what_the_data_allows(tmp_path: Path) -> None:
    rows = {
        "raw relay": {"tasks_per_s": 3000.0}
        | quantiles("burst", [0.1, 0.2, 0.3])
        | quantiles("paced", [0.005, 0.006]),
        "Celery + Redis": {"tasks_per_s": 800.0} | quantiles("paced", [0.002, 0.003]),
    }
    written = write_plots(rows, {}, tmp_path / "out")
    assert sorted(p.name for p in written) == [
        "latency-cdf-burst.png",
        "latency-cdf-paced.png",
        "throughput.png",
    ]
    sweep = {"load0_share": 0.1, "load0_rate": 80.0, "load0_p50_ms": 9.0, "load0_p99_ms": 30.0}
    recovery = {"raw consumer group": [Outcome(12.0, 12.5)]}
    written = write_plots({"sweep": sweep}, recovery, tmp_path / "out")
    assert sorted(p.name for p in written) == ["latency-vs-load.png", "recovery-timeline.png"]
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG")
    # The first call's plots are gone: the folder holds one run's pictures.
    assert sorted((tmp_path / "out").iterdir()) == sorted(written)
