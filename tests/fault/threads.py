"""The live run's threads: the watcher, the submitter and the fault schedule."""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from fleet.errors import DecodeError, FleetError
from fleet.kafka.client import FleetClient
from fleet.messages import WorkflowEvent
from tests.fault.broker import Broker
from tests.fault.config import FaultConfig
from tests.fault.garbage import Garbage, GarbageInjector
from tests.fault.log import DriverLog
from tests.fault.plan import FaultKind, PlannedFault
from tests.fault.processes import Processes
from tests.fault.recovery import FaultRecord
from tests.fault.workload import WorkItem


class Watcher(threading.Thread):
    """Tails workflow.events (read_committed) for progress and the end condition."""

    def __init__(self, client: FleetClient) -> None:
        super().__init__(name="fault-watcher", daemon=True)
        self.client = client
        self.consumer = client.event_consumer(from_beginning=True)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.terminal: dict[str, int] = {}  # first terminal at_ms per workflow
        self.events = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for record in self.consumer.consume(500, timeout=0.2):
                    if record.error() is not None:
                        continue  # EOF, or the broker restarting: librdkafka reconnects
                    try:
                        event = self.client.codec.decode(record.value(), WorkflowEvent)
                    except DecodeError:
                        continue
                    with self._lock:
                        self.events += 1
                        if event.kind.terminal:
                            self.terminal.setdefault(event.workflow_id, event.at_ms)
        except BaseException as exc:
            self.error = exc
        finally:
            self.consumer.close()

    def ended(self, ids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for w in ids if w in self.terminal)

    def any_terminal(self) -> bool:
        with self._lock:
            return bool(self.terminal)


class Submitter(threading.Thread):
    """Submits the workload at a bounded rate and sends the planned cancellations."""

    RETRY_FOR_S = 120.0

    def __init__(
        self, client: FleetClient, items: Sequence[WorkItem], rate: float, log: DriverLog
    ) -> None:
        super().__init__(name="fault-submitter", daemon=True)
        self.client = client
        self.items = list(items)
        self.rate = rate
        self.log = log
        self.stop = threading.Event()
        self.acked_ms: dict[str, int] = {}
        self.uncertain: set[str] = set()  # never acknowledged: may or may not exist
        self.retried: Counter[str] = Counter()
        self.cancel_requested: set[str] = set()
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def _run(self) -> None:
        cancels: list[tuple[float, str]] = []
        next_at = time.monotonic()
        for item in self.items:
            self._wait_until(next_at, cancels)
            if self.stop.is_set():
                return
            self._submit(item)
            if item.cancel_after_s is not None:
                heapq.heappush(cancels, (time.monotonic() + item.cancel_after_s, item.workflow_id))
            # No catch-up burst after a stall: the rate stays bounded.
            next_at = max(next_at + 1 / self.rate, time.monotonic())
        while cancels and not self.stop.is_set():
            self._wait_until(cancels[0][0], cancels)

    def _wait_until(self, due: float, cancels: list[tuple[float, str]]) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            while cancels and cancels[0][0] <= now:
                self._cancel(heapq.heappop(cancels)[1])
            if now >= due:
                return
            until = min(due, cancels[0][0]) if cancels else due
            self.stop.wait(max(0.0, min(until - now, 0.5)))

    def _with_retries(self, what: str, call: Callable[[], object]) -> bool:
        deadline = time.monotonic() + self.RETRY_FOR_S
        while True:
            try:
                call()
                return True
            except FleetError as exc:
                self.log(f"{what} failed ({exc}); retrying")
                if time.monotonic() > deadline or self.stop.is_set():
                    return False
                self.stop.wait(1.0)

    def _submit(self, item: WorkItem) -> None:
        tries = 0

        def submit() -> None:
            nonlocal tries
            tries += 1
            self.client.submit(item.spec, item.workflow_id)

        if self._with_retries(f"submit {item.workflow_id}", submit):
            self.acked_ms[item.workflow_id] = int(time.time() * 1000)
        else:
            self.uncertain.add(item.workflow_id)
        if tries > 1:
            self.retried[item.workflow_id] = tries - 1

    def _cancel(self, workflow_id: str) -> None:
        self.cancel_requested.add(workflow_id)  # even unacked, it may have arrived
        self._with_retries(
            f"cancel {workflow_id}", lambda: self.client.cancel(workflow_id, reason="fault test")
        )


