"""Every argument of the ``fleet`` command, with its help text, and the argument types."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from fleet.settings import Guarantee
from fleetctl.dlq import parse_id, parse_since
from orchestrator.market.policy import UNITS_MAX, credits_to_micro

DESCRIPTION = "The ``fleet`` command: one entry point, settings built here from the environment."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="the embedded local Apache Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status"])

    topics = sub.add_parser("topics", help="create and check the topics in topics.yaml")
    topics.add_argument("action", choices=["apply"])
    topics.add_argument(
        "--capability", action="append", default=[], help="also a task topic for this capability"
    )

    submit = sub.add_parser("submit", help="submit a workflow spec (YAML or JSON)")
    submit.add_argument("file", type=Path)
    submit.add_argument("--input", help="JSON object replacing the spec's input")
    submit.add_argument("--id", dest="workflow_id", help="workflow id (default: generated)")
    submit.add_argument("--wait", action="store_true", help="wait for the terminal event")
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")

    tail = sub.add_parser("tail", help="follow workflow events")
    tail.add_argument("--workflow", help="only this workflow; exits after its terminal event")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")

    cancel = sub.add_parser("cancel", help="cancel a running workflow")
    cancel.add_argument("workflow_id")
    cancel.add_argument("--reason", default="", help="recorded with the cancellation")
    cancel.add_argument("--wait", action="store_true", help="wait for the terminal event")
    cancel.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")

    dlq = sub.add_parser("dlq", help="list, show and redrive dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="one line per dead letter (bounded read)")
    _filter_args(dlq_list)
    dlq_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dlq_show = dlq_sub.add_parser("show", help="everything in one dead letter")
    dlq_show.add_argument("id", type=_arg(parse_id), help="PARTITION:OFFSET, as listed")
    redrive = dlq_sub.add_parser(
        "redrive", help="re-inject dead letters onto their source topic, once each"
    )
    _filter_args(redrive)
    redrive.add_argument(
        "--id", dest="ids", action="append", type=_arg(parse_id), default=[], help="repeatable"
    )
    redrive.add_argument("--dry-run", action="store_true", help="list, inject nothing")

    _budget_args(sub.add_parser("budget", help="workflow budgets on the market"))
    _market_args(
        sub.add_parser("market", help="show each pool of the market; change a capacity; revoke")
    )

    orch = sub.add_parser("orchestrator", help="run an orchestrator instance")
    orch.add_argument(
        "--guarantee",
        choices=get_args(Guarantee),
        help="processing guarantee (default: FLEET_ORCHESTRATOR_GUARANTEE or exactly_once)",
    )
    orch.add_argument(
        "--commit-interval-ms",
        type=int,
        help="keep a transaction open across batches this long (default: "
        "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS or 0, a commit per batch)",
    )
    _metrics_args(orch)

    worker = sub.add_parser("worker", help="run a worker pool process for an app")
    worker.add_argument("--app", required=True, help="module:attribute of a workers.App")
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--grace", type=float, default=30.0, help="drain seconds on SIGTERM")
    _metrics_args(worker)

    demo = sub.add_parser("demo", help="run the sample workload end to end")
    demo.add_argument("--workflows", type=int, default=240)
    demo.add_argument("--keep-broker", action="store_true", help="leave the local broker up")
    return parser


def _arg(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` whose ValueError message reaches the user as it is."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def _budget_args(budget: argparse.ArgumentParser) -> None:
    budget_sub = budget.add_subparsers(dest="budget_command", required=True)
    top_up = budget_sub.add_parser("top-up", help="raise a running workflow's budget")
    top_up.add_argument("workflow_id", metavar="WORKFLOW_ID")
    top_up.add_argument(
        "amount",
        metavar="AMOUNT",
        type=_arg(parse_top_up),
        help="credits to add, e.g. 5 or 0.25 (at most 6 decimals)",
    )
    top_up.add_argument(
        "--id",
        dest="top_up_id",
        help="top-up id (default: generated); the same id is applied once, so a retry is safe",
    )


def _market_args(market: argparse.ArgumentParser) -> None:
    market.description = (
        "Without a subcommand: one line per pool (capacity, leased units, waiting bids by "
        "band, the last clearing price, the oldest waiting bid, the auctioneer's epoch and "
        "round), read from the market's topics."
    )
    market.add_argument("--json", action="store_true", help="one JSON document")
    market.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to read the market topics"
    )
    market_sub = market.add_subparsers(dest="market_command")  # none: show the pools
    capacity = market_sub.add_parser(
        "capacity", help="set a pool's capacity from its next round (live leases stay)"
    )
    capacity.add_argument("pool", metavar="POOL")
    capacity.add_argument("units", metavar="UNITS", type=_arg(parse_units))
    revoke = market_sub.add_parser(
        "revoke", help="kill switch: end every lease of a pool now, or just LEASE_ID"
    )
    revoke.add_argument("pool", metavar="POOL")
    revoke.add_argument("lease_id", metavar="LEASE_ID", nargs="?")


def parse_top_up(text: str) -> int:
    """AMOUNT of ``fleet budget top-up``: credits as exact micro-credits, above 0."""
    micro = credits_to_micro(text)  # text, not float(text): "0.1" stays exactly 100000
    if micro == 0:
        raise ValueError("a top-up must be above 0 credits")
    return micro


def parse_units(text: str) -> int:
    """UNITS of ``fleet market capacity``: a whole number of units, 0 or more."""
    # Not int(text), which also takes " 3", "+3" and "3_0".
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"expected a whole number of units (0 or more), got {text!r}")
    units = int(text)
    if units > UNITS_MAX:
        raise ValueError(f"at most {UNITS_MAX} units, got {text}")
    return units


def _filter_args(parser: argparse.ArgumentParser) -> None:
    now_ms = int(time.time() * 1000)
    parser.add_argument(
        "--since", type=_arg(lambda t: parse_since(t, now_ms)), help="10m, 2h, 1d or an ISO time"
    )
    parser.add_argument(
        "--topic", action="append", default=[], help="source topic (repeatable; prefix optional)"
    )
    parser.add_argument("--error-type", action="append", default=[], help="e.g. DecodeError")


def _metrics_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--metrics-host", default="127.0.0.1")
