"""The ``fleet`` command: one entry point, settings built here from the environment."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.client import FleetClient
from fleet.demo import run_demo
from fleet.errors import FleetError, SpecError
from fleet.kafka import KafkaClients, resolve_bootstrap
from fleet.localkafka import LocalKafka
from fleet.logs import configure_logging
from fleet.settings import Settings
from fleet.topology import Topics, Topology, apply_topics, desired_topics
from orchestrator.service import run as run_orchestrator
from orchestrator.spec import load_spec_file, parse_spec
from workers.app import load_app
from workers.runtime import run as run_worker

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

    orch = sub.add_parser("orchestrator", help="run an orchestrator instance")
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


def _metrics_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--metrics-host", default="127.0.0.1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    if command == "topics":
        return _topics_apply(settings, args.capability)
    if command == "submit":
        return _submit(args, settings)
    if command == "tail":
        return _tail(args, settings)
    if command == "orchestrator":
        return run_orchestrator(
            settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host
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
    if command == "demo":
        return run_demo(settings, workflows=args.workflows, keep_broker=args.keep_broker)
    raise AssertionError(f"unhandled command {command}")


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
    admin = KafkaClients(settings, resolve_bootstrap(settings), role="admin").ready_admin()
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
    client = FleetClient(settings, role="submit")
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


if __name__ == "__main__":
    sys.exit(main())
