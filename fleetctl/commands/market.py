"""``fleet budget top-up`` and ``fleet market`` (show the pools, set a capacity, revoke)."""

from __future__ import annotations

import json
import sys
from contextlib import closing

import click

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleetctl.commands import EXIT_ERROR, EXIT_FAILED, EXIT_OK
from fleetctl.commands.params import AMOUNT, UNITS, InOrder, connected, with_broker, with_settings
from fleetctl.dlq import iso_ms
from fleetctl.market_view import market_table, read_market
from orchestrator.market.policy import MarketPolicy, micro_to_credits


@click.group(
    "budget",
    cls=InOrder,
    short_help="Top up a running workflow's budget.",
    help="Workflow budgets on the market, in credits.",
)
def budget() -> None:
    pass


@budget.command(
    "top-up",
    help="Raise a running workflow's budget by AMOUNT credits; print the top-up's id. "
    "First looks the workflow up on its partition of the events topic: one that has ended "
    "or is unknown gets nothing (exit 1).",
)
@click.argument("workflow_id", metavar="WORKFLOW_ID", help="the workflow whose budget to raise")
@click.argument(
    "amount",
    metavar="AMOUNT",
    type=AMOUNT,
    help="credits to add, e.g. 5 or 0.25 (at most 6 decimals)",
)
@click.option(
    "--id",
    "top_up_id",
    metavar="ID",
    help="the top-up's id (default: generated); a top-up is applied once per id, so a "
    "retry with the same id is safe",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=15,
    metavar="SECONDS",
    help="how long to look for the workflow before sending (past it, the top-up is sent "
    "anyway, with a warning)",
)
@with_broker
def top_up(
    settings: Settings, workflow_id: str, amount: int, top_up_id: str | None, timeout: float
) -> int:
    with closing(FleetClient(settings, role="budget")) as client:
        # Nothing answers a top-up: its owner applies it once, or drops it if the workflow
        # has ended or is unknown. So look first, and say so instead of sending into the void.
        # The workflow's partition of the events topic tells (read to its end, bounded);
        # without an event yet, its partition of the requests topic may hold a submission
        # not yet accepted, which the top-up follows on the same partition.
        seen = client.workflow_log().look_up(workflow_id, timeout)
        if seen.ended and seen.last_event is not None:
            end = seen.last_event
            print(
                f"fleet: {workflow_id} has ended ({end.kind.value} at {iso_ms(end.at_ms)}): "
                "a top-up would change nothing; nothing sent",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if seen.complete and not seen.known:
            print(
                f"fleet: unknown workflow {workflow_id}: no event or submission of it on "
                f"{client.topics.events} or {client.topics.requests}; nothing sent",
                file=sys.stderr,
            )
            return EXIT_FAILED
        top_up_id = client.top_up(workflow_id, amount, top_up_id)
    credits = micro_to_credits(amount)
    if not seen.complete:
        print(
            f"fleet: warning: could not read {workflow_id}'s partitions within {timeout:g} s; "
            f"the top-up of {credits} credits was sent and applies if the workflow runs",
            file=sys.stderr,
        )
    elif seen.last_event is None:
        print(
            f"fleet: {workflow_id} is submitted but not accepted yet; the top-up of {credits} "
            "credits applies once it is",
            file=sys.stderr,
        )
    print(top_up_id)
    return EXIT_OK


@click.group(
    "market",
    cls=InOrder,
    short_help="Show the market's pools; set a capacity; revoke.",
    invoke_without_command=True,
    help="The market for pooled resources (GPUs, licences, rate limits): without a "
    "subcommand, one line per pool (capacity, leased units, waiting bids by band, the last "
    "clearing price, the oldest waiting bid, the auctioneer's epoch and round), read from "
    "the market's topics.",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of the table")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=15,
    metavar="SECONDS",
    help="how long to read the market topics",
)
@click.pass_context
def market(ctx: click.Context, as_json: bool, timeout: float) -> int | None:
    if ctx.invoked_subcommand is not None:
        return None
    return with_settings(_show)(as_json=as_json, timeout=timeout)


def _show(settings: Settings, as_json: bool, timeout: float) -> int:
    policy = MarketPolicy.load(settings.market_file)
    report = read_market(connected(settings), policy, timeout_s=timeout)
    if as_json:
        print(json.dumps(report.to_json()))
        return EXIT_OK
    market_table(report.views, policy.bands).print()
    for warning in report.warnings:
        print(f"fleet: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _known_pool(settings: Settings, pool: str) -> bool:
    """Whether the market file has ``pool``; if not, say so (the auctioneer would drop
    what is sent) before anything is."""
    policy = MarketPolicy.load(settings.market_file)
    if pool in policy.pools:
        return True
    known = ", ".join(policy.pools) or "none"
    print(
        f"fleet: error: unknown pool {pool!r} in {settings.market_file} (pools: {known})",
        file=sys.stderr,
    )
    return False


@market.command(
    "capacity", help="Set a pool's capacity from its next round on (live leases keep their units)."
)
@click.argument("pool", metavar="POOL", help="a pool of the market file")
@click.argument("units", metavar="UNITS", type=UNITS, help="the new capacity, 0 or more")
@with_settings
def capacity(settings: Settings, pool: str, units: int) -> int:
    if not _known_pool(settings, pool):
        return EXIT_ERROR
    with closing(FleetClient(connected(settings), role="market")) as client:
        client.set_capacity(pool, units)
    print(f"capacity of {pool}: {units} units from its auctioneer's next round")
    return EXIT_OK


@market.command(
    "revoke",
    help="The kill switch: end every lease of POOL now, or only LEASE_ID; the holders' "
    "attempts fail with LeaseEnded and retry as their steps allow.",
)
@click.argument("pool", metavar="POOL", help="a pool of the market file")
@click.argument(
    "lease_id",
    metavar="[LEASE_ID]",
    required=False,
    help="only this lease (none: every lease of POOL)",
)
@with_settings
def revoke(settings: Settings, pool: str, lease_id: str | None) -> int:
    if not _known_pool(settings, pool):
        return EXIT_ERROR
    with closing(FleetClient(connected(settings), role="market")) as client:
        client.revoke(pool, lease_id)
    what = f"lease {lease_id}" if lease_id else "every lease"
    print(f"revoke of {what} on {pool} sent to its auctioneer")
    return EXIT_OK
