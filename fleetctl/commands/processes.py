"""``fleet orchestrator``, ``fleet worker`` and ``fleet demo``: the commands that run processes."""

from __future__ import annotations

from typing import get_args

import click

from fleet.errors import ConfigError
from fleet.settings import Guarantee, Settings
from fleetctl.commands.params import metrics_options, with_broker, with_settings
from fleetctl.demo import run_demo
from orchestrator.shell.runtime import run as run_orchestrator
from workers.identity import check_agent_id, default_name
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
@click.option(
    "--instance-id",
    metavar="NAME",
    help="a stable name, unique among running instances (a StatefulSet pod name): its "
    "replacement under the same name takes over at once instead of after a minute "
    "(default: FLEET_ORCHESTRATOR_INSTANCE_ID, else a fresh random id)",
)
@metrics_options
@with_broker
def orchestrator(
    settings: Settings,
    *,
    guarantee: str | None,
    commit_interval_ms: int | None,
    instance_id: str | None,
    metrics_port: int | None,
    metrics_host: str,
) -> int:
    return run_orchestrator(
        settings.with_orchestrator(guarantee, commit_interval_ms, instance_id),
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


@click.command(
    "worker",
    short_help="Run a worker pool for your agents (an App).",
    help="Run a worker pool process: it runs the handlers of an App (your agents) for the "
    "tasks of their capabilities, as one agent: it publishes an A2A card per capability "
    "and heartbeats (see `fleet agents`). Runs until stopped; start more for more capacity.",
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
@click.option(
    "--agent-id",
    metavar="ID",
    help="this process's agent id (a restart with the same id is the same agent); default: "
    "<host>-<name>-<slot>, the name FLEET_AGENT_NAME or the app's module, the slot the "
    "lowest one no running worker on this host holds",
)
@click.option(
    "--region",
    metavar="REGION",
    help="the region its agent card and heartbeats name (default: FLEET_REGION, else none)",
)
@metrics_options
@with_broker
def worker(
    settings: Settings,
    *,
    app: str,
    concurrency: int,
    grace: float,
    agent_id: str | None,
    region: str | None,
    metrics_port: int | None,
    metrics_host: str,
) -> int:
    if agent_id is not None:
        try:
            check_agent_id(agent_id)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--agent-id") from exc
    if region is not None:
        settings = settings.model_copy(update={"region": region})
    return run_worker(
        settings,
        load_app(app),
        concurrency=concurrency,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        grace_s=grace,
        agent_id=agent_id,
        agent_name=default_name(app),
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
