"""``fleet kafka`` (the local broker), ``fleet topics apply``, and where the broker is found."""

from __future__ import annotations

import sys

from fleet.kafka import KafkaClients
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.localkafka import LocalKafka, resolve_bootstrap


def connected(settings: Settings) -> Settings:
    """``settings`` with the broker to use: KAFKA_BOOTSTRAP_SERVERS, else the running
    local broker (or a ConfigError saying how to get one). The one place a broker is
    looked for: every command and process below is handed its address."""
    return settings.with_bootstrap(resolve_bootstrap(settings))


def kafka(action: str, settings: Settings) -> int:
    local = LocalKafka(settings)
    if action == "start":
        print(local.start())
    elif action == "stop":
        print("stopped" if local.stop() else "not running")
    else:
        status = local.status()
        if status is None:
            print("not running")
            return EXIT_FAILED
        print(f"running pid={status.pid} version={status.version} run_dir={status.run_dir}")
        print(status.bootstrap)
    return EXIT_OK


def topics_apply(settings: Settings, extra: list[str]) -> int:
    topology = Topology.load(settings.topology_file)
    admin = KafkaClients(settings, settings.require_bootstrap(), role="admin").ready_admin()
    wanted = desired_topics(topology, Topics(settings.topic_prefix), topology.capabilities + extra)
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
