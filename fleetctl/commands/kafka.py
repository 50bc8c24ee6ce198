"""``fleet kafka`` (the local broker) and ``fleet topics apply``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fleet.kafka import KafkaClients
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.commands.params import InOrder, with_broker, with_settings
from fleetctl.localkafka import LocalKafka


@click.group(
    "kafka",
    cls=InOrder,
    short_help="Start, stop or check a local Kafka broker.",
    help="A local Apache Kafka broker for development: fetched from Maven Central on first "
    "use, run in the background, kept under FLEET_KAFKA_HOME. Not needed when "
    "KAFKA_BOOTSTRAP_SERVERS names a cluster.",
)
def kafka() -> None:
    pass


@kafka.command(
    "start",
    help="Start the local broker (or find it running); print its address. It starts again "
    "on the data and the port it had: topics and records survive a stop and start.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="wipe the broker's data first (every topic and record), stopping it if it runs",
)
@with_settings
def start(settings: Settings, fresh: bool) -> int:
    print(LocalKafka(settings).start(fresh=fresh))
    return EXIT_OK


@kafka.command("stop", help="Stop the local broker.")
@with_settings
def stop(settings: Settings) -> int:
    print("stopped" if LocalKafka(settings).stop() else "not running")
    return EXIT_OK


@kafka.command(
    "status",
    help="Whether the local broker runs, its address, and where its data lives (exit 1: "
    "not running).",
)
@with_settings
def status(settings: Settings) -> int:
    local = LocalKafka(settings)
    running = local.status()
    if running is None:
        print("not running")
        kept = local.kept()
        if kept is not None:
            print(
                f"data kept in {_dirs(kept.data_dirs)} (Kafka {kept.version}, {kept.bootstrap}); "
                "`fleet kafka start` resumes it, `--fresh` wipes it"
            )
        return EXIT_FAILED
    print(f"running pid={running.pid} version={running.version} run_dir={running.run_dir}")
    print(running.bootstrap)
    if running.data_dirs:
        print(f"data in {_dirs(running.data_dirs)} (kept across stop and start)")
    return EXIT_OK


def _dirs(paths: tuple[Path, ...]) -> str:
    return ", ".join(str(p) for p in paths)


@click.group(
    "topics",
    cls=InOrder,
    short_help="Create the topics.",
    help="The topics of topics.yaml (FLEET_TOPOLOGY).",
)
def topics() -> None:
    pass


@topics.command(
    "apply",
    help="Create the topics of topics.yaml that are missing and report those that differ "
    "from it (exit 1 on drift; an existing topic is never changed behind your back).",
)
@click.option(
    "--capability",
    "capabilities",
    multiple=True,
    metavar="NAME",
    help="also create this capability's task topic (repeatable); a worker creates the topics "
    "of its own capabilities when it starts",
)
@with_broker
def apply(settings: Settings, capabilities: tuple[str, ...]) -> int:
    topology = Topology.load(settings.topology_file)
    admin = KafkaClients(settings, settings.require_bootstrap(), role="admin").ready_admin()
    wanted = desired_topics(
        topology, Topics(settings.topic_prefix), [*topology.capabilities, *capabilities]
    )
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
