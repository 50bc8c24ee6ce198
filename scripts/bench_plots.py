"""The benchmark's pictures: PNG plots of the figures the sections already collect.

Pure functions shape a run's rows (name -> figures, as the tables print them) into what
each plot draws; ``write_plots`` draws them with matplotlib's object API on the Agg
canvas (headless, no pyplot and its global figure registry). A plot whose data no
section produced is not written. The rows' keys:

- ``burst_q{q}`` / ``paced_q{q}``: latency (ms) at quantile q (bench_common.quantiles);
- ``tasks_per_s``: burst throughput;
- ``load{i}_share``, ``load{i}_rate``, ``load{i}_p50_ms``, ``load{i}_p99_ms``: the load
  sweep (bench_runs._sweep).

The recovery timeline takes the recovery section's outcomes as they are.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

Rows = Mapping[str, Mapping[str, float]]


class Milestones(Protocol):
    """What the recovery timeline reads of a run (bench_recovery.Outcome), seconds
    after the kill."""

    rebalanced_s: float | None
    restored_s: float | None
    served_s: float | None
    drained_s: float | None


PLOTS = (
    "latency-cdf-burst.png",
    "latency-cdf-paced.png",
    "latency-vs-load.png",
    "throughput.png",
    "recovery-timeline.png",
)
# The timeline's phases: (label, the milestone that ends it), in order from the kill.
PHASES = (
    ("until rebalanced", "rebalanced_s"),
    ("restoring", "restored_s"),
    ("until served", "served_s"),
    ("draining", "drained_s"),
)


def cdf(row: Mapping[str, float], prefix: str) -> tuple[list[float], list[float]]:
    """(latencies ms, fractions) of a row's ``{prefix}_q{q}`` quantiles, by quantile."""
    points = sorted(
        (float(key[len(prefix) + 2 :]), value)
        for key, value in row.items()
        if key.startswith(f"{prefix}_q")
    )
    return [ms for _, ms in points], [q for q, _ in points]


def cdfs(rows: Rows, prefix: str) -> dict[str, tuple[list[float], list[float]]]:
    """Every row that has the ``prefix`` quantiles."""
    found = {name: cdf(row, prefix) for name, row in rows.items()}
    return {name: points for name, points in found.items() if points[0]}


def load_curve(row: Mapping[str, float]) -> list[tuple[float, float, float, float]]:
    """(share of peak, offered rate /s, p50 ms, p99 ms) per load point, by share."""
    points = []
    i = 0
    while f"load{i}_share" in row:
        keys = ("share", "rate", "p50_ms", "p99_ms")
        share, rate, p50, p99 = (row[f"load{i}_{k}"] for k in keys)
        points.append((share, rate, p50, p99))
        i += 1
    return sorted(points)


def throughputs(rows: Rows) -> dict[str, float]:
    return {name: row["tasks_per_s"] for name, row in rows.items() if "tasks_per_s" in row}


