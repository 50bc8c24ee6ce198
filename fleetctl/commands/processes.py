"""``fleet orchestrator``, ``fleet worker`` and ``fleet demo``: the commands that run processes."""

from __future__ import annotations

import argparse

from fleet.settings import Settings
from fleetctl.demo import run_demo
from orchestrator.shell.runtime import run as run_orchestrator
from workers.app import load_app
from workers.shell.runtime import run as run_worker


def orchestrator(args: argparse.Namespace, settings: Settings) -> int:
    return run_orchestrator(
        settings.with_orchestrator(args.guarantee, args.commit_interval_ms),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def worker(args: argparse.Namespace, settings: Settings) -> int:
    return run_worker(
        settings,
        load_app(args.app),
        concurrency=args.concurrency,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        grace_s=args.grace,
    )


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """The demo resolves its own broker: it starts the local one if none is named."""
    return run_demo(settings, workflows=args.workflows, keep_broker=args.keep_broker)
