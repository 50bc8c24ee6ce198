"""What runs in a run dir, whether it answers, and the broker address the ``fleet`` command uses.

The bootstrap file of a run dir records what was started there: one address per node.
A node counts as running only if its pid file names a live process that is this node's
JVM (its command line carries the node's dir), so a stale pid file proves nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from fleet.settings import Settings
from fleetctl.localkafka.nodes import Node, layout
from fleetctl.localkafka.process import cmdline


@dataclass(frozen=True)
class BrokerStatus:
    """A live local broker (or cluster), as found in a run dir."""

    pid: int  # the single broker's, or the first live node's of a cluster
    bootstrap: str  # every node's address, node 1 first, live or not
    version: str
    run_dir: Path
    pids: Mapping[int, int]  # node id -> pid, live nodes only
    # Where its topics live, node 1 first: kept across stop and start (localkafka.kept).
    data_dirs: tuple[Path, ...] = ()


def bootstrap_file(run_dir: Path) -> Path:
    return run_dir / "bootstrap"


def recorded_nodes(run_dir: Path) -> list[Node] | None:
    """The nodes the bootstrap file records, or None if it records none."""
    try:
        bootstrap = bootstrap_file(run_dir).read_text().strip()
    except OSError:
        return None
    return layout(run_dir, bootstrap.split(",")) if bootstrap else None


def nodes_of(running: BrokerStatus) -> list[Node]:
    return layout(running.run_dir, running.bootstrap.split(","))


def find_running(run_dir: Path, version: str) -> BrokerStatus | None:
    """The broker of ``run_dir`` if any of its node processes is alive, else None.

    ``version`` is reported when no live node says which version it runs."""
    cluster = recorded_nodes(run_dir)
    if cluster is None:
        return None
    pids: dict[int, int] = {}
    for node in cluster:
        try:
            pid = int(node.pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        args = cmdline(pid)
        if node.runs(pid, args):
            pids[node.node_id] = pid
            version = next(
                (a.split("=", 1)[1] for a in args if a.startswith("-Dfleet.kafka.version=")),
                version,
            )
    if not pids:
        return None
    bootstrap = ",".join(node.address for node in cluster)
    pid = next(iter(pids.values()))
    data_dirs = tuple(node.data for node in cluster)
    return BrokerStatus(pid, bootstrap, version, run_dir, pids, data_dirs)


def answers(bootstrap: str, timeout_s: float) -> bool:
    """Does the node at ``bootstrap`` accept a connection and answer a metadata request?"""
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 2.0)):
            pass
    except OSError:
        return False
    # log_level 0 keeps librdkafka quiet about the refused connections of a starting broker.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
        return False


def resolve_bootstrap(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS if set, else the running local broker, else a clear error."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    status = find_running(settings.kafka_run_dir.expanduser().resolve(), settings.kafka_version)
    if status is not None:
        return status.bootstrap
    return settings.require_bootstrap()  # none named, none running: its ConfigError
