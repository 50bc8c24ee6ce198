"""The fleet's processes: killed, paused and brought back like a supervisor would.

One :class:`Slot` per role instance (``orchestrator-2`` keeps its name across restarts);
:class:`Processes` starts, kills, pauses and restarts them; :func:`wait_for_pools` waits
until the worker pools are ready.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.settings import Settings
from fleetctl.supervisor import Child, Supervisor, child_env
from tests.fault.config import WORKER_APP, FaultConfig
from tests.fault.log import DriverLog


@dataclass
class Slot:
    """One process role instance: ``orchestrator-2`` keeps its name across restarts."""

    name: str
    role: str  # "orchestrator" or "worker"
    child: Child | None = None
    generation: int = 0
    paused_until: float | None = None  # monotonic; SIGCONT then
    restart_at: float | None = None  # monotonic; set after a kill or an exit
    crashes: int = 0


class Processes:
    """The fleet's child processes. Only the fault thread calls tick/kill/pause."""

    def __init__(self, supervisor: Supervisor, config: FaultConfig, log: DriverLog) -> None:
        self.supervisor = supervisor
        self.config = config
        self.log = log
        self.slots = [
            Slot(f"orchestrator-{n}", "orchestrator") for n in range(1, config.orchestrators + 1)
        ]
        self.slots += [Slot(f"worker-{n}", "worker") for n in range(1, config.workers + 1)]
        self.unexpected_exits: list[str] = []
        self.restarts = 0
        self._lock = threading.Lock()

    def _args(self, slot: Slot) -> list[str]:
        if slot.role == "orchestrator":
            stable = ["--instance-id", slot.name] if self.config.stable_instance_ids else []
            return ["orchestrator", *stable]
        return ["worker", "--app", WORKER_APP, "--concurrency", str(self.config.concurrency)]

    def _env(self) -> dict[str, str]:
        env = dict(self.config.extra_env)
        if self.config.session_timeout_ms is not None:
            env.setdefault(
                "FLEET_KAFKA_CLIENT_SESSION_TIMEOUT_MS", str(self.config.session_timeout_ms)
            )
        return env

    def start(self, slot: Slot) -> None:
        slot.generation += 1
        log_path = self.supervisor.log_dir / f"{slot.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as out:  # generations share a log; this line separates them
            out.write(f"==== fault driver: {slot.name} #{slot.generation} at {time.time():.3f}\n")
        slot.child = self.supervisor.start(slot.name, self._args(slot), env=self._env())
        slot.paused_until = slot.restart_at = None
        if slot.generation > 1:
            self.restarts += 1
        self.log(
            f"started {slot.name} (generation {slot.generation}, pid {slot.child.process.pid})"
        )

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def alive(self, slot: Slot) -> bool:
        return slot.child is not None and slot.child.alive()

    def choose(self, role: str, rng: random.Random) -> Slot | None:
        """A random live, running (not paused) process of ``role``."""
        ready = [
            s
            for s in self.slots
            if s.role == role and self.alive(s) and s.paused_until is None and s.restart_at is None
        ]
        return rng.choice(ready) if ready else None

    def kill(self, slot: Slot, restart_after_s: float) -> int:
        assert slot.child is not None
        pid = slot.child.process.pid
        slot.child.process.kill()
        slot.child.process.wait(10)
        slot.restart_at = time.monotonic() + restart_after_s
        self.log(f"kill -9 {slot.name} (pid {pid}); restart in {restart_after_s:.1f} s")
        return pid

    def pause(self, slot: Slot, seconds: float) -> int:
        assert slot.child is not None
        pid = slot.child.process.pid
        os.kill(pid, signal.SIGSTOP)
        slot.paused_until = time.monotonic() + seconds
        self.log(f"SIGSTOP {slot.name} (pid {pid}) for {seconds:.1f} s")
        return pid

    def _resume(self, slot: Slot) -> None:
        if slot.child is not None and slot.child.alive():
            os.kill(slot.child.process.pid, signal.SIGCONT)
            self.log(f"SIGCONT {slot.name} (pid {slot.child.process.pid})")
        slot.paused_until = None

    def resume_all(self) -> None:
        with self._lock:
            for slot in self.slots:
                if slot.paused_until is not None:
                    self._resume(slot)

    def tick(self, *, restart_now: bool = False) -> None:
        """Resume paused processes when due; restart killed and crashed ones."""
        with self._lock:
            now = time.monotonic()
            for slot in self.slots:
                if slot.paused_until is not None and now >= slot.paused_until:
                    self._resume(slot)
                child = slot.child
                if child is not None and not child.alive() and slot.restart_at is None:
                    slot.crashes += 1
                    tail = " | ".join(child.log_tail(4).splitlines())[-600:]
                    self.unexpected_exits.append(
                        f"{slot.name} generation {slot.generation} "
                        f"(pid {child.process.pid}) exited "
                        f"with {child.process.returncode} at +{now - self.log.started:.1f}s; "
                        f"log tail: {tail}"
                    )
                    self.log(
                        f"{slot.name} exited by itself ({child.process.returncode}); restarting it"
                    )
                    slot.paused_until = None
                    slot.restart_at = now + min(10.0, 0.5 * 2**slot.crashes)
                if slot.restart_at is not None and (restart_now or now >= slot.restart_at):
                    self.start(slot)

    def stop_all(self, grace_s: float = 20.0) -> dict[str, int | None]:
        """SIGCONT anything paused, then SIGTERM all and wait (SIGKILL after the grace)."""
        self.resume_all()
        with self._lock:
            codes = self.supervisor.stop_all(grace_s)
        return {s.name: codes.get(s.name) for s in self.slots}


# FleetClient.wait_for_pools asks describe_consumer_groups, which can abort the whole
# process inside librdkafka (assertion rd_kafka_enq_once_del_source_return: eonce->refcnt
# > 0; confluentinc/librdkafka#4605): then, or at the next broker restart if the request
# timed out. On a cluster, whose group coordinator is looked up first, it happens at
# start-up. So the driver asks from a child process, and asks again if that one aborts.
_WAIT_FOR_POOLS = """
import os, sys
from fleet.kafka.client import FleetClient
from fleet.settings import Settings
client = FleetClient(Settings.from_env(os.environ), role="fault-pools")
client.wait_for_pools(sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3]))
client.close()
"""


def wait_for_pools(
    settings: Settings, capabilities: Sequence[str], members: int, timeout_s: float, log: DriverLog
) -> None:
    """Block until each capability's worker group is stable with ``members`` members."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(deadline - time.monotonic(), 1.0)
        argv = [sys.executable, "-c", _WAIT_FOR_POOLS, ",".join(capabilities), str(members)]
        try:
            done = subprocess.run(
                [*argv, str(left)],
                env=child_env(settings, {"FLEET_LOG_LEVEL": "error"}),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=left + 60,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise FleetError(f"waiting for the worker pools hung past {left + 60:.0f} s") from exc
        if done.returncode == 0:
            return
        tail = done.stderr.strip()[-800:]
        if done.returncode != -signal.SIGABRT or time.monotonic() > deadline:
            raise FleetError(f"the worker pools were not ready (exit {done.returncode}): {tail}")
        log(f"waiting for the worker pools aborted in librdkafka; asking again ({tail[:120]})")
