"""The nodes of a run dir: where each keeps its files, and the configuration it runs with.

A run dir holds one broker (its config, data, logs, pid and bootstrap files), or a
cluster of a few KRaft nodes with those files per node in node-<i>/. Each node gets a
server.properties for its free ports and the cluster's fresh id, and a log4j2 config.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetctl.localkafka.process import cmdline, tail

# KRaft with a static quorum; every node is broker and controller. Internal topics get few
# partitions so a node starts and recovers fast. Replication is min(nodes, 3) with a min ISR
# one lower: a single node works alone, and in a cluster one node may die without stopping
# acks=all writes, transactions or share groups. The small dedupe buffer keeps the cleaner
# inside a 512 MiB heap. The product creates its topics itself.
# The quorum's timeouts are raised from 2 s (fetch, request) and 1 s (election): on a
# loaded 2-core machine three JVMs and a fleet share the CPUs, a controller event can
# take 5 s, and with the defaults the two voters left after a kill -9 kept timing each
# other out, electing and resigning for a minute with no active controller, so the dead
# node was never fenced and its partitions never moved. Detecting a dead controller
# takes a few seconds longer; a single node is its own quorum and never waits on these.
_SERVER_PROPERTIES = """process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
controller.quorum.fetch.timeout.ms=6000
controller.quorum.election.timeout.ms=2000
controller.quorum.request.timeout.ms=4000
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_isr}
auto.create.topics.enable=false
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
"""

# INFO to a size-capped file so a long-lived dev broker cannot fill the disk; the request
# logger is chatty at INFO and says nothing useful for a local broker.
_LOG4J2_PROPERTIES = """status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.network.name = kafka.network.RequestChannel$
logger.network.level = warn
"""


@dataclass(frozen=True)
class Node:
    """One KRaft node (broker and controller in one JVM) and the files it keeps.

    A single broker keeps them in the run dir itself; node i of a cluster in run_dir/node-i.
    """

    node_id: int
    dir: Path
    address: str  # 127.0.0.1:<port> of its PLAINTEXT listener

    @property
    def pid_file(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def props_file(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    @property
    def console_file(self) -> Path:
        return self.dir / "console.log"  # the JVM's own stdout/stderr

    @property
    def log4j_file(self) -> Path:
        return self.dir / "log4j2.properties"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def runs(self, pid: int, args: list[str] | None = None) -> bool:
        # A pid alone is not proof: after a reboot or a crash the number may belong to
        # another process. Ours runs kafka.Kafka tagged with this node's dir. (A zombie has
        # an empty command line, so an exited broker counts as gone.)
        args = cmdline(pid) if args is None else args
        return "kafka.Kafka" in args and f"-Dfleet.run.dir={self.dir}" in args

    def write_config(self, ports: Sequence[tuple[int, int]]) -> None:
        """Its server.properties (for a cluster with these ports) and log4j2 config."""
        self.props_file.write_text(server_properties(self.node_id, ports, self.data))
        self.log4j_file.write_text(_LOG4J2_PROPERTIES.format(log=self.log_file))

    def log_tail(self) -> str:
        """Its first ERROR line, if any, and the last lines of its logs."""
        # The first ERROR is usually the cause; the tail is mostly the shutdown that follows.
        files = [f for f in (self.console_file, self.log_file) if f.is_file()]
        text = "\n".join(f.read_text(errors="replace") for f in files)
        first = next((line for line in text.splitlines() if " ERROR " in line), "")
        return (f"first error: {first}\n" if first else "") + (tail(text) or "(no log output)")


def layout(run_dir: Path, addresses: Sequence[str]) -> list[Node]:
    """The nodes of a run dir whose bootstrap is ``addresses`` (one per node, in order)."""
    if len(addresses) == 1:  # the single broker's files stay where they always were
        return [Node(1, run_dir, addresses[0])]
    return [Node(i, run_dir / f"node-{i}", a) for i, a in enumerate(addresses, start=1)]


def server_properties(node_id: int, ports: Sequence[tuple[int, int]], data: Path) -> str:
    """The config of node ``node_id`` of a cluster with each node's (PLAINTEXT, CONTROLLER)
    ports in ``ports``, node 1 first."""
    voters = ",".join(f"{i}@127.0.0.1:{cport}" for i, (_, cport) in enumerate(ports, start=1))
    replicas = min(len(ports), 3)
    port, cport = ports[node_id - 1]
    return _SERVER_PROPERTIES.format(
        node_id=node_id,
        voters=voters,
        port=port,
        cport=cport,
        data=data,
        replicas=replicas,
        min_isr=max(replicas - 1, 1),
    )


def free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the same port is not returned
    # twice; the kernel does not hand a just-released ephemeral port out again at once.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def cluster_id() -> str:
    while True:  # Kafka's own rule: a leading '-' would read as a command-line option
        candidate = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate
