"""``fleet status ID``: where one workflow stands, for a person or as JSON.

The summary itself is pure (:mod:`fleetctl.workflow_status`); this is the command and
its lines, which describe the last event as ``fleet tail`` does.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing

import click

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.commands.params import with_broker
from fleetctl.commands.workflows import describe
from fleetctl.console import echo, format_duration
from fleetctl.dlq import iso_ms
from fleetctl.workflow_status import Status, status_of


@click.command(
    "status",
    short_help="Where one workflow stands.",
    help="Where one workflow stands, from its events: RUNNING (with the steps done and the "
    "steps running), how it ended (with its output or cause), SUBMITTED (no orchestrator "
    "has accepted it yet) or unknown (exit 1).",
)
@click.argument("workflow_id", metavar="WORKFLOW_ID", help="the workflow, as submit printed it")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30,
    metavar="SECONDS",
    help="how long reading its partition may take",
)
@with_broker
def status(settings: Settings, workflow_id: str, as_json: bool, timeout: float) -> int:
    with closing(FleetClient(settings, role="status")) as client:
        history = client.workflow_log().history(workflow_id, timeout)
    found = status_of(workflow_id, history)
    if as_json:
        print(json.dumps(found.as_json()))
    else:
        for line in status_lines(found):
            echo(line)
    if not found.complete:
        print(f"fleet: its partition was not read to the end in {timeout:.0f} s", file=sys.stderr)
    return EXIT_OK if found.known else EXIT_FAILED


def status_lines(found: Status) -> list[str]:
    """``fleet status`` for a person: the state, then steps, then the last event."""
    if not found.known:
        return [f"{found.workflow_id}  unknown: no event or submission of it on the topics"]
    head = f"{found.workflow_id}  {found.state}"
    if found.name:
        head += f"  {found.name}"
    if found.submitted_at_ms is not None:
        end = found.last.at_ms if found.last is not None and found.last.kind.terminal else None
        took = (end if end is not None else int(time.time() * 1000)) - found.submitted_at_ms
        what = "took" if end is not None else "running for"
        head += f"  submitted {iso_ms(found.submitted_at_ms).replace('T', ' ')}, {what} "
        head += format_duration(took)
    lines = [head]
    if found.state == "SUBMITTED":
        lines.append("waiting for an orchestrator to accept it (is `fleet orchestrator` running?)")
    if found.completed:
        lines.append(f"steps completed ({len(found.completed)}): {', '.join(found.completed)}")
    if found.running:
        running = ", ".join(
            r.step + (f" (attempt {r.attempt})" if r.attempt else "") for r in found.running
        )
        lines.append(f"steps running ({len(found.running)}): {running}")
    if found.last is not None:
        lines.append(f"last event: {found.last.kind.value} {describe(found.last)}".rstrip())
    return lines
