"""Benchmark: the platform against raw confluent-kafka baselines, measured in one run.

Sections (``--sections``, each runnable alone; the runs themselves are in bench_runs.py):

platform
    (a) baseline: a producer process sends N trivial tasks; a relay process (plain
    consumer + producer, commits like a worker) answers each with a result; a collector
    process records when each result arrives. (b) N one-step workflows (capability
    ``noop``) through orchestrator and worker processes; the collector records each
    terminal workflow event. The orchestrator runs under cProfile to show where the time
    goes.
transactions
    The same burst without the profiler, once per orchestrator guarantee and commit
    interval (``--txn-configs``), each followed by a paced load (latency without
    queueing); every rep measures the relay again first (``--txn-reps``).
peers
    (bench_peers.py) The platform and Celery with Redis, the same burst and paced load of
    no-op tasks, and the platform's ratios to Celery.
load
    The platform's p50/p99 at paced loads offered at shares of its burst's rate.
recovery
    (bench_recovery.py) kill -9 of the orchestrator owning half the partitions under a
    steady load: how long until the survivor serves them, against a raw consumer group.
restore (not by default)
    How long restoring ``--restore`` in-flight workflows' state from the changelog takes.

Every figure is also given as a ratio to a baseline measured in the same run: these
machines are shared and noisy, so the ratios are what to compare between runs. The
plots (bench_plots.py) go to ``bench-results/``.
"""

from __future__ import annotations

import argparse
import gc
import os
import pstats
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench_common import delete_bench_topics, fresh_topics
from bench_floor import floor_relay, paced_floor_latency
from bench_peers import print_peers, redis_server
from bench_plots import write_plots
from bench_recovery import Outcome, print_recovery, run_recovery
from bench_runs import (
    collect,
    paced_relay_latency,
    print_platform,
    print_restore,
    relay,
    run_baseline,
    run_peers,
    run_platform,
    run_restore,
)

from fleet.logs import configure_logging
from fleet.settings import Settings
from fleetctl.localkafka import LocalKafka

SECTIONS = ("platform", "transactions", "peers", "load", "recovery", "restore")
DEFAULT_SECTIONS = SECTIONS[:5]
LOAD_SHARES = "0.1,0.25,0.5,0.75,1"
RESTORE_WORKFLOWS = 100_000
TXN_CONFIGS = "exactly_once:0,exactly_once:100,exactly_once:1000,at_least_once:0"
RECOVERY_CONFIGS = "exactly_once:0,at_least_once:0"
RECOVERY_SESSION_TIMEOUT_MS = 10_000  # librdkafka's 45 s would be most of every row
# The latency floor (bench_floor.py), paced only: the platform's four hops with plain
# clients, and with the orchestrator side's transactions.
FLOOR_ROWS = (("floor, 4 hops", False), ("floor, 4 hops, txn", True))


Sample = dict[str, float]  # tasks_per_s, p50_ms, p99_ms, paced_p50_ms, paced_p99_ms


def run_transactions(
    settings: Settings,
    count: int,
    work: Path,
    *,
    configs: list[tuple[str, int]],
    paced_load: tuple[float, float],
    reps: int,
    shapes: bool,
) -> dict[str, list[tuple[Sample, Sample]]]:
    """Each rep: the raw relay, then every config in turn; per row, (values, values /
    that rep's relay). Reps take turns so a noisy minute hits every row alike."""
    rows: dict[str, list[tuple[Sample, Sample]]] = {"raw relay": []}
    rows |= {name: [] for name, _ in FLOOR_ROWS}
    rows |= {f"{guarantee} {interval_ms}": [] for guarantee, interval_ms in configs}
    for rep in range(reps):
        print(f"transactions: run {rep + 1} of {reps}", flush=True)
        relay_row = run_baseline(settings, count, work) | paced_relay_latency(settings, *paced_load)
        rows["raw relay"].append((relay_row, dict.fromkeys(relay_row, 1.0)))
        for name, transactional in FLOOR_ROWS:
            row = paced_floor_latency(settings, *paced_load, transactional=transactional)
            ratio = {key: value / relay_row[key] for key, value in row.items()}
            rows.setdefault(name, []).append((row, ratio))
            print(f"  {name}: {_rounded(row)}", flush=True)
        for guarantee, interval_ms in configs:
            args = ("--guarantee", guarantee, "--commit-interval-ms", str(interval_ms))
            row = run_platform(
                settings,
                count,
                work,
                orchestrator_args=args,
                paced_load=paced_load,
                shapes=shapes,
            )
            ratio = {key: value / relay_row[key] for key, value in row.items() if key in relay_row}
            rows[f"{guarantee} {interval_ms}"].append((row, ratio))
            print(f"  {guarantee} {interval_ms} ms: {_rounded(row)}, relay: {_rounded(relay_row)}")
    return rows


def _warm_up(settings: Settings, count: int, work: Path, paced_load: tuple[float, float]) -> None:
    """Thrown away: a broker just started took 10 ms (p50) per one-record transaction
    over its first 200, 4 ms after about 1,000 (JIT); the floor's paced run is ~1,000."""
    print("benchmark: warming the broker up", flush=True)
    paced_floor_latency(settings, *paced_load, transactional=True)
    run_baseline(settings, count, work)


def _rounded(sample: Sample) -> dict[str, int]:
    """The figures a table prints (not the plots' quantiles)."""
    return {key: round(value) for key, value in sample.items() if "_q" not in key}


def _medians(samples: list[tuple[Sample, Sample]]) -> Sample:
    """Key by key over reps, as the tables take them."""
    return {key: statistics.median(s[0][key] for s in samples) for key in samples[0][0]}


def _sections(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)}")
    return chosen


def _configs(text: str) -> list[tuple[str, int]]:
    """``exactly_once:100,at_least_once:0`` -> [(guarantee, commit interval ms), ...]."""
    configs = []
    for item in text.split(","):
        guarantee, _, interval = item.strip().partition(":")
        if guarantee not in ("exactly_once", "at_least_once") or not interval.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: want GUARANTEE:INTERVAL_MS")
        configs.append((guarantee, int(interval)))
    return configs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    r = sub.add_parser("relay")
    r.add_argument("source")
    r.add_argument("sink")
    r.add_argument("count", type=int)
    r.add_argument("--group")
    f = sub.add_parser("floor")
    f.add_argument("--group", required=True)
    f.add_argument("--route", action="append", required=True, help="SOURCE=SINK topics")
    f.add_argument("--transactional", action="store_true")
    c = sub.add_parser("collect")
    c.add_argument("topic")
    c.add_argument("count", type=int)
    c.add_argument("out", type=Path)
    c.add_argument("--events", action="store_true")
    parser.add_argument("-n", "--tasks", type=int, default=2000, help="burst size")
    parser.add_argument(
        "--sections",
        type=_sections,
        default=list(DEFAULT_SECTIONS),
        help=f"of {','.join(SECTIONS)} (default {','.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument(
        "--txn-configs",
        type=_configs,
        default=_configs(TXN_CONFIGS),
        help=f"GUARANTEE:COMMIT_INTERVAL_MS,... (default {TXN_CONFIGS})",
    )
    parser.add_argument("--txn-reps", type=int, default=1, help="median of this many runs")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="workflows/s")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-shapes",
        dest="shapes",
        action="store_false",
        help="transactions: skip the paced ten-step sequence and fan-out of 100",
    )
    parser.add_argument(
        "--celery-pool",
        default="prefork",
        choices=("prefork", "threads"),
        help="peers: the Celery worker's pool (prefork, its default, was the faster here)",
    )
    parser.add_argument(
        "--load-shares",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=tuple(float(x) for x in LOAD_SHARES.split(",")),
        help=f"load: offered loads as shares of the burst's rate (default {LOAD_SHARES})",
    )
    parser.add_argument("--load-seconds", type=float, default=3.0, help="load: per point")
    parser.add_argument(
        "--plots", type=Path, default=Path("bench-results"), help="where the PNGs go"
    )
    parser.add_argument("--recovery-configs", type=_configs, default=_configs(RECOVERY_CONFIGS))
    parser.add_argument("--recovery-reps", type=int, default=2)
    parser.add_argument("--recovery-rate", type=float, default=50.0, help="workflows/s")
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=RECOVERY_SESSION_TIMEOUT_MS,
        help="recovery: the groups' session.timeout.ms (0: librdkafka's default, 45 s)",
    )
    parser.add_argument(
        "--transaction-timeout-ms",
        type=int,
        help="recovery: the orchestrators' transaction.timeout.ms",
    )
    parser.add_argument(
        "--restore",
        type=int,
        help=f"restore: N workflows' state (default {RESTORE_WORKFLOWS}; implies the section)",
    )
    return parser


