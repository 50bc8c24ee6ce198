"""The embedded local broker: Apache Kafka jars from Maven Central, run as detached JVMs.

This is the zero-setup default (DESIGN §9): no Docker, only Java 17+ and Maven. The jars
are cached per version and shared by every run dir; a run dir holds one broker (its
config, data, logs, pid and bootstrap files), or a cluster of a few KRaft nodes with
those files per node in node-<i>/, so tests use their own run dir and never touch a
user's broker. A cluster is for fault tests: ``kill_node`` crashes one node,
``start_node`` brings it back on its own data and ports.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import structlog
from confluent_kafka.admin import AdminClient

from fleet.errors import ConfigError, LocalKafkaError
from fleet.settings import Settings

_JAVA_MISSING = (
    "Java 17+ is required to run the local broker; install it "
    "(apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS to an "
    "existing cluster"
)
_MVN_MISSING = (
    "Maven (mvn) is required to fetch the local broker's jars from Maven Central; install "
    "it (apt-get install maven) or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster"
)
_MVN_ARGS = (  # the plugin version is pinned so a fetch is repeatable
    "-B", "-q", "-Dstyle.color=never", "-DincludeScope=runtime",
    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
)  # fmt: skip
_COMPLETE_MARKER = ".complete"  # written last into a fetch, so a libs dir without it is junk

# kafka-tools-api 4.4.0 is not published on Central; the broker never needs it, so it is
# excluded for every version.
# log4j-slf4j-impl is the SLF4J 1.x binding Kafka needs, or the broker logs nothing.
_LOG4J_DEPS = "".join(
    f"<dependency><groupId>org.apache.logging.log4j</groupId><artifactId>{artifact}</artifactId>"
    "<version>2.25.1</version></dependency>"
    for artifact in ("log4j-slf4j-impl", "log4j-core", "log4j-api")
)
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>fleet.local</groupId><artifactId>kafka-libs</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version><exclusions><exclusion><groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools-api</artifactId></exclusion></exclusions></dependency>
    {log4j}
  </dependencies>
</project>
"""

