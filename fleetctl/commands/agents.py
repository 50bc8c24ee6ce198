"""``fleet agents`` (one row per agent: liveness, load, errors, latency) and ``fleet agents
card`` (a capability's A2A card), read from the agents' topics (:mod:`fleet.kafka.registry`)."""

from __future__ import annotations

import json
import re
import sys
import time
from contextlib import closing

import click
from rich.text import Text

from fleet.agent_messages import AgentCard
from fleet.kafka import KafkaClients
from fleet.kafka.registry import AgentRegistry
from fleet.liveness import AgentRow, AgentView, Liveness
from fleet.settings import Settings
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.commands.params import InOrder, connected, with_broker, with_settings
from fleetctl.console import Column, Table

TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=15,
    metavar="SECONDS",
    help="how long to read the agents' topics",
)
STYLE = {Liveness.LIVE: "green", Liveness.STALE: "yellow", Liveness.DEAD: "red"}


def _now_ms() -> int:
    return int(time.time() * 1000)


@click.group(
    "agents",
    cls=InOrder,
    short_help="Show the agents: alive, load, errors, latency.",
    invoke_without_command=True,
    help="The agents (worker processes) and how they are doing: without a subcommand, one "
    "row per agent from its last heartbeat: status (serving, draining or paused while it "
    "heartbeats; stale past 3 missed heartbeats, dead past 10), its capabilities and "
    "versions, tasks in flight of its capacity, the heartbeat's age, the error rate and p95 "
    "handler latency over its window. A cleanly stopped agent is not listed.",
)
@click.option("--capability", metavar="CAPABILITY", help="only agents serving this capability")
@click.option("--json", "as_json", is_flag=True, help="a JSON array of rows instead of the table")
@TIMEOUT
@click.pass_context
def agents(ctx: click.Context, capability: str | None, as_json: bool, timeout: float) -> int | None:
    if ctx.invoked_subcommand is not None:
        return None
    return with_settings(_show)(capability=capability, as_json=as_json, timeout=timeout)


def _show(settings: Settings, capability: str | None, as_json: bool, timeout: float) -> int:
    settings = connected(settings)
    clients = KafkaClients(settings, settings.require_bootstrap(), role="agents")
    with closing(AgentRegistry(clients)) as registry:
        rows = registry.view(timeout).rows(_now_ms(), capability)
    if as_json:
        print(json.dumps([row.as_json() for row in rows]))
        return EXIT_OK
    if not rows:
        print("no agents" + (f" serving {capability}" if capability else ""), file=sys.stderr)
        return EXIT_OK
    agents_table(rows).print()
    return EXIT_OK


def agents_table(rows: list[AgentRow]) -> Table:
    table = Table(
        [
            Column("AGENT"),
            Column("STATUS"),
            Column("CAPABILITIES"),
            Column("IN FLIGHT", right=True),
            Column("HEARTBEAT", right=True),
            Column("ERRORS", right=True),
            Column("P95", right=True),
        ]
    )
    for row in rows:
        table.add(
            row.agent_id,
            Text(row.status, style=STYLE[row.liveness]),
            " ".join(f"{c.capability}@{c.version}" for c in row.capabilities),
            f"{row.in_flight}/{row.capacity}",
            f"{row.heartbeat_age_s:.1f} s ago",
            "-" if row.error_rate is None else f"{row.error_rate:.1%}",
            "-" if row.p95_ms is None else f"{row.p95_ms:.0f} ms",
        )
    return table


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders versions as people expect (2.10.0 after 2.9.1): numbers as numbers."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+-]", version)
    )


def pick_card(cards: list[AgentCard], view: AgentView, now_ms: int) -> AgentCard | None:
    """The card to show of several agents' cards of one capability: a live agent's first,
    then the highest version, then the latest published."""
    rows = {row.agent_id: row for row in view.rows(now_ms)}

    def rank(card: AgentCard) -> tuple[bool, tuple[tuple[int, int | str], ...], int]:
        row = rows.get(card.agent_id)
        live = row is not None and row.liveness is Liveness.LIVE
        return (live, version_key(card.version), card.published_at_ms)

    return max(cards, key=rank, default=None)


@agents.command(
    "card",
    help="Print the A2A agent card (JSON) of CAPABILITY, as its agents published it to the "
    "registry: a live agent's card first, of the highest version unless --version says "
    "which. Exit 1 if no agent published one.",
)
@click.argument("capability", metavar="CAPABILITY", help="the capability whose card to print")
@click.option("--version", metavar="VERSION", help="the capability's version (default: highest)")
@TIMEOUT
@with_broker
def card(settings: Settings, capability: str, version: str | None, timeout: float) -> int:
    clients = KafkaClients(settings, settings.require_bootstrap(), role="agents")
    with closing(AgentRegistry(clients)) as registry:
        cards = registry.cards(
            timeout,
            keep=lambda c: c.capability == capability and version in (None, c.version),
        )
        chosen = pick_card(cards, registry.view(timeout), _now_ms()) if cards else None
    if chosen is None:
        which = capability + (f" version {version}" if version else "")
        print(f"fleet: no agent has published a card for {which}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(chosen.card, indent=2))
    return EXIT_OK
