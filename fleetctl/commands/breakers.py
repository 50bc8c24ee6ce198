"""``fleet breakers``: each capability's circuit breaker, as every orchestrator sees it.

Computed from the observations topic with the orchestrators' own code
(:func:`orchestrator.shell.breakers.read_board`) and the same breaker settings, so it
shows what they decide (their half-open trial counts aside, which are per instance)."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.text import Text

from fleet.kafka import KafkaClients
from fleet.settings import Settings
from fleetctl.commands import EXIT_OK
from fleetctl.commands.params import connected, with_settings
from fleetctl.console import Column, Table
from fleetctl.dlq import iso_ms
from orchestrator.breaker import BreakerRow, BreakerState
from orchestrator.shell.breakers import policy_of, read_board

STYLE = {BreakerState.CLOSED: "green", BreakerState.HALF_OPEN: "yellow", BreakerState.OPEN: "red"}


@click.command(
    "breakers",
    short_help="Show the circuit breakers: state, failure rate, calls.",
    help="Each capability's circuit breaker (the row with version *, which gates dispatch) "
    "and the same figures per version: state (closed, open, half-open), the failure rate "
    "and calls in the window, and when it opened. Breakers act only on orchestrators "
    "started with FLEET_BREAKERS=true; their thresholds come from the FLEET_BREAKER_* "
    "settings, which this command reads too.",
)
@click.option("--json", "as_json", is_flag=True, help="a JSON array of rows instead of the table")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=15,
    metavar="SECONDS",
    help="how long to read the observations topic",
)
def breakers(as_json: bool, timeout: float) -> int:
    return with_settings(_show)(as_json=as_json, timeout=timeout)


def _show(settings: Settings, as_json: bool, timeout: float) -> int:
    settings = connected(settings)
    clients = KafkaClients(settings, settings.require_bootstrap(), role="breakers")
    board = read_board(clients, policy_of(settings), timeout)
    rows = board.rows(int(time.time() * 1000))
    if as_json:
        print(json.dumps([row_json(row) for row in rows]))
        return EXIT_OK
    if not rows:
        print("no task outcomes observed in the window", file=sys.stderr)
        return EXIT_OK
    table = Table(
        [
            Column("CAPABILITY"),
            Column("VERSION"),
            Column("STATE"),
            Column("FAILURE RATE", right=True),
            Column("CALLS", right=True),
            Column("OPENED AT"),
        ]
    )
    for row in rows:
        view = row.view
        table.add(
            row.capability,
            row.version or "(timeouts)",
            Text(view.state.value, style=STYLE[view.state]),
            f"{view.failure_rate:.1%}",
            str(view.calls),
            _time(view.opened_at_ms),
        )
    table.print()
    return EXIT_OK


def row_json(row: BreakerRow) -> dict[str, object]:
    view = row.view
    return {
        "capability": row.capability,
        "version": row.version,
        "state": view.state.value,
        "failure_rate": round(view.failure_rate, 4),
        "calls": view.calls,
        "failed": view.failed,
        "opened_at_ms": view.opened_at_ms,
    }


def _time(at_ms: int | None) -> str:
    return "-" if at_ms is None else iso_ms(at_ms).replace("T", " ")  # as fleet status
