"""``fleet kafka`` (the local broker) and ``fleet topics apply``."""

from __future__ import annotations

import sys

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


@kafka.command("start", help="Start the local broker (or find it running); print its address.")
@with_settings
def start(settings: Settings) -> int:
    print(LocalKafka(settings).start())
    return EXIT_OK


@kafka.command("stop", help="Stop the local broker.")
@with_settings
def stop(settings: Settings) -> int:
    print("stopped" if LocalKafka(settings).stop() else "not running")
    return EXIT_OK


@kafka.command(
    "status", help="Whether the local broker runs, where, and its address (exit 1: not running)."
)
@with_settings
def status(settings: Settings) -> int:
    running = LocalKafka(settings).status()
    if running is None:
        print("not running")
        return EXIT_FAILED
    print(f"running pid={running.pid} version={running.version} run_dir={running.run_dir}")
    print(running.bootstrap)
    return EXIT_OK


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
