"""LocalKafka: start, restart, stop the local broker (or cluster) of one run dir.

A run dir holds one broker, or a cluster of a few KRaft nodes; it keeps their data and
ports across stop and start, and a fresh start wipes them. Tests use their own run dir
and never touch a user's broker. A cluster is for fault tests: ``kill_node`` crashes
one node, ``start_node`` brings it back on its own data and ports. Every operation holds
the run dir's lock, so concurrent callers end with one broker.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import structlog

from fleet.errors import LocalKafkaError
from fleet.settings import Settings
from fleetctl.localkafka.jars import KafkaJars
from fleetctl.localkafka.kept import KeptBroker, read_kept, taken, write_kept
from fleetctl.localkafka.nodes import Node, cluster_id, free_ports, layout
from fleetctl.localkafka.process import (
    exists,
    flock,
    signal_and_wait,
    since,
    spawn_detached,
    tail,
)
from fleetctl.localkafka.status import (
    BrokerStatus,
    answers,
    bootstrap_file,
    find_running,
    nodes_of,
    recorded_nodes,
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
        keep: bool = True,
    ) -> None:
        if nodes < 1:
            raise LocalKafkaError(f"a local broker needs at least one node, not {nodes}")
        self.keep = keep  # False: every start that launches it is a fresh one
        self.version = settings.kafka_version
        self.nodes = nodes
        self.libs_dir = settings.kafka_cache_dir.expanduser().resolve() / self.version / "libs"
        self.run_dir = settings.kafka_run_dir.expanduser().resolve()
        self.jars = KafkaJars(self.version, self.libs_dir, which)
        self._log = structlog.get_logger(__name__)
        self._bootstrap_file = bootstrap_file(self.run_dir)

    @classmethod
    def throwaway(cls, settings: Settings, purpose: str) -> LocalKafka:
        """A broker for one run of ``purpose`` (the demo): in a run dir of its own beside
        the development broker's (``<purpose>-kafka``), never on the user's data, and
        wiped whenever a start launches it (one already running there is used as is)."""
        run_dir = settings.kafka_run_dir.expanduser().resolve().parent / f"{purpose}-kafka"
        return cls(settings.model_copy(update={"kafka_run_dir": run_dir}), keep=False)

    def ensure_jars(self) -> Path:
        """Return the libs dir of this version, fetching it with Maven first if needed."""
        return self.jars.ensure()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout_s: float = 60, *, fresh: bool = False) -> str:
        """Start the broker(s) of this run dir (or find them running); return the bootstrap.

        A broker that ran here before starts again on its kept data and ports (see
        :mod:`~fleetctl.localkafka.kept`), so clients that kept running find it where it
        was; a port someone else holds meanwhile is an error, not a silent move.
        ``fresh`` stops a running one and wipes the data (ports are kept if still free).
        A cluster with a node down or not answering is stopped and started again.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The lock makes concurrent starts (two CLIs, parallel test sessions sharing a run
        # dir) end with one broker: the second caller finds the first one's broker alive.
        with flock(self.run_dir / ".lock"):
            running = self.status()
            if running is not None and fresh:
                self._log.info(f"stopping local broker {running.bootstrap} to start it fresh")
                self._stop_locked(running, timeout_s=30.0)
            elif running is not None:
                cluster = nodes_of(running)
                if len(cluster) != self.nodes:
                    raise LocalKafkaError(
                        f"a {len(cluster)}-node local broker runs in {self.run_dir}, not "
                        f"{self.nodes}; stop it first"
                    )
                wait_s = min(timeout_s, 10.0)
                if len(running.pids) == len(cluster) and all(
                    answers(node.address, timeout_s=wait_s) for node in cluster
                ):
                    return running.bootstrap
                self._log.warning(
                    f"local broker {running.bootstrap} is not all up; starting it again",
                    pids=dict(running.pids),
                )
                self._stop_locked(running, timeout_s=30.0)
            kept = None if fresh or not self.keep else self._resumable()
            if kept is not None:
                return self._resume(kept, timeout_s)
            return self._start_fresh(timeout_s)

    def kept(self) -> KeptBroker | None:
        """What this run dir keeps for a start to resume (ports, data), or None."""
        kept = read_kept(self.run_dir)
        return kept if kept is not None and kept.formatted() else None

    def _resumable(self) -> KeptBroker | None:
        kept = self.kept()
        if kept is not None and len(kept.ports) != self.nodes:
            raise LocalKafkaError(
                f"the local broker kept in {self.run_dir} has {len(kept.ports)} node(s), not "
                f"{self.nodes}; start it fresh to wipe its data and lay it out anew"
            )
        return kept

    def _resume(self, kept: KeptBroker, timeout_s: float) -> str:
        """Start the nodes again on their data and recorded ports, as they were."""
        started = time.monotonic()
        busy = taken(kept.ports)
        if busy:
            raise LocalKafkaError(
                f"the local broker in {self.run_dir} listens on {kept.bootstrap}, but another "
                f"process holds port(s) {', '.join(map(str, busy))}. Stop that process, or "
                "start the broker fresh (`fleet kafka start --fresh`: new ports, its data wiped)"
            )
        if kept.version != self.version:
            self._log.warning(
                f"the local broker's data was last run by Apache Kafka {kept.version}; "
                f"starting {self.version} on it"
            )
        cluster = kept.nodes
        for node in cluster:  # the config of this product version, on the same ports
            node.write_config(kept.ports)
        write_kept(KeptBroker(self.run_dir, self.version, kept.ports))
        self._bootstrap_file.write_text(f"{kept.bootstrap}\n")
        try:
            self._launch(cluster, started, timeout_s)
        except LocalKafkaError as exc:
            raise LocalKafkaError(
                f"{exc}\nIt started on the data it kept in {self.run_dir} (last run by "
                f"Kafka {kept.version}); `fleet kafka start --fresh` wipes it and starts anew"
            ) from exc
        return kept.bootstrap

    def _start_fresh(self, timeout_s: float) -> str:
        java = self.jars.java()
        libs = self.ensure_jars()
        started = time.monotonic()
        before = read_kept(self.run_dir)
        ports = before.ports if before is not None else ()
        if len(ports) != self.nodes or taken(ports):
            free = free_ports(2 * self.nodes)
            ports = tuple(zip(free[0::2], free[1::2], strict=True))
        cluster = layout(self.run_dir, [f"127.0.0.1:{port}" for port, _ in ports])
        self._forget(cluster)
        new_id = cluster_id()
        formats: list[subprocess.Popen[str]] = []
        failed: str | None = None
        # Fresh data and a new cluster id: a dir formatted for another cluster id refuses
        # to start. Every data dir this run dir had goes, also of a cluster laid out anew.
        for node in (before.nodes if before is not None else []) + cluster:
            shutil.rmtree(node.data, ignore_errors=True)
        for node in cluster:
            node.dir.mkdir(exist_ok=True)
            node.write_config(ports)
            fmt = [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format"]
            fmt += ["-t", new_id, "-c", str(node.props_file)]
            # All at once: each format is a JVM start-up, mostly CPU-bound class loading.
            formats.append(
                subprocess.Popen(fmt, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        for done in formats:  # every one is waited for, even after a failure
            output, _ = done.communicate()
            if done.returncode != 0:
                failed = failed or output
        if failed is not None:
            raise LocalKafkaError("formatting the local broker's storage failed:\n" + tail(failed))
        write_kept(KeptBroker(self.run_dir, self.version, ports))
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
            self._launch(nodes_of(running), time.monotonic(), timeout_s)
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
        return flock(self.run_dir / ".lock")

    def _node(self, node_id: int) -> Node:
        cluster = self._cluster()
        if cluster is None:
            raise LocalKafkaError(f"no local broker in {self.run_dir}; start it first")
        if not 1 <= node_id <= len(cluster):
            raise LocalKafkaError(f"the local broker has nodes 1 to {len(cluster)}, not {node_id}")
        return cluster[node_id - 1]

    def _launch(self, nodes: list[Node], started: float, timeout_s: float) -> None:
        """Run the JVMs of ``nodes`` on their config and storage; wait until all answer.

        All are spawned before any is waited for: a node of a cluster answers only once a
        quorum of controllers runs.
        """
        java = self.jars.java()
        classpath = f"{self.ensure_jars()}/*"  # java expands the wildcard itself
        launched: dict[int, Node] = {}
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
            pid = spawn_detached(argv, node.dir, node.console_file)
            node.pid_file.write_text(f"{pid}\n")
            launched[pid] = node
        addresses = ",".join(node.address for node in nodes)
        self._log.info(
            f"waiting for Apache Kafka {self.version} on {addresses}", pids=list(launched)
        )
        self._wait_ready(launched, time.monotonic() + timeout_s)
        self._log.info(
            f"local broker ready on {addresses}",
            seconds=since(started),
            logs=[str(node.log_file) for node in nodes],
        )

    def _wait_ready(self, launched: dict[int, Node], deadline: float) -> None:
        # With a fixed port the listener opens only once the broker is unfenced, so a
        # TCP connect plus a metadata answer means it is ready for clients.
        waiting = dict(launched)
        while waiting and time.monotonic() < deadline:
            for pid, node in list(waiting.items()):
                # Right after the spawn the pid may still be the shell about to exec java
                # (its command line is not ours yet): only a pid that is gone has exited.
                if not node.runs(pid) and not exists(pid):
                    self._abort(launched)
                    raise LocalKafkaError(
                        f"the local broker exited during start-up; last lines of its logs "
                        f"({node.dir}):\n{node.log_tail()}"
                    )
                remaining = max(deadline - time.monotonic(), 0.5)
                if answers(node.address, timeout_s=min(5.0, remaining)):
                    del waiting[pid]
            if waiting:
                time.sleep(0.2)
        if waiting:
            node = next(iter(waiting.values()))
            self._abort(launched)
            raise LocalKafkaError(
                f"the local broker did not answer on {node.address} in time; last lines of "
                f"its logs ({node.dir}):\n{node.log_tail()}"
            )

    def _abort(self, launched: dict[int, Node]) -> None:
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
        with flock(self.run_dir / ".lock"):
            running = self.status()
            if running is None:
                self._forget(self._cluster() or [])
                return False
            self._stop_locked(running, timeout_s)
            return True

    def _stop_locked(self, running: BrokerStatus, timeout_s: float) -> None:
        cluster = nodes_of(running)
        self._stop_pids({pid: cluster[i - 1] for i, pid in running.pids.items()}, timeout_s)
        self._forget(cluster)

    def _stop_pids(self, targets: dict[int, Node], timeout_s: float) -> None:
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
        self, targets: dict[int, Node], sig: signal.Signals, wait_s: float
    ) -> list[int]:
        """Send ``sig`` to every pid; return those still running after ``wait_s``."""
        return signal_and_wait(targets, sig, wait_s, alive=lambda pid: targets[pid].runs(pid))

    def _forget(self, cluster: list[Node]) -> None:
        for node in cluster:
            node.pid_file.unlink(missing_ok=True)
        self._bootstrap_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus | None:
        """The broker of this run dir if any of its node processes is alive, else None."""
        return find_running(self.run_dir, self.version)

    def _cluster(self) -> list[Node] | None:
        """The nodes the bootstrap file records, or None if it records none."""
        return recorded_nodes(self.run_dir)