def timeline(outcomes: Sequence[Milestones]) -> list[tuple[str, float, float]]:
    """(phase, start s, end s) from the kill, each milestone the median of the runs that
    reached it; a phase whose milestone no run has (the raw group logs no restore) is
    left out, and the next starts where the last known one ended."""
    segments = []
    start = 0.0
    for label, attribute in PHASES:
        known = [v for o in outcomes if (v := getattr(o, attribute)) is not None]
        if not known:
            continue
        end = max(start, statistics.median(known))
        segments.append((label, start, end))
        start = end
    return segments


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attaches the headless canvas savefig draws on
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _cdf_plot(rows: Rows, prefix: str, title: str, path: Path) -> Path | None:
    found = cdfs(rows, prefix)
    if not found:
        return None
    figure = Figure(figsize=(8, 5))
    axes = figure.add_subplot()
    for name, (ms, fractions) in found.items():
        axes.plot(ms, fractions, label=name, drawstyle="steps-post")
    axes.set_xscale("log")
    axes.set_xlabel("latency, submit to result seen (ms, log scale)")
    axes.set_ylabel("fraction of units")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _load_plot(rows: Rows, path: Path) -> Path | None:
    curves = {name: curve for name, row in rows.items() if (curve := load_curve(row))}
    if not curves:
        return None
    figure = Figure(figsize=(8, 5))
    axes = figure.add_subplot()
    for name, curve in curves.items():
        rates = [rate for _, rate, _, _ in curve]
        axes.plot(rates, [p50 for *_, p50, _ in curve], marker="o", label=f"{name} p50")
        axes.plot(rates, [p99 for *_, p99 in curve], marker="s", label=f"{name} p99")
        for share, rate, _, p99 in curve:
            axes.annotate(f"{share:.0%}", (rate, p99), textcoords="offset points", xytext=(0, 6))
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())  # 20, 50, 100: not 2x10^1
    axes.yaxis.set_minor_formatter(ScalarFormatter())
    axes.margins(y=0.12)  # room for the share labels above the top points
    axes.set_xlabel("offered load (workflows/s; % of the burst's peak)")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_title("Latency against offered load, one-step workflows")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _throughput_plot(rows: Rows, path: Path) -> Path | None:
    bars = throughputs(rows)
    if not bars:
        return None
    figure = Figure(figsize=(8, 0.6 * len(bars) + 1.5))
    axes = figure.add_subplot()
    names = list(bars)[::-1]  # the first row on top
    axes.barh(names, [bars[n] for n in names])
    for y, name in enumerate(names):
        axes.annotate(
            f"{bars[name]:,.0f}", (bars[name], y), xytext=(4, -4), textcoords="offset points"
        )
    axes.set_xlabel("burst throughput (units/s)")
    axes.set_title("Burst throughput (same run)")
    axes.set_xlim(0, max(bars.values()) * 1.15)
    return _save(figure, path)


def _recovery_plot(recovery: Mapping[str, Sequence[Milestones]], path: Path) -> Path | None:
    lanes = {
        row: segments for row, outcomes in recovery.items() if (segments := timeline(outcomes))
    }
    if not lanes:
        return None
    figure = Figure(figsize=(9, 0.7 * len(lanes) + 1.8))
    axes = figure.add_subplot()
    colours = dict(zip([label for label, _ in PHASES], ["C0", "C1", "C2", "C3"], strict=True))
    names = list(lanes)[::-1]
    shown: set[str] = set()
    for y, name in enumerate(names):
        for label, start, end in lanes[name]:
            axes.barh(
                y,
                end - start,
                left=start,
                color=colours[label],
                label=None if label in shown else label,
            )
            shown.add(label)
    axes.set_yticks(range(len(names)), names)
    axes.axvline(0, color="black", linewidth=1)
    axes.set_xlabel("seconds after kill -9 (median of runs)")
    axes.set_title("Recovery after kill -9 of the member owning half the partitions")
    axes.legend(fontsize="small", loc="lower right")
    return _save(figure, path)


def write_plots(rows: Rows, recovery: Mapping[str, Sequence[Milestones]], out: Path) -> list[Path]:
    """Every plot the data allows, as PNG files in ``out``; returns their paths. A plot
    this run has no data for is removed: the folder never mixes two runs' pictures."""
    out.mkdir(parents=True, exist_ok=True)
    burst, paced = out / "latency-cdf-burst.png", out / "latency-cdf-paced.png"
    drawn = [
        _cdf_plot(rows, "burst", "Latency CDF, burst (includes queueing)", burst),
        _cdf_plot(rows, "paced", "Latency CDF, paced (light load)", paced),
        _load_plot(rows, out / "latency-vs-load.png"),
        _throughput_plot(rows, out / "throughput.png"),
        _recovery_plot(recovery, out / "recovery-timeline.png"),
    ]
    written = [path for path in drawn if path is not None]
    for stale in set(PLOTS) - {path.name for path in written}:
        (out / stale).unlink(missing_ok=True)
    return written
