"""The broker side of a run: the broker (or cluster) the driver started, and its faults.

:class:`Broker` restarts the whole broker, or kills one node with ``kill -9`` and starts
it again a few seconds later, in the background so the fleet is looked after meanwhile.
An external cluster (``KAFKA_BOOTSTRAP_SERVERS``) allows neither. On a cluster the
fleet's topics are replicated: :func:`replicated_topology` is the topology they get.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from fleet.errors import FleetError
from fleetctl.localkafka import LocalKafka
from tests.fault.log import DriverLog

EXTERNAL = "KAFKA_BOOTSTRAP_SERVERS names an external cluster; the driver cannot"


def replicated_topology(raw: dict[str, Any], brokers: int) -> dict[str, Any]:
    """Topology ``raw`` (topics.yaml, parsed) for a cluster of ``brokers``.

    Replication factor min(brokers, 3) and min.insync.replicas one lower (at least 1) on
    every topic, the task topics included: acks=all writes and transactions go on while
    one node is down, and an acknowledged write is on two nodes at least.
    """
    replicas = min(brokers, 3)
    min_isr = {"min.insync.replicas": str(max(replicas - 1, 1))}

    def with_min_isr(spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "config": {**spec.get("config", {}), **min_isr}}

    return {
        **raw,
        "replication_factor": replicas,
        "topics": {name: with_min_isr(spec) for name, spec in raw["topics"].items()},
        "task_topics": with_min_isr(raw["task_topics"]),
    }


def write_replicated_topology(source: Path, run_dir: Path, brokers: int) -> Path:
    """Write :func:`replicated_topology` of ``source`` into ``run_dir``; return its path."""
    raw = yaml.safe_load(source.read_text())
    target = run_dir / "topics.yaml"
    header = f"# {source}, for a cluster of {brokers} brokers (written by the fault driver)\n"
    target.write_text(header + yaml.safe_dump(replicated_topology(raw, brokers), sort_keys=False))
    return target


class Broker:
    """The broker the driver started (restartable, nodes killable) or an external one."""

    # A (re)started node may replay its logs for minutes on a loaded 2-core machine (once
    # over 80 s, with one controller event of 11 s); past this it counts as not back.
    NODE_START_S = 180.0
    IN_SYNC_S = 120.0

    def __init__(self, local: LocalKafka | None, bootstrap: str, log: DriverLog) -> None:
        self.local = local
        self.bootstrap = bootstrap
        self.log = log
        self.nodes = len(bootstrap.split(","))
        self._down: dict[int, float] = {}  # killed node id -> monotonic time to start it
        self._killed_at: dict[int, float] = {}
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def restart_unsupported(self) -> str | None:
        return f"{EXTERNAL} restart it" if self.local is None else None

    def node_kill_unsupported(self) -> str | None:
        if self.local is None:
            return f"{EXTERNAL} kill its nodes"
        if self._down or self._starter is not None:
            return "a killed broker node is not back yet"
        return None

    def restart(self, down_s: float) -> float:
        """Stop, stay down ``down_s``, start on the same data; return seconds down."""
        assert self.local is not None
        self.restore()  # every node runs before the whole broker stops
        stopped = time.monotonic()
        bootstrap = self.local.restart(down_s=down_s, timeout_s=self.NODE_START_S)
        if bootstrap != self.bootstrap:
            raise FleetError(
                f"the broker came back on {bootstrap}, not {self.bootstrap}: clients cannot follow"
            )
        return time.monotonic() - stopped

    def kill_node(self, node_id: int, down_s: float) -> None:
        """SIGKILL node ``node_id`` of a cluster in sync; :meth:`tick` starts it again
        ``down_s`` later."""
        assert self.local is not None
        self.wait_in_sync()
        self.local.kill_node(node_id)
        self._killed_at[node_id] = time.monotonic()
        self._down[node_id] = time.monotonic() + down_s
        self.log(f"kill -9 broker node {node_id} of {self.nodes}; restart in {down_s:.1f} s")

    def wait_in_sync(self) -> None:
        """Return once every partition (the internal ones too) has all its replicas in
        sync; raise after :data:`IN_SYNC_S`.

        The fault is "one node of a healthy cluster dies", which replication 3 with
        min ISR 2 rides out. On this 2-core machine a follower can fall out of a
        partition's ISR for a while (``replica.lag.time.max.ms``); killing the one
        replica left in sync then takes the partition offline until that node is back,
        a different fault (every write to it stalls, 78 s once), and not one the fleet
        is asked to survive without waiting.
        """
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        started = time.monotonic()
        lagging: list[str] = []
        while time.monotonic() - started < self.IN_SYNC_S:
            try:
                topics = admin.list_topics(timeout=10).topics
            except KafkaException as exc:
                lagging = [f"metadata: {exc}"]
            else:
                lagging = [
                    f"{name}[{p.id}] isr {sorted(p.isrs)} of {sorted(p.replicas)}"
                    for name, topic in topics.items()
                    for p in topic.partitions.values()
                    if set(p.isrs) != set(p.replicas) or p.leader < 0
                ]
            if not lagging:
                if time.monotonic() - started > 1:
                    self.log(f"cluster in sync after {time.monotonic() - started:.1f} s")
                return
            time.sleep(0.5)
        raise FleetError(
            f"the cluster was not in sync within {self.IN_SYNC_S:.0f} s: {lagging[:5]}"
        )

    def tick(self, *, restart_now: bool = False) -> None:
        """Start a killed node again once due (in the background); raise if that failed."""
        starter = self._starter
        if starter is not None and not starter.is_alive():
            self._starter = None
            error, self._start_error = self._start_error, None
            if error is not None:
                raise FleetError(f"a killed broker node did not come back: {error}") from error
        now = time.monotonic()
        due = [n for n, at in self._down.items() if restart_now or now >= at]
        if due and self._starter is None:
            del self._down[due[0]]
            self._starter = threading.Thread(
                target=self._start_node, args=(due[0],), name="fault-broker-node", daemon=True
            )
            self._starter.start()

    def restore(self) -> None:
        """Start every killed node now and wait until each answers; raise if one did not."""
        while self._down or self._starter is not None:
            self.tick(restart_now=True)
            starter = self._starter
            if starter is not None:
                starter.join(self.NODE_START_S + 30)
                if starter.is_alive():
                    raise FleetError(f"a broker node is still starting after {self.NODE_START_S}s")

    def _start_node(self, node_id: int) -> None:
        assert self.local is not None
        self.log(f"starting broker node {node_id} again")
        try:
            self.local.start_node(node_id, timeout_s=self.NODE_START_S)
        except BaseException as exc:
            self._start_error = exc
            self.log(f"broker node {node_id} did not come back: {type(exc).__name__}: {exc}")
            return
        down = time.monotonic() - self._killed_at.pop(node_id, time.monotonic())
        self.log(f"broker node {node_id} back, {down:.1f} s after its kill")
