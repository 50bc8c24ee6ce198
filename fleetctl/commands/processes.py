"""``fleet orchestrator``, ``fleet worker`` and ``fleet demo``: the commands that run processes."""

from __future__ import annotations

from typing import get_args

import click

from fleet.settings import Guarantee, Settings
from fleetctl.commands.params import metrics_options, with_broker, with_settings
from fleetctl.demo import run_demo
from orchestrator.shell.runtime import run as run_orchestrator
from workers.loading import load_app
from workers.shell.runtime import run as run_worker


@click.command(
    "orchestrator",
    short_help="Run an orchestrator (turns workflows into tasks).",
    help="Run an orchestrator instance: it turns submitted workflows into tasks, collects "
    "their results and writes every event to workflow.events. Runs until stopped "
    "(SIGTERM or Ctrl-C); several instances share the work.",
)
@click.option(
    "--guarantee",
    type=click.Choice(get_args(Guarantee)),
    help="processing guarantee (default: FLEET_ORCHESTRATOR_GUARANTEE, else exactly_once)",
)
@click.option(
    "--commit-interval-ms",
    type=click.IntRange(min=0),
    metavar="MS",
    help="keep a transaction open across batches this long, 0 for a commit per batch "
    "(default: FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS, else 0)",
)
@metrics_options
@with_broker
def orchestrator(
    settings: Settings,
    *,
    guarantee: str | None,
    commit_interval_ms: int | None,
    metrics_port: int | None,
    metrics_host: str,
) -> int:
    return run_orchestrator(
        settings.with_orchestrator(guarantee, commit_interval_ms),
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


@click.command(
    "worker",
    short_help="Run a worker pool for your agents (an App).",
    help="Run a worker pool process: it runs the handlers of an App (your agents) for the "
    "tasks of their capabilities. Runs until stopped; start more for more capacity.",
)
@click.option(
    "--app",
    required=True,
    metavar="MODULE:ATTR",
    help="the App to run, e.g. myagents:app for `app` in myagents.py",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    metavar="N",
    help="tasks this process runs at once",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30,
    metavar="SECONDS",
    help="on SIGTERM, how long running tasks may take to finish",
)
@metrics_options
@with_broker
def worker(
    settings: Settings,
    *,
    app: str,
    concurrency: int,
    grace: float,
    metrics_port: int | None,
    metrics_host: str,
) -> int:
    return run_worker(
        settings,
        load_app(app),
        concurrency=concurrency,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        grace_s=grace,
    )


@click.command(
    "demo",
    short_help="See it work: a whole fleet and sample workflows.",
    help="See it work: start the local broker (unless KAFKA_BOOTSTRAP_SERVERS is set), an "
    "orchestrator and two worker pools of example agents, run a mix of sample workflows "
    "with live progress, print a summary and stop everything again.",
)
@click.option(
    "--workflows",
    type=click.IntRange(min=1),
    default=240,
    metavar="N",
    help="sample workflows to run (besides a burst of GPU renders that contend on the market)",
)
@click.option("--keep-broker", is_flag=True, help="leave the local broker running afterwards")
@with_settings
def demo(settings: Settings, workflows: int, keep_broker: bool) -> int:
    """The demo resolves its own broker: it starts the local one if none is named."""
    return run_demo(settings, workflows=workflows, keep_broker=keep_broker)