# KRaft with a static quorum; every node is broker and controller. Internal topics get few
# partitions so a node starts and recovers fast. Replication is min(nodes, 3) with a min ISR
# one lower: a single node works alone, and in a cluster one node may die without stopping
# acks=all writes, transactions or share groups. The small dedupe buffer keeps the cleaner
# inside a 512 MiB heap. The product creates its topics itself.
_SERVER_PROPERTIES = """process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
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
class BrokerStatus:
    """A live local broker (or cluster), as found in a run dir."""

    pid: int  # the single broker's, or the first live node's of a cluster
    bootstrap: str  # every node's address, node 1 first, live or not
    version: str
    run_dir: Path
    pids: Mapping[int, int]  # node id -> pid, live nodes only


@dataclass(frozen=True)
class _Node:
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
        args = _cmdline(pid) if args is None else args
        return "kafka.Kafka" in args and f"-Dfleet.run.dir={self.dir}" in args


def _layout(run_dir: Path, addresses: Sequence[str]) -> list[_Node]:
    """The nodes of a run dir whose bootstrap is ``addresses`` (one per node, in order)."""
    if len(addresses) == 1:  # the single broker's files stay where they always were
        return [_Node(1, run_dir, addresses[0])]
    return [_Node(i, run_dir / f"node-{i}", a) for i, a in enumerate(addresses, start=1)]


def _nodes_of(running: BrokerStatus) -> list[_Node]:
    return _layout(running.run_dir, running.bootstrap.split(","))


def _server_properties(node_id: int, ports: Sequence[tuple[int, int]], data: Path) -> str:
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


class LocalKafka:
    """Fetch, start, find and stop the broker (or cluster of ``nodes``) of one run dir.

    The bootstrap file records what runs there: one address per node. ``status`` and
    ``stop`` follow it, whatever ``nodes`` says; ``nodes`` only shapes a fresh start.
    """

    def __init__(
        self,
        settings: Settings,
        nodes: int = 1,
        *,
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        if nodes < 1:
            raise LocalKafkaError(f"a local broker needs at least one node, not {nodes}")
        self.version = settings.kafka_version
        self.nodes = nodes
        self.libs_dir = settings.kafka_cache_dir.expanduser().resolve() / self.version / "libs"
        self.run_dir = settings.kafka_run_dir.expanduser().resolve()
        self._which = which  # injectable so "Java is missing" is testable without a broker
        self._java_path: str | None = None
        self._log = structlog.get_logger(__name__)
        self._bootstrap_file = self.run_dir / "bootstrap"

    # -- jars --------------------------------------------------------------------------
    def ensure_jars(self) -> Path:
        """Return the libs dir of this version, fetching it with Maven first if needed."""
        if self._jars_complete():
            return self.libs_dir
        self._java()  # Maven itself needs a JDK/JRE: say so before Maven does, less clearly
        mvn = self._tool("mvn", _MVN_MISSING)
        self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
        # Another process may be fetching the same version: wait for it, then re-check.
        with _flock(self.libs_dir.parent / ".fetch.lock"):
            if self._jars_complete():
                return self.libs_dir
            self._log.info(f"fetching Apache Kafka {self.version} jars from Maven Central")
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=self.libs_dir.parent, prefix=".fetch-") as tmp:
                staged = Path(tmp) / "libs"
                pom = _POM.format(kafka=self.version, log4j=_LOG4J_DEPS)
                (Path(tmp) / "pom.xml").write_text(pom)
                argv = [mvn, *_MVN_ARGS, f"-DoutputDirectory={staged}"]
                done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
                if done.returncode != 0 or not any(staged.glob("kafka_2.13-*.jar")):
                    raise LocalKafkaError(
                        f"Maven could not fetch Apache Kafka {self.version} (exit "
                        f"{done.returncode}); check the version and your network:\n"
                        + _tail(done.stdout + done.stderr)
                    )
                (staged / _COMPLETE_MARKER).write_text(self.version)
                # A stale, incomplete libs dir is moved aside first: rename cannot replace
                # a non-empty directory, and the new one must appear in a single step.
                if self.libs_dir.exists():
                    self.libs_dir.rename(Path(tmp) / "stale")
                staged.rename(self.libs_dir)
            jars = len(list(self.libs_dir.glob("*.jar")))
            self._log.info(f"cached {jars} jars in {self.libs_dir}", seconds=_since(started))
        return self.libs_dir

    def _jars_complete(self) -> bool:
        return (self.libs_dir / _COMPLETE_MARKER).is_file() and any(
            self.libs_dir.glob("kafka_2.13-*.jar")
        )

    def _tool(self, name: str, missing: str) -> str:
        path = self._which(name)
        if path is None:
            raise LocalKafkaError(missing)
        return path

    def _java(self) -> str:
        if self._java_path is not None:
            return self._java_path
        java = self._tool("java", _JAVA_MISSING)
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if match:
            major = int(match[2] or 0) if match[1] == "1" else int(match[1])  # "1.8" is 8
            if major < 17:
                raise LocalKafkaError(f"found Java {major} at {java}; " + _JAVA_MISSING)
        self._java_path = java
        return java

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout_s: float = 60) -> str:
        """Start the broker(s) of this run dir (or find them running); return the bootstrap.

        A cluster with a node down or not answering is stopped and started afresh.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The lock makes concurrent starts (two CLIs, parallel test sessions sharing a run
        # dir) end with one broker: the second caller finds the first one's broker alive.
        with _flock(self.run_dir / ".lock"):
            running = self.status()
            if running is not None:
                cluster = _nodes_of(running)
                if len(cluster) != self.nodes:
                    raise LocalKafkaError(
                        f"a {len(cluster)}-node local broker runs in {self.run_dir}, not "
                        f"{self.nodes}; stop it first"
                    )
                wait_s = min(timeout_s, 10.0)
                if len(running.pids) == len(cluster) and all(
                    _answers(node.address, timeout_s=wait_s) for node in cluster
                ):
                    return running.bootstrap
                self._log.warning(
                    f"local broker {running.bootstrap} is not all up; starting it afresh",
                    pids=dict(running.pids),
                )
                self._stop_locked(running, timeout_s=30.0)
            return self._start_fresh(timeout_s)

    def _start_fresh(self, timeout_s: float) -> str:
        java = self._java()
        libs = self.ensure_jars()
        started = time.monotonic()
        free = _free_ports(2 * self.nodes)
        ports = list(zip(free[0::2], free[1::2], strict=True))
        cluster = _layout(self.run_dir, [f"127.0.0.1:{port}" for port, _ in ports])
        self._forget(cluster)
        cluster_id = _cluster_id()
        formats: list[subprocess.Popen[str]] = []
        failed: str | None = None
        for node in cluster:
            node.dir.mkdir(exist_ok=True)
            # Fresh data and a new cluster id on every start: a dir formatted for another
            # cluster id refuses to start, and leftovers from a crashed run prove nothing.
            shutil.rmtree(node.data, ignore_errors=True)
            node.props_file.write_text(_server_properties(node.node_id, ports, node.data))
            node.log4j_file.write_text(_LOG4J2_PROPERTIES.format(log=node.log_file))
            fmt = [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format"]
            fmt += ["-t", cluster_id, "-c", str(node.props_file)]
            # All at once: each format is a JVM start-up, mostly CPU-bound class loading.
            formats.append(
                subprocess.Popen(fmt, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        for done in formats:  # every one is waited for, even after a failure
            output, _ = done.communicate()
            if done.returncode != 0:
                failed = failed or output
        if failed is not None:
            raise LocalKafkaError("formatting the local broker's storage failed:\n" + _tail(failed))
        bootstrap = ",".join(node.address for node in cluster)
        self._bootstrap_file.write_text(f"{bootstrap}\n")
        self._launch(cluster, started, timeout_s)
        return bootstrap

    def restart(self, down_s: float = 0.0, timeout_s: float = 60) -> str:
        """Stop every node, stay down ``down_s``, start them all again on the same data.

        Same cluster id, topics, offsets and ports, so running clients reconnect by
        themselves: this is a broker restart as operators do it, for fault tests.
        """
        with self._lock():
            running = self.status()
            if running is None:
                raise LocalKafkaError(f"no local broker is running in {self.run_dir} to restart")
            self._stop_locked(running, timeout_s=30.0)
            time.sleep(down_s)
            self._bootstrap_file.write_text(f"{running.bootstrap}\n")
            self._launch(_nodes_of(running), time.monotonic(), timeout_s)
            return running.bootstrap

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would, and return once its process is gone.

        Its data and ports stay; ``start_node`` brings it back.
        """
        with self._lock():
            node = self._node(node_id)
            running = self.status()
            if running is None or node_id not in running.pids:
                raise LocalKafkaError(f"local broker node {node_id} is not running")
            pid = running.pids[node_id]
            self._log.info(f"killing local broker node {node_id} (pid {pid}) with SIGKILL")
            if self._signal_and_wait({pid: node}, signal.SIGKILL, 10.0):
                raise LocalKafkaError(f"could not kill local broker node {node_id} (pid {pid})")
            node.pid_file.unlink(missing_ok=True)

    def start_node(self, node_id: int, timeout_s: float = 60) -> None:
        """Start one stopped node again on its own data and ports; return once it answers.

        In a cluster it needs a quorum: it answers only once a majority of nodes runs.
        """
        with self._lock():
            node = self._node(node_id)
            running = self.status()
            if running is not None and node_id in running.pids:
                raise LocalKafkaError(f"local broker node {node_id} is already running")
            self._launch([node], time.monotonic(), timeout_s)

    def _lock(self) -> AbstractContextManager[None]:
        """The run dir's lock, for operations on a broker that must exist already."""
        if not self.run_dir.is_dir():
            raise LocalKafkaError(f"no local broker in {self.run_dir}; start it first")
        return _flock(self.run_dir / ".lock")

    def _node(self, node_id: int) -> _Node:
        cluster = self._cluster()
        if cluster is None:
            raise LocalKafkaError(f"no local broker in {self.run_dir}; start it first")
        if not 1 <= node_id <= len(cluster):
            raise LocalKafkaError(f"the local broker has nodes 1 to {len(cluster)}, not {node_id}")
        return cluster[node_id - 1]

    def _launch(self, nodes: list[_Node], started: float, timeout_s: float) -> None:
        """Run the JVMs of ``nodes`` on their config and storage; wait until all answer.

        All are spawned before any is waited for: a node of a cluster answers only once a
        quorum of controllers runs.
        """
        java = self._java()
        classpath = f"{self.ensure_jars()}/*"  # java expands the wildcard itself
        launched: dict[int, _Node] = {}
        for node in nodes:
            argv = [java, "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
            # These two properties tag the process, so status() can tell it from a reused pid.
            argv += [f"-Dfleet.kafka.version={self.version}", f"-Dfleet.run.dir={node.dir}"]
            # log4j2's own shutdown hook races Kafka's and drops its shutdown lines.
            argv += [
                f"-Dlog4j2.configurationFile={node.log4j_file}",
                "-Dlog4j2.shutdownHookEnabled=false",
            ]
            argv += [f"-Dkafka.logs.dir={node.dir}"]
            argv += ["-cp", classpath, "kafka.Kafka", str(node.props_file)]
            pid = _spawn_detached(argv, node)
            node.pid_file.write_text(f"{pid}\n")
            launched[pid] = node
        addresses = ",".join(node.address for node in nodes)
        self._log.info(
            f"waiting for Apache Kafka {self.version} on {addresses}", pids=list(launched)
        )
        self._wait_ready(launched, time.monotonic() + timeout_s)
        self._log.info(
            f"local broker ready on {addresses}",
            seconds=_since(started),
            logs=[str(node.log_file) for node in nodes],
        )

    def _wait_ready(self, launched: dict[int, _Node], deadline: float) -> None:
        # With a fixed port the listener opens only once the broker is unfenced, so a
        # TCP connect plus a metadata answer means it is ready for clients.
        waiting = dict(launched)
        while waiting and time.monotonic() < deadline:
            for pid, node in list(waiting.items()):
                # Right after the spawn the pid may still be the shell about to exec java
                # (its command line is not ours yet): only a pid that is gone has exited.
                if not node.runs(pid) and not _exists(pid):
                    self._abort(launched)
                    raise LocalKafkaError(
                        f"the local broker exited during start-up; last lines of its logs "
                        f"({node.dir}):\n{_log_tail(node)}"
                    )
                remaining = max(deadline - time.monotonic(), 0.5)
                if _answers(node.address, timeout_s=min(5.0, remaining)):
                    del waiting[pid]
            if waiting:
                time.sleep(0.2)
        if waiting:
            node = next(iter(waiting.values()))
            self._abort(launched)
            raise LocalKafkaError(
                f"the local broker did not answer on {node.address} in time; last lines of "
                f"its logs ({node.dir}):\n{_log_tail(node)}"
            )

    def _abort(self, launched: dict[int, _Node]) -> None:
        """Stop the nodes of a failed launch; forget the cluster if no node is left."""
        self._stop_pids(launched, timeout_s=10.0)
        for node in launched.values():
            node.pid_file.unlink(missing_ok=True)
        if self.status() is None:
            self._bootstrap_file.unlink(missing_ok=True)

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop this run dir's broker (every node); return whether one was running."""
        if not self.run_dir.is_dir():
            return False
        with _flock(self.run_dir / ".lock"):
            running = self.status()
            if running is None:
                self._forget(self._cluster() or [])
                return False
            self._stop_locked(running, timeout_s)
            return True

    def _stop_locked(self, running: BrokerStatus, timeout_s: float) -> None:
        cluster = _nodes_of(running)
        self._stop_pids({pid: cluster[i - 1] for i, pid in running.pids.items()}, timeout_s)
        self._forget(cluster)

    def _stop_pids(self, targets: dict[int, _Node], timeout_s: float) -> None:
        pids = list(targets)
        self._log.info(f"stopping local broker pid(s) {pids}", grace_s=timeout_s)
        # SIGTERM makes Kafka shut down cleanly; SIGKILL only after the grace period.
        # All nodes at once, so their shutdowns overlap instead of adding up.
        left = self._signal_and_wait(targets, signal.SIGTERM, timeout_s)
        if left:
            self._log.warning(f"broker pid(s) {left} still running; killing them")
            left = self._signal_and_wait({pid: targets[pid] for pid in left}, signal.SIGKILL, 10.0)
            if left:
                raise LocalKafkaError(f"could not stop the local broker (pids {left})")

    def _signal_and_wait(
        self, targets: dict[int, _Node], sig: signal.Signals, wait_s: float
    ) -> list[int]:
        """Send ``sig`` to every pid; return those still running after ``wait_s``."""
        for pid in targets:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while True:
            left = [pid for pid, node in targets.items() if node.runs(pid)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def _forget(self, cluster: list[_Node]) -> None:
        for node in cluster:
            node.pid_file.unlink(missing_ok=True)
        self._bootstrap_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus | None:
        """The broker of this run dir if any of its node processes is alive, else None."""
        cluster = self._cluster()
        if cluster is None:
            return None
        pids: dict[int, int] = {}
        version = self.version
        for node in cluster:
            try:
                pid = int(node.pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            args = _cmdline(pid)
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
        return BrokerStatus(pid, bootstrap, version, self.run_dir, pids)

    def _cluster(self) -> list[_Node] | None:
        """The nodes the bootstrap file records, or None if it records none."""
        try:
            bootstrap = self._bootstrap_file.read_text().strip()
        except OSError:
            return None
        return _layout(self.run_dir, bootstrap.split(",")) if bootstrap else None


def _spawn_detached(argv: list[str], node: _Node) -> int:
    """Run argv in the background of a throwaway shell, in a new session.

    The shell exits at once, so the broker is never our child: it outlives the CLI,
    leaves no zombie for us to reap and no Popen object to warn on garbage collection.
    """
    script = 'log=$1; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(node.console_file), *argv],
        cwd=node.dir,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    return int(out.stdout.strip())


def _log_tail(node: _Node) -> str:
    # The first ERROR is usually the cause; the tail is mostly the shutdown that follows.
    files = [f for f in (node.console_file, node.log_file) if f.is_file()]
    text = "\n".join(f.read_text(errors="replace") for f in files)
    first = next((line for line in text.splitlines() if " ERROR " in line), "")
    return (f"first error: {first}\n" if first else "") + (_tail(text) or "(no log output)")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    """The argv of a process, or [] if it is gone (or a zombie)."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            return proc.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return []
    # No /proc (macOS): ps prints the command line joined by spaces, good enough here.
    out = subprocess.run(
        ["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return out.stdout.split()


def _answers(bootstrap: str, timeout_s: float) -> bool:
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


def _free_ports(count: int) -> list[int]:
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


def _cluster_id() -> str:
    while True:  # Kafka's own rule: a leading '-' would read as a command-line option
        candidate = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def resolve_bootstrap(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS if set, else the running local broker, else a clear error."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    status = LocalKafka(settings).status()
    if status is not None:
        return status.bootstrap
    raise ConfigError(
        "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, or start the local one with "
        "`fleet kafka start`"
    )