def main() -> None:
    args = _parser().parse_args()
    settings = Settings.from_env(os.environ)
    configure_logging(settings.model_copy(update={"log_level": "warning"}))
    if args.cmd == "relay":
        relay(settings, args.source, args.sink, args.count, args.group)
        return
    if args.cmd == "floor":
        routes = dict(route.split("=", 1) for route in args.route)
        floor_relay(settings, routes, args.group, args.transactional)
        return
    if args.cmd == "collect":
        collect(settings, args.topic, args.count, args.out, args.events)
        return

    started_broker = False
    local_broker = not settings.bootstrap_servers
    if local_broker:
        local = LocalKafka(settings)
        started_broker = local.status() is None
        settings = settings.with_bootstrap(local.start())
    settings = settings.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:6]}."})
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            _run_sections(args, settings, Path(tmp))
    finally:
        if local_broker:
            delete_bench_topics(settings)
        if started_broker:
            gc.collect()  # no Kafka client left to destroy after its broker is gone
            LocalKafka(settings).stop()


def _run_sections(args: argparse.Namespace, settings: Settings, work: Path) -> None:
    began = time.monotonic()
    sections: list[str] = args.sections
    paced_load = (args.paced_rate, args.paced_seconds)
    print(f"benchmark: sections {', '.join(sections)}; bursts of {args.tasks}", flush=True)
    if "peers" in sections:
        redis_server()  # missing: say so now, not after the sections before it
    platform: dict[str, float] = {}
    plots: dict[str, Sample] = {}  # name -> figures, for bench_plots
    recovery: dict[str, list[Outcome]] = {}
    if "platform" in sections:
        # Thrown away: on a broker just started (JIT, cold caches) the first relay run
        # was about half as fast as the later ones, which flattered the platform.
        run_baseline(settings, args.tasks, work)
        baseline = run_baseline(settings, args.tasks, work)
        platform = run_platform(settings, args.tasks, work, profile=work / "orchestrator.prof")
        print_platform(baseline, platform)
        if "transactions" not in sections:  # which measures both better (unprofiled)
            plots |= {"raw relay": baseline, "platform, profiled": platform}
    if {"transactions", "peers", "load"} & set(sections):
        _warm_up(settings, args.tasks, work, paced_load)
    if "transactions" in sections:
        rows = run_transactions(
            settings,
            args.tasks,
            work,
            configs=args.txn_configs,
            paced_load=paced_load,
            reps=args.txn_reps,
            shapes=args.shapes,
        )
        _print_transactions(args, rows)
        plots |= {name: _medians(samples) for name, samples in rows.items()}
    plots |= _peers_and_load(args, settings, work, paced_load)
    if "recovery" in sections:
        env: dict[str, str] = {}
        if args.session_timeout_ms:
            env["FLEET_KAFKA_CLIENT_SESSION_TIMEOUT_MS"] = str(args.session_timeout_ms)
        if args.transaction_timeout_ms:
            env["FLEET_KAFKA_CLIENT_TRANSACTION_TIMEOUT_MS"] = str(args.transaction_timeout_ms)
        recovery = run_recovery(
            settings,
            work,
            configs=args.recovery_configs,
            reps=args.recovery_reps,
            rate=args.recovery_rate,
            env=env,
        )
        print_recovery(recovery)
    if "restore" in sections or args.restore:
        print_restore(run_restore(fresh_topics(settings), args.restore or RESTORE_WORKFLOWS))
    print(f"\nbenchmark took {time.monotonic() - began:.0f} s")
    for path in write_plots(plots, recovery, args.plots):
        print(f"plot: {path}")
    if platform:
        print("\nwhere the orchestrator's time goes (cProfile, top 15 by own time):")
        stats = pstats.Stats(str(work / "orchestrator.prof"))
        stats.sort_stats("tottime").print_stats(15)


