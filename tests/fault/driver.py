"""The fault driver: a real fleet under kill -9, SIGSTOP, broker faults and garbage.

It starts its own broker (``fleetctl.localkafka``, or uses ``KAFKA_BOOTSTRAP_SERVERS``), a
unique topic namespace, N orchestrators and M worker processes, submits a seeded mix of
workflows at a bounded rate while a seeded fault schedule runs, then reads every workflow
event, task and dead letter back from the beginning (read_committed) and checks DESIGN §4
invariants 1 and 2 against expectations computed here, in plain Python, from the inputs:

* every submitted workflow has exactly one terminal event (duplicates: 0, lost: 0);
* its kind is the expected one and a COMPLETED output equals the expected output;
* no task is dispatched after its workflow's terminal event, and no (task, attempt) twice;
* the dead letters are exactly the injected garbage.

Broker faults: a restart of the whole broker and, with ``brokers=3`` (the ``cluster``
preset: a local three-node cluster, the fleet's topics at replication factor 3 and
min.insync.replicas 2), ``kill -9`` of one node, started again a few seconds later.

Everything is bounded by deadlines and every process and broker it started is stopped in
``finally``. Library: :func:`run_faults` returns a :class:`FaultSummary`. CLI::

    python -m tests.fault.driver [--preset soak|short|cluster|market|market-short]
                                 [--workflows N] [--seed S] [--runs K] [--brokers B]
                                 [--broker-kills N] ...

The ``market`` presets are issue 4's contention run (``tests.fault.market``): contended
``hold`` tasks on pools of 1 to 4 units while orchestrators are killed; :func:`run_market`
returns a :class:`~tests.fault.market.MarketSummary`.

The modules of ``tests/fault``, one concept each:

* ``config``: :class:`FaultConfig` and its presets;
* ``workload``: workflow shapes, each with its expected outcome;
* ``garbage``: undecodable records, and their injection;
* ``plan``: the seeded fault schedule;
* ``checker``: the invariants, pure, over what was read back;
* ``recovery``: recovery times after each fault, pure;
* ``log``, ``processes``: the driver's log; the fleet's processes;
* ``broker``: the broker or cluster, its restart and node kills, replicated topics;
* ``threads``: the watcher, the submitter and the fault thread;
* ``readback``: reading a topic to its end;
* ``live``: one run, from the broker's start to the verdict, and its clean-up;
* ``summary``: :class:`FaultSummary` and its table;
* ``watchdog``: stops what a dying driver leaves behind;
* ``market``, ``market_workload``, ``market_checker``: issue 4's contention run;
* ``driver`` (this module): :func:`run_faults` and the CLI.
"""

from __future__ import annotations

import argparse
import random
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fleet.errors import FleetError
from fleet.settings import Settings
from tests.fault.config import FaultConfig
from tests.fault.live import LiveRun
from tests.fault.market import MarketSummary, format_market_summary
from tests.fault.summary import FaultSummary, format_summary


class _Verdict(Protocol):
    @property
    def ok(self) -> bool: ...


S = TypeVar("S", bound=_Verdict)


def run_faults(config: FaultConfig) -> FaultSummary:
    """Run the fleet under faults and check it; every process is stopped on return."""
    return _run(config, lambda _run, summary: summary)


def run_market(config: FaultConfig) -> MarketSummary:
    """:func:`run_faults` for a ``market`` config, with the market's figures."""
    if not config.market:
        raise ValueError("run_market needs a market config (FaultConfig.market_full/short)")

    def finish(run: LiveRun, summary: FaultSummary) -> MarketSummary:
        assert run.market is not None
        return run.market.summary(summary)

    return _run(config, finish)


def _run(config: FaultConfig, finish: Callable[[LiveRun, FaultSummary], S]) -> S:
    run = LiveRun(config)
    passed = False
    try:
        summary = finish(run, run.execute())
        passed = summary.ok
        return summary
    except BaseException as exc:
        # The traceback's frames hold Kafka clients; release them before the broker stops.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        run.close(passed=passed)


PRESETS: dict[str, Callable[..., FaultConfig]] = {
    "soak": FaultConfig.soak,
    "short": FaultConfig.short,
    "cluster": FaultConfig.cluster,
    "market": FaultConfig.market_full,
    "market-short": FaultConfig.market_short,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fault.driver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="soak")
    parser.add_argument(
        "--workflows",
        type=int,
        help="default: 1000 (soak), 200 (short), 300 (cluster), 540 (market), 150 (market-short)",
    )
    parser.add_argument("--seed", type=int, help="default: random; run k uses seed + k")
    parser.add_argument(
        "--runs", type=int, default=1, help="consecutive runs; stops at the first failure"
    )
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a failing run")
    parser.add_argument("--rate", type=float, help="workflows submitted per second")
    parser.add_argument("--orchestrators", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--orchestrator-kills", type=int, help="kill -9 of an orchestrator, each")
    parser.add_argument("--worker-kills", type=int, help="kill -9 of a worker, each")
    parser.add_argument("--brokers", type=int, help="local broker nodes (default: 1; cluster: 3)")
    parser.add_argument("--broker-kills", type=int, help="kill -9 of one broker node, each")
    parser.add_argument("--broker-restarts", type=int, help="stops and starts of the whole broker")
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        help="consumer session timeout of the fleet; 0 = product default (45 s)",
    )
    parser.add_argument("--run-dir", type=Path, help="base dir for the runs (default: a temp dir)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="more env for fleet processes"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fleet.logs import configure_logging  # noqa: PLC0415

    # The driver's own Kafka clients complain loudly while the broker restarts; only errors.
    configure_logging(Settings(log_level="error", log_format="console"))
    overrides: dict[str, Any] = {}
    for name, key in (
        ("workflows", "workflows"),
        ("rate", "submit_rate"),
        ("orchestrators", "orchestrators"),
        ("workers", "workers"),
        ("orchestrator_kills", "orchestrator_kills"),
        ("worker_kills", "worker_kills"),
        ("brokers", "brokers"),
        ("broker_kills", "broker_kills"),
        ("broker_restarts", "broker_restarts"),
    ):
        if getattr(args, name) is not None:
            overrides[key] = getattr(args, name)
    if args.session_timeout_ms is not None:
        overrides["session_timeout_ms"] = args.session_timeout_ms or None
    if bad := [e for e in args.env if "=" not in e]:
        _parser().error(f"--env takes K=V, got {bad}")
    if args.env:
        overrides["extra_env"] = tuple((k, v) for k, _, v in (e.partition("=") for e in args.env))
    base_seed = (
        args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    )
    passed = 0
    for k in range(args.runs):
        run_dir = args.run_dir / f"run-{k + 1}" if args.run_dir else None
        config = PRESETS[args.preset](**overrides, seed=base_seed + k, run_dir=run_dir)
        print(f"\n=== run {k + 1}/{args.runs} (seed {config.seed}) ===", flush=True)
        try:
            if config.market:
                market = run_market(config)
                ok, text = market.ok, format_market_summary(market)
            else:
                summary = run_faults(config)
                ok, text = summary.ok, format_summary(summary)
        except FleetError as exc:
            print(f"run {k + 1} could not complete: {exc}", flush=True)
            if not args.keep_going:
                break
            continue
        print(text, flush=True)
        passed += ok
        if not ok and not args.keep_going:
            break
    print(f"\n{passed}/{args.runs} runs passed", flush=True)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
