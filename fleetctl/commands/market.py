"""``fleet budget top-up`` and ``fleet market`` (show the pools, set a capacity, revoke)."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleetctl.commands import EXIT_ERROR, EXIT_OK
from fleetctl.market_view import read_market, render
from orchestrator.market.policy import MarketPolicy


def top_up(args: argparse.Namespace, settings: Settings) -> int:
    with closing(FleetClient(settings, role="budget")) as client:
        top_up_id = client.top_up(args.workflow_id, args.amount, args.top_up_id)
    # Nothing answers a top-up: its owner applies it once, or drops it if the workflow
    # has ended or bids for nothing. The id lets a retry say "this same top-up".
    print(top_up_id)
    return EXIT_OK


def market(args: argparse.Namespace, settings: Settings) -> int:
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
    with closing(FleetClient(settings, role="market")) as client:
        if command == "capacity":
            client.set_capacity(args.pool, args.units)
            print(f"capacity of {args.pool}: {args.units} units from its auctioneer's next round")
        else:
            client.revoke(args.pool, args.lease_id)
            what = f"lease {args.lease_id}" if args.lease_id else "every lease"
            print(f"revoke of {what} on {args.pool} sent to its auctioneer")
    return EXIT_OK
