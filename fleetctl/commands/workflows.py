"""``fleet submit``, ``fleet tail`` and ``fleet cancel``: the user's side of workflows.

Each closes its reader and its client (``contextlib.closing``) before it returns, on
errors too.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing

from fleet.errors import SpecError
from fleet.kafka.client import FleetClient
from fleet.messages import WorkflowEvent
from fleet.settings import Settings
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.commands.kafka import connected
from orchestrator.spec import parse_spec
from orchestrator.specfile import load_spec_file


def submit(args: argparse.Namespace, settings: Settings) -> int:
    doc = load_spec_file(args.file)
    if args.input is not None:
        if not isinstance(doc, dict):
            raise SpecError([("(document)", "a workflow spec must be a mapping")])
        try:
            doc["input"] = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise SpecError([("--input", f"not valid JSON: {exc}")]) from exc
    parse_spec(doc)  # the document itself first: a bad file needs no broker to be refused
    with closing(FleetClient(connected(settings), role="submit")) as client:
        parse_spec(doc, has_capability=client.has_capability)  # raises SpecError: nothing sent
        if not args.wait:
            print(client.submit(doc, args.workflow_id))  # type: ignore[arg-type]
            return EXIT_OK
        # The reader starts at the events' current end, before the submission is sent.
        with closing(client.event_consumer(from_beginning=False)) as consumer:
            workflow_id = client.submit(doc, args.workflow_id)  # type: ignore[arg-type]
            print(workflow_id, file=sys.stderr)
            outcome = client.wait(consumer, [workflow_id], args.timeout).get(workflow_id)
    if outcome is None:
        print(f"fleet: no outcome for {workflow_id} within {args.timeout:.0f} s", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.model_dump_json())
    return EXIT_OK if outcome.kind.value == "COMPLETED" else EXIT_FAILED


def tail(args: argparse.Namespace, settings: Settings) -> int:
    wanted: str | None = args.workflow

    def last(event: WorkflowEvent) -> bool:
        return wanted is not None and event.kind.terminal and event.workflow_id == wanted

    with (
        closing(FleetClient(settings, role="tail")) as client,
        closing(client.event_consumer(from_beginning=args.from_beginning)) as consumer,
    ):
        for event in client.events(consumer, until=last):
            if wanted is not None and event.workflow_id != wanted:
                continue
            if args.json:
                print(event.model_dump_json(), flush=True)
            else:
                detail = event.step_id or (event.error.message if event.error else "")
                print(
                    f"{event.at_ms} {event.workflow_id} {event.kind.value:14} {detail}", flush=True
                )
    return EXIT_OK


def cancel(args: argparse.Namespace, settings: Settings) -> int:
    with closing(FleetClient(settings, role="cancel")) as client:
        if not args.wait:
            client.cancel(args.workflow_id, args.reason)
            print(args.workflow_id)
            return EXIT_OK
        with closing(client.event_consumer(from_beginning=False)) as consumer:
            client.cancel(args.workflow_id, args.reason)
            print(args.workflow_id, file=sys.stderr)
            outcome = client.wait(consumer, [args.workflow_id], args.timeout).get(args.workflow_id)
    if outcome is None:
        print(
            f"fleet: no terminal event for {args.workflow_id} within {args.timeout:.0f} s "
            "(unknown, or it ended before the cancel)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(outcome.model_dump_json())
    return EXIT_OK if outcome.kind.value == "CANCELLED" else EXIT_FAILED