def _peers_and_load(
    args: argparse.Namespace, settings: Settings, work: Path, paced_load: tuple[float, float]
) -> dict[str, Sample]:
    """The peers and load sections, if chosen; their rows for the plots."""
    sections: list[str] = args.sections
    plots: dict[str, Sample] = {}
    if "peers" in sections:
        platform_row, celery_row, label = run_peers(
            settings, args.tasks, work, paced_load=paced_load, pool=args.celery_pool
        )
        load = f"a burst of {args.tasks}, then {args.paced_rate:g}/s for {args.paced_seconds:g} s"
        print_peers(platform_row, celery_row, label, load)
        plots |= {"platform (peers run)": platform_row, "Celery + Redis": celery_row}
    if "load" in sections:
        print(f"load: the platform at {args.load_seconds:g} s per offered load", flush=True)
        row = run_platform(settings, args.tasks, work, sweep=(args.load_shares, args.load_seconds))
        plots["platform, load sweep"] = {k: v for k, v in row.items() if k.startswith("load")}
    return plots


def _print_transactions(
    args: argparse.Namespace, rows: dict[str, list[tuple[Sample, Sample]]]
) -> None:
    print(
        f"\ntransactions: a burst of {args.tasks} one-step workflows, then "
        f"{args.paced_rate:g} workflows/s for {args.paced_seconds:g} s (paced); median of "
        f"{args.txn_reps} run(s); x = ratio to the raw relay of the same run"
    )
    columns = [
        ("wf/s", "tasks_per_s", False),
        ("x", "tasks_per_s", True),
        ("p50 ms", "p50_ms", False),
        ("p99 ms", "p99_ms", False),
        ("x", "p99_ms", True),
        ("paced p50", "paced_p50_ms", False),
        ("paced p99", "paced_p99_ms", False),
        ("x", "paced_p99_ms", True),
    ]
    print(f"{'guarantee, commit ms':22}" + "".join(f"{name:>10}" for name, _, _ in columns))
    for name, samples in rows.items():
        cells = []
        for _, key, is_ratio in columns:
            if key not in samples[0][0]:
                cells.append("")  # the floor rows are paced only
                continue
            value = statistics.median(sample[is_ratio][key] for sample in samples)
            cells.append(f"{value:.2f}" if is_ratio else f"{value:.0f}")
        print(f"{name:22}" + "".join(f"{c:>10}" for c in cells))
    _print_shapes(rows)


def _print_shapes(rows: dict[str, list[tuple[Sample, Sample]]]) -> None:
    """Paced latency by workflow shape; "per step" is what each of the sequence's nine
    extra steps added to the one-step workflow's p50."""
    shaped = {name: samples for name, samples in rows.items() if "seq10_p50_ms" in samples[0][0]}
    if not shaped:
        return
    print(
        "\nworkflow shapes, paced (ms): one step at the paced rate, ten steps in sequence "
        "at 10/s, a fan-out of 100 with fan-in at 2/s, each for 3 s"
    )
    keys = ["paced_p50_ms", "paced_p99_ms", "seq10_p50_ms", "seq10_p99_ms"]
    keys += ["fan100_p50_ms", "fan100_p99_ms"]
    heads = ("1 p50", "1 p99", "10 p50", "10 p99", "fan p50", "fan p99", "per step")
    print(f"{'guarantee, commit ms':22}" + "".join(f"{h:>10}" for h in heads))
    for name, samples in shaped.items():
        values = [statistics.median(sample[0][key] for sample in samples) for key in keys]
        per_step = (values[2] - values[0]) / 9
        print(f"{name:22}" + "".join(f"{v:>10.0f}" for v in values) + f"{per_step:>10.1f}")


if __name__ == "__main__":
    main()
