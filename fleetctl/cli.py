"""The ``fleet`` command: one entry point, settings built here from the environment."""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

from fleet.errors import FleetError, SpecError
from fleet.kafka import KafkaClients
from fleet.kafka.client import FleetClient
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.logs import configure_logging
from fleet.settings import Guarantee, Settings
from fleet.topology import Topics, Topology
from fleetctl.demo import run_demo
from fleetctl.dlq import (
    DeadLetterOffice,
    Entry,
    LetterFilter,
    LetterId,
    Marker,
    RedriveReport,
    decode_known,
    hexdump,
    iso_ms,
    parse_id,
    parse_since,
    printable,
)
from fleetctl.localkafka import LocalKafka, resolve_bootstrap
from fleetctl.market_view import read_market, render
from orchestrator.market.policy import UNITS_MAX, MarketPolicy, credits_to_micro
from orchestrator.shell.runtime import run as run_orchestrator
from orchestrator.spec import parse_spec
from orchestrator.specfile import load_spec_file
from workers.app import load_app
from workers.shell.runtime import run as run_worker

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: where a stuck process is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        settings = Settings.from_env(os.environ)
        configure_logging(settings)
        return _dispatch(args, settings)
    except SpecError as exc:
        print(f"fleet: invalid workflow: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:  # noqa: PLR0911
    command: str = args.command
    if command == "kafka":
        return _kafka(args.action, settings)
    if command == "demo":
        return run_demo(settings, workflows=args.workflows, keep_broker=args.keep_broker)
    if command == "submit":
        return _submit(args, settings)  # checks the spec before it looks for a broker
    # The one place a broker is looked for: every process below is handed its address.
    settings = _connected(settings)
    if command == "topics":
        return _topics_apply(settings, args.capability)
    if command == "tail":
        return _tail(args, settings)
    if command == "cancel":
        return _cancel(args, settings)
    if command == "dlq":
        return _dlq(args, settings)
    if command == "budget":
        return _top_up(args, settings)
    if command == "market":
        return _market(args, settings)
    if command == "orchestrator":
        return run_orchestrator(
            settings.with_orchestrator(args.guarantee, args.commit_interval_ms),
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
    if command == "worker":
        return run_worker(
            settings,
            load_app(args.app),
            concurrency=args.concurrency,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            grace_s=args.grace,
        )
    raise AssertionError(f"unhandled command {command}")


def _connected(settings: Settings) -> Settings:
    return settings.with_bootstrap(resolve_bootstrap(settings))


def _kafka(action: str, settings: Settings) -> int:
    local = LocalKafka(settings)
    if action == "start":
        print(local.start())
    elif action == "stop":
        print("stopped" if local.stop() else "not running")
    else:
        status = local.status()
        if status is None:
            print("not running")
            return EXIT_FAILED
        print(f"running pid={status.pid} version={status.version} run_dir={status.run_dir}")
        print(status.bootstrap)
    return EXIT_OK


def _topics_apply(settings: Settings, extra: list[str]) -> int:
    topology = Topology.load(settings.topology_file)
    admin = KafkaClients(settings, settings.require_bootstrap(), role="admin").ready_admin()
    wanted = desired_topics(topology, Topics(settings.topic_prefix), topology.capabilities + extra)
    reports = apply_topics(admin, topology, wanted)
    for report in reports:
        print(f"{report.status:8} {report.topic}" + (f"  {report.detail}" if report.detail else ""))
    drift = [r for r in reports if r.status == "drift"]
    if drift:
        print(
            f"fleet: {len(drift)} topic(s) differ from topics.yaml (not changed)", file=sys.stderr
        )
        return EXIT_FAILED
    return EXIT_OK


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    doc = load_spec_file(args.file)
    if args.input is not None:
        if not isinstance(doc, dict):
            raise SpecError([("(document)", "a workflow spec must be a mapping")])
        try:
            doc["input"] = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise SpecError([("--input", f"not valid JSON: {exc}")]) from exc
    parse_spec(doc)  # the document itself first: a bad file needs no broker to be refused
    client = FleetClient(_connected(settings), role="submit")
    parse_spec(doc, has_capability=client.has_capability)  # raises SpecError: nothing sent
    consumer = client.event_consumer(from_beginning=False) if args.wait else None
    workflow_id = client.submit(doc, args.workflow_id)  # type: ignore[arg-type]
    if consumer is None:
        print(workflow_id)
        return EXIT_OK
    print(workflow_id, file=sys.stderr)
    outcome = client.wait(consumer, [workflow_id], args.timeout).get(workflow_id)
    consumer.close()
    if outcome is None:
        print(f"fleet: no outcome for {workflow_id} within {args.timeout:.0f} s", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.model_dump_json())
    return EXIT_OK if outcome.kind.value == "COMPLETED" else EXIT_FAILED


def _tail(args: argparse.Namespace, settings: Settings) -> int:
    client = FleetClient(settings, role="tail")
    consumer = client.event_consumer(from_beginning=args.from_beginning)
    wanted: str | None = args.workflow
    try:
        for event in client.events(
            consumer,
            until=lambda e: wanted is not None and e.kind.terminal and e.workflow_id == wanted,
        ):
            if wanted is not None and event.workflow_id != wanted:
                continue
            if args.json:
                print(event.model_dump_json(), flush=True)
            else:
                detail = event.step_id or (event.error.message if event.error else "")
                print(
                    f"{event.at_ms} {event.workflow_id} {event.kind.value:14} {detail}", flush=True
                )
    finally:
        consumer.close()
    return EXIT_OK


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    client = FleetClient(settings, role="cancel")
    consumer = client.event_consumer(from_beginning=False) if args.wait else None
    client.cancel(args.workflow_id, args.reason)
    if consumer is None:
        print(args.workflow_id)
        return EXIT_OK
    print(args.workflow_id, file=sys.stderr)
    outcome = client.wait(consumer, [args.workflow_id], args.timeout).get(args.workflow_id)
    consumer.close()
    if outcome is None:
        print(
            f"fleet: no terminal event for {args.workflow_id} within {args.timeout:.0f} s "
            "(unknown, or it ended before the cancel)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(outcome.model_dump_json())
    return EXIT_OK if outcome.kind.value == "CANCELLED" else EXIT_FAILED


def _top_up(args: argparse.Namespace, settings: Settings) -> int:
    client = FleetClient(settings, role="budget")
    top_up_id = client.top_up(args.workflow_id, args.amount, args.top_up_id)
    client.close()
    # Nothing answers a top-up: its owner applies it once, or drops it if the workflow
    # has ended or bids for nothing. The id lets a retry say "this same top-up".
    print(top_up_id)
    return EXIT_OK


def _market(args: argparse.Namespace, settings: Settings) -> int:
    policy = MarketPolicy.load(settings.market_file)
    command: str | None = args.market_command
    if command is None:
        report = read_market(settings, policy, timeout_s=args.timeout)
        if args.json:
            print(json.dumps(report.to_json()))
            return EXIT_OK
        print(render(report.views, policy.bands))
        for warning in report.warnings:
            print(f"fleet: warning: {warning}", file=sys.stderr)
        return EXIT_OK
    if args.pool not in policy.pools:
        # The auctioneer would drop it as well; say so before sending anything.
        known = ", ".join(policy.pools) or "none"
        print(
            f"fleet: error: unknown pool {args.pool!r} in {settings.market_file} (pools: {known})",
            file=sys.stderr,
        )
        return EXIT_ERROR
    client = FleetClient(settings, role="market")
    if command == "capacity":
        client.set_capacity(args.pool, args.units)
        print(f"capacity of {args.pool}: {args.units} units from its auctioneer's next round")
    else:
        client.revoke(args.pool, args.lease_id)
        what = f"lease {args.lease_id}" if args.lease_id else "every lease"
        print(f"revoke of {what} on {args.pool} sent to its auctioneer")
    client.close()
    return EXIT_OK


def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    office = DeadLetterOffice(settings)
    if args.dlq_command == "show":
        return _dlq_show(office, args.id)
    flt = LetterFilter(
        topics=frozenset(args.topic),
        error_types=frozenset(args.error_type),
        since_ms=args.since,
        ids=frozenset(getattr(args, "ids", [])),
        prefix=settings.topic_prefix,
    )
    if args.dlq_command == "redrive":
        report = office.redrive(flt, dry_run=args.dry_run)
        _print_report(report)
        return EXIT_OK
    try:
        _dlq_list(office, flt, as_json=args.json)
    except BrokenPipeError:  # `fleet dlq list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return EXIT_OK


def _dlq_list(office: DeadLetterOffice, flt: LetterFilter, *, as_json: bool) -> None:
    done = office.markers()
    if not as_json:
        print(f"{'ID':10} {'TIME (UTC)':24} {'SOURCE':40} {'ERROR':16} REDRIVEN  MESSAGE")
    for entry in office.entries():
        if flt.matches(entry):
            marker = done.get(str(entry.id))
            _print_entry(entry, marker if marker and marker.covers(entry) else None, as_json)


def _print_entry(entry: Entry, marker: Marker | None, as_json: bool) -> None:
    letter = entry.letter
    if as_json:
        doc: dict[str, object] = {"id": str(entry.id), "redriven": marker is not None}
        if marker is not None:
            doc["redriven_at"] = iso_ms(marker.at_ms)
        if letter is None:
            doc["undecodable"] = entry.problem
        else:
            doc.update(
                letter.model_dump(mode="json", exclude={"key", "value", "headers"}),
                at=iso_ms(letter.at_ms),
                key=printable(letter.key),
            )
        print(json.dumps(doc), flush=True)
        return
    redriven = "yes" if marker is not None else "no"
    if letter is None:
        print(
            f"{entry.id!s:10} {'?':24} {'?':40} {'(undecodable)':16} {redriven:9} {entry.problem}"
        )
        return
    message = letter.error_message.replace("\n", " ")
    message = message if len(message) <= 80 else message[:79] + "…"
    print(
        f"{entry.id!s:10} {iso_ms(letter.at_ms):24} {entry.source:40} {letter.error_type:16} "
        f"{redriven:9} {message}",
        flush=True,
    )


def _dlq_show(office: DeadLetterOffice, letter_id: LetterId) -> int:
    found = office.get(letter_id)
    if found is None:
        print(f"fleet: no dead letter {letter_id} in {office.topics.dead_letters}", file=sys.stderr)
        return EXIT_FAILED
    entry, dlq_headers = found
    marker = office.markers().get(str(letter_id))
    marker = marker if marker is not None and marker.covers(entry) else None
    print(f"id:          {letter_id}")
    print(f"redriven:    {f'yes, at {iso_ms(marker.at_ms)} by {marker.by}' if marker else 'no'}")
    print("record headers:")
    for key, value in dlq_headers:
        print(f"  {key}: {printable(value)}")
    letter = entry.letter
    if letter is None:
        print(f"undecodable dead letter: {entry.problem}")
        return EXIT_OK
    print(f"source:      {entry.source}")
    print(f"time:        {iso_ms(letter.at_ms)}")
    print(f"consumer:    {letter.consumer}")
    print(f"error type:  {letter.error_type}")
    print(f"error:       {letter.error_message}")
    print(f"key:         {printable(letter.key)}")
    size = "null" if letter.value_size is None else f"{letter.value_size} bytes"
    print(
        f"value:       {size}"
        + (" (truncated in the dead letter)" if letter.value_truncated else "")
    )
    print("headers:")
    for header in letter.headers:
        print(f"  {header.key}: {printable(header.value)}")
    if letter.value is not None:
        print(hexdump(letter.value))
        decoded = decode_known(office.codec, letter.value)
        if isinstance(decoded, str):
            print(f"decoded:     none ({decoded})")
        else:
            print(f"decoded as {type(decoded).__name__}:")
            print(json.dumps(decoded.model_dump(), indent=2, default=_bytes_as_text))
    return EXIT_OK


def _bytes_as_text(value: object) -> object:
    return printable(value) if isinstance(value, bytes) else str(value)


def _print_report(report: RedriveReport) -> None:
    verb = "would redrive" if report.dry_run else "redriven"
    for entry in report.redriven:
        print(f"{verb} {entry.id} -> {entry.letter.source_topic if entry.letter else '?'}")
    for entry, reason in report.refused:
        print(f"fleet: cannot redrive {entry.id}: {reason}", file=sys.stderr)
    print(
        f"{verb} {len(report.redriven)}, skipped {len(report.already)} already redriven"
        + (f", refused {len(report.refused)}" if report.refused else "")
    )


if __name__ == "__main__":
    sys.exit(main())