class FaultThread(threading.Thread):
    """Runs the plan and keeps the fleet alive (restarts killed and crashed processes, and
    killed broker nodes)."""

    def __init__(
        self,
        plan: Sequence[PlannedFault],
        processes: Processes,
        broker: Broker,
        injector: GarbageInjector,
        config: FaultConfig,
        log: DriverLog,
    ) -> None:
        super().__init__(name="fault-schedule", daemon=True)
        self.plan = list(plan)
        self.processes = processes
        self.broker = broker
        self.injector = injector
        self.config = config
        self.log = log
        self.rng = random.Random(config.seed ^ 0xFA017)
        self.stop = threading.Event()
        self.faults_off = threading.Event()
        self.plan_done = threading.Event()
        self.records: list[FaultRecord] = []
        self.skipped: list[str] = []
        self.garbage: list[Garbage] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        queue = list(self.plan)
        try:
            while not self.stop.is_set():
                while (
                    queue
                    and not self.faults_off.is_set()
                    and time.monotonic() >= started + queue[0].at_s
                ):
                    self._execute(queue.pop(0).kind)
                if not queue or self.faults_off.is_set():
                    for left in queue:
                        self.skipped.append(f"{left.kind}: not reached before the run ended")
                    queue.clear()
                    self.plan_done.set()
                self.processes.tick()
                self.broker.tick()
                self.stop.wait(0.1)
        except BaseException as exc:
            self.error = exc
            self.log(f"fault thread failed: {type(exc).__name__}: {exc}")
        finally:
            self.plan_done.set()
            with contextlib.suppress(Exception):
                self.processes.resume_all()
                self.processes.tick(restart_now=True)
            try:
                self.broker.restore()  # every node runs again before the read-back
            except Exception as exc:
                self.error = self.error or exc
                self.log(f"broker node restore failed: {type(exc).__name__}: {exc}")

    def _record(
        self, kind: FaultKind, target: str, detail: str = "", at_ms: int | None = None
    ) -> None:
        self.records.append(FaultRecord(kind, target, at_ms or int(time.time() * 1000), detail))

    def _unsupported(self, kind: FaultKind, reason: str | None) -> bool:
        if reason is not None:
            self.skipped.append(f"{kind}: {reason}")
            self.log(f"skipping {kind}: {reason}")
        return reason is not None

    def _execute(self, kind: FaultKind) -> None:
        at_ms = int(time.time() * 1000)
        if kind in (FaultKind.KILL_ORCHESTRATOR, FaultKind.KILL_WORKER):
            role = "orchestrator" if kind is FaultKind.KILL_ORCHESTRATOR else "worker"
            slot = self.processes.choose(role, self.rng)
            if slot is None:
                self.skipped.append(
                    f"{kind}: no live {role} at +{time.monotonic() - self.log.started:.0f}s"
                )
                return
            pid = self.processes.kill(slot, self.rng.uniform(*self.config.restart_delay_s))
            self._record(kind, f"{slot.name} pid {pid}", at_ms=at_ms)
        elif kind is FaultKind.PAUSE_ORCHESTRATOR:
            slot = self.processes.choose("orchestrator", self.rng)
            if slot is None:
                self.skipped.append(f"{kind}: no live orchestrator")
                return
            pid = self.processes.pause(slot, self.config.effective_pause_s)
            self._record(
                kind, f"{slot.name} pid {pid}", f"{self.config.effective_pause_s:.0f} s", at_ms
            )
        elif kind is FaultKind.RESTART_BROKER:
            if self._unsupported(kind, self.broker.restart_unsupported()):
                return
            self.processes.resume_all()  # one fault at a time on the broker's side
            self.log("stopping the broker")
            down = self.broker.restart(self.config.broker_down_s)
            self.log(f"broker back after {down:.1f} s")
            self._record(kind, self.broker.bootstrap, f"down {down:.1f} s", at_ms)
        elif kind is FaultKind.KILL_BROKER_NODE:
            if self._unsupported(kind, self.broker.node_kill_unsupported()):
                return
            node_id = self.rng.randint(1, self.broker.nodes)
            self.broker.kill_node(node_id, self.config.node_down_s)
            target = f"node {node_id} of {self.broker.nodes}"
            self._record(kind, target, f"restart after {self.config.node_down_s:.0f} s", at_ms)
        else:
            round_no = sum(1 for r in self.records if r.kind is FaultKind.GARBAGE)
            landed = self.injector.inject(round_no)
            self.garbage.extend(landed)
            topics = len({g.topic for g in landed})
            self.log(f"injected {len(landed)} garbage records into {topics} topics")
            self._record(kind, f"{topics} topics", f"{len(landed)} records", at_ms)
