"""The fleet's processes: killed, paused and brought back like a supervisor would.

One :class:`Slot` per role instance (``orchestrator-2`` keeps its name across restarts);
:class:`Processes` starts, kills, pauses and restarts them; :class:`Broker` wraps the
broker the driver started (restartable) or an external one (not).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.localkafka import LocalKafka
from fleet.supervisor import Child, Supervisor
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
            return ["orchestrator"]
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


class Broker:
    """The broker the driver started (restartable) or an external one (not)."""

    def __init__(self, local: LocalKafka | None, bootstrap: str) -> None:
        self.local = local
        self.bootstrap = bootstrap

    def restart_unsupported(self) -> str | None:
        if self.local is None:
            return "KAFKA_BOOTSTRAP_SERVERS names an external cluster; the driver cannot restart it"
        return None

    def restart(self, down_s: float) -> float:
        """Stop, stay down ``down_s``, start on the same data; return seconds down."""
        assert self.local is not None
        stopped = time.monotonic()
        bootstrap = self.local.restart(down_s=down_s, timeout_s=120)
        if bootstrap != self.bootstrap:
            raise FleetError(
                f"the broker came back on {bootstrap}, not {self.bootstrap}: clients cannot follow"
            )
        return time.monotonic() - stopped
