"""What a run dir keeps across stop and start: its nodes' ports and their data.

A development broker is a place, not a process: an orchestrator and a worker that keep
running while it is stopped retry its address, and ``fleet dlq list`` after a restart
expects yesterday's topics. So a stop keeps each node's data (topics, records, committed
offsets, the cluster id it was formatted with) and ``ports.json`` records the ports the
nodes listen on; the next start resumes on both. Only ``start(fresh=True)`` wipes the
data. Tests, fault runs and the demo start their brokers in run dirs of their own.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleetctl.localkafka.nodes import Node, layout

PORTS_FILE = "ports.json"


@dataclass(frozen=True)
class KeptBroker:
    """The state a run dir keeps for its broker: what the next ``start`` resumes."""

    run_dir: Path
    version: str  # the Kafka version that last ran on this data
    ports: tuple[tuple[int, int], ...]  # (PLAINTEXT, CONTROLLER) of each node, node 1 first

    @property
    def nodes(self) -> list[Node]:
        return layout(self.run_dir, [f"127.0.0.1:{port}" for port, _ in self.ports])

    @property
    def bootstrap(self) -> str:
        """Every node's address, node 1 first: where the broker listens when it runs."""
        return ",".join(node.address for node in self.nodes)

    @property
    def data_dirs(self) -> tuple[Path, ...]:
        return tuple(node.data for node in self.nodes)

    def formatted(self) -> bool:
        """Has every node data to resume on? (Kafka's format writes meta.properties.)"""
        return all((data / "meta.properties").is_file() for data in self.data_dirs)


def read_kept(run_dir: Path) -> KeptBroker | None:
    """The ports and version recorded in ``run_dir``, or None if none are (or unreadable)."""
    try:
        record = json.loads((run_dir / PORTS_FILE).read_text())
        ports = tuple((int(port), int(cport)) for port, cport in record["ports"])
        version = str(record["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return KeptBroker(run_dir, version, ports) if ports else None


def write_kept(kept: KeptBroker) -> None:
    record = {"version": kept.version, "ports": [list(pair) for pair in kept.ports]}
    # Written aside and renamed: a crash mid-write must not leave a record that reads as
    # no record, which would make the next start a fresh one.
    target = kept.run_dir / PORTS_FILE
    partial = target.with_suffix(".json.tmp")
    partial.write_text(json.dumps(record) + "\n")
    os.replace(partial, target)


def taken(ports: Iterable[tuple[int, int]]) -> list[int]:
    """The ports of ``ports`` another process holds on 127.0.0.1 (a broker cannot bind them)."""
    return [port for pair in ports for port in pair if not _bindable(port)]


def _bindable(port: int) -> bool:
    # SO_REUSEADDR as the JVM's server socket has it: the TIME_WAIT connections a stopped
    # broker leaves behind do not count as taken, a listener or a bound socket does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True
