"""The live run: broker, topics, fleet, threads, read-back and check, stopped in ``close``."""

from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fleet.codec import Codec
from fleet.errors import DecodeError, FleetError
from fleet.kafka import KafkaClients
from fleet.kafka.client import FleetClient
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.messages import DeadLetter, TaskAssigned, WorkflowEvent
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleetctl.localkafka import LocalKafka
from fleetctl.supervisor import Supervisor
from tests.fault.broker import Broker, write_replicated_topology
from tests.fault.checker import SeenEvent, SeenLetter, check_run
from tests.fault.config import WORKER_APP, FaultConfig
from tests.fault.garbage import GarbageInjector
from tests.fault.log import DriverLog
from tests.fault.market import MarketRun
from tests.fault.plan import plan_faults
from tests.fault.processes import Processes, wait_for_pools
from tests.fault.readback import RawRecord, read_topic
from tests.fault.recovery import recovery_times
from tests.fault.summary import FaultSummary
from tests.fault.threads import FaultThread, Submitter, Watcher
from tests.fault.watchdog import Watchdog
from tests.fault.workload import build_workload


class LiveRun:
    """One run's moving parts, so ``close`` can stop whatever was started."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.run_dir = (config.run_dir or Path(tempfile.mkdtemp(prefix="fleet-faults-"))).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = DriverLog(self.run_dir / "driver.log", config.progress)
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.violations: list[str] = []
        self.local: LocalKafka | None = None
        self.started_broker = False
        self.processes: Processes | None = None
        self.supervisor: Supervisor | None = None
        self.threads: list[Watcher | Submitter | FaultThread] = []
        self.clients: list[FleetClient] = []
        self.watchdog: Watchdog | None = None
        # Issue 4's run: its policy, workload, read-back and checks (None for the others).
        self.market = MarketRun(config, self.run_dir) if config.market else None

    def _lap(self, name: str, since: float) -> None:
        self.timings[name] = time.monotonic() - since

    def execute(self) -> FaultSummary:
        config, log = self.config, self.log
        began = time.monotonic()
        tag = f"{config.seed}-{uuid.uuid4().hex[:6]}"
        log(f"fault run {tag}: {config.workflows} workflows, run dir {self.run_dir}")
        base = Settings.from_env(os.environ).model_copy(
            update={"kafka_run_dir": self.run_dir / "kafka", "topic_prefix": f"fault-{tag}."}
        )
        self.watchdog = Watchdog(base.topic_prefix, base.kafka_run_dir.resolve())
        if self.market is not None:  # every fleet process gets it as FLEET_MARKET_FILE
            base = base.model_copy(update={"market_file": self.market.policy_file})
            log(f"market run: policy {self.market.policy_file}")
        if config.brokers > 1:  # every fleet process gets it as FLEET_TOPOLOGY
            topology_file = write_replicated_topology(
                base.topology_file, self.run_dir, config.brokers
            )
            base = base.model_copy(update={"topology_file": topology_file})
            log(f"{config.brokers} brokers: the fleet's topics are replicated ({topology_file})")
        if base.bootstrap_servers:
            bootstrap = base.bootstrap_servers
            log(f"using the cluster at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)")
        else:
            self.local = LocalKafka(base, nodes=config.brokers)
            self.started_broker = True
            # Fresh: a run dir given again (--run-dir) may keep an earlier run's data.
            bootstrap = self.local.start(timeout_s=120 if config.brokers == 1 else 240, fresh=True)
            self._lap("broker start", began)
            log(f"local broker up on {bootstrap}")
        settings = base.with_bootstrap(bootstrap)
        topics = Topics(settings.topic_prefix)
        clients = KafkaClients(settings, bootstrap, role="fault-driver")
        topology = Topology.load(settings.topology_file)
        apply_topics(
            clients.ready_admin(), topology, desired_topics(topology, topics, topology.capabilities)
        )
        from workers.loading import load_app  # noqa: PLC0415 - only the live run needs the app

        capabilities = load_app(WORKER_APP).capabilities

        up = time.monotonic()
        self.supervisor = Supervisor(settings, self.run_dir / "logs")
        self.processes = Processes(self.supervisor, config, log)
        self.processes.start_all()
        wait_for_pools(settings, capabilities, config.workers, config.startup_s, log)
        control = self._client(settings, "fault-control")
        watcher = Watcher(control)
        self.threads.append(watcher)
        watcher.start()

        can_cancel = callable(getattr(FleetClient, "cancel", None))
        if config.cancellations and not can_cancel:
            self.notes.append("FleetClient.cancel does not exist: no cancellations")
        sub_started = time.monotonic()
        if self.market is not None:
            items = self.market.workload(tag + "-")
        else:
            items = build_workload(
                config.workflows,
                config.seed,
                cancellations=config.cancellations and can_cancel,
                tag=tag + "-",
            )
        submitter = Submitter(
            self._client(settings, "fault-submit"), items, config.submit_rate, log
        )
        self.threads.append(submitter)
        submitter.start()
        deadline = time.monotonic() + config.startup_s
        while not watcher.any_terminal():
            self._check_threads()
            if time.monotonic() > deadline:
                raise FleetError(
                    f"no workflow ended within {config.startup_s:.0f} s of start-up; "
                    f"logs in {self.run_dir}"
                )
            time.sleep(0.2)
        self._lap("fleet up", up)
        log("first workflow ended: the fleet is up; faults begin")

        injector = GarbageInjector(clients, control.codec, topics, capabilities, config.seed)
        broker = Broker(self.local, bootstrap, log)
        window = max(0.0, config.submit_window_s - (time.monotonic() - sub_started))
        plan = plan_faults(config, random.Random(config.seed), window)
        log(f"fault plan ({len(plan)}): " + ", ".join(f"{p.kind}@{p.at_s:.0f}s" for p in plan))
        faults = FaultThread(plan, self.processes, broker, injector, config, log)
        self.threads.append(faults)
        faults.start()

        # Submission, then every terminal event (both bounded), with progress lines.
        submitting = time.monotonic()
        plan_end = (plan[-1].at_s if plan else 0.0) + config.effective_pause_s + 120
        hard_deadline = submitting + config.submit_window_s * 3 + 300 + config.wait_s
        last_line = 0.0
        drain_deadline: float | None = None
        while True:
            self._check_threads()
            now = time.monotonic()
            submitted = list(submitter.acked_ms)
            ended = watcher.ended(submitted)
            if now - last_line >= 10:
                log(
                    f"submitted {len(submitted)}/{len(items)}  ended {ended}  "
                    f"faults {len(faults.records)}/{len(plan)}  "
                    f"restarts {self.processes.restarts}  "
                    f"unexpected exits {len(self.processes.unexpected_exits)}"
                )
                last_line = now
            if submitter.finished_at is not None and drain_deadline is None:
                self._lap("submit", sub_started)
                drain_deadline = now + config.wait_s
            if now - submitting > plan_end:
                faults.faults_off.set()
            done = (
                submitter.finished_at is not None
                and ended == len(submitted)
                and faults.plan_done.is_set()
            )
            if done:
                break
            if (drain_deadline is not None and now > drain_deadline) or now > hard_deadline:
                log(f"deadline: {len(submitted) - ended} workflows have no terminal event")
                break
            time.sleep(0.5)
        faults.faults_off.set()
        submitter.stop.set()
        if submitter.finished_at is not None:
            self._lap("drain", submitter.finished_at)
        log(f"settling {config.settle_s:.0f} s so a late duplicate would show")
        time.sleep(config.settle_s)
        faults.stop.set()
        faults.join(60)
        codes = self.processes.stop_all()
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            self.notes.append(f"processes not exiting 0 on SIGTERM at the end: {unclean}")
        watcher.stop.set()
        watcher.join(10)
        if watcher.consumer.reopens:
            self.notes.append(
                f"the live event reader stopped fetching and was reopened "
                f"{watcher.consumer.reopens} time(s) (librdkafka#5153)"
            )
        log(f"fleet stopped; reading everything back (exit codes {codes})")

        reading = time.monotonic()
        events, letters, tasks = self._read_back(clients, topics, capabilities, control.codec)
        self._lap("read back", reading)
        if self.market is not None:
            back = self.market.read_back(lambda t: self._read(clients, t), topics, control.codec)
            self._lap("read back", reading)
            verdict = self.market.check(
                back,
                events,
                tasks,
                letters,
                faults.garbage,
                uncertain=submitter.uncertain,
                eos_topics=[topics.requests, topics.results],
            )
        else:
            verdict = check_run(
                items,
                events,
                tasks,
                letters,
                faults.garbage,
                cancel_requested=submitter.cancel_requested,
                uncertain=submitter.uncertain,
                eos_topics=[topics.requests, topics.results],
            )
        submitted_items = [
            i
            for i in items
            if i.workflow_id in submitter.acked_ms or i.workflow_id in submitter.uncertain
        ]
        not_submitted = len(items) - len(submitted_items)
        if not_submitted:
            self.violations.append(
                f"{not_submitted} workflows were never submitted (the run was cut short)"
            )
        if submitter.uncertain:
            self.notes.append(
                f"submissions never acknowledged (excluded): {sorted(submitter.uncertain)[:10]}"
            )
        if faults.error is not None:
            self.violations.append(
                f"the fault thread failed: {type(faults.error).__name__}: {faults.error}"
            )
        self._lap("total", began)
        return FaultSummary(
            seed=config.seed,
            brokers=config.brokers,
            workflows=len(submitter.acked_ms),
            shapes=(
                self.market.shapes(i.workflow_id for i in submitted_items)
                if self.market is not None
                else dict(Counter(i.shape.value for i in submitted_items))
            ),
            outcomes=dict(verdict.outcomes),
            cancels_requested=len(submitter.cancel_requested),
            cancelled=verdict.cancelled,
            completed_despite_cancel=verdict.completed_despite_cancel,
            faults=dict(Counter(r.kind.value for r in faults.records)),
            skipped_faults=faults.skipped,
            restarts=self.processes.restarts,
            unexpected_exits=self.processes.unexpected_exits,
            recoveries=recovery_times(faults.records, events, submitter.acked_ms),
            duplicates=len(verdict.duplicates),
            lost=len(verdict.lost),
            wrong_outputs=len(verdict.wrong_output),
            wrong_kinds=len(verdict.wrong_kind),
            tasks_after_terminal=len(verdict.tasks_after_terminal),
            duplicate_dispatches=len(verdict.duplicate_dispatches),
            tasks_dispatched=len(tasks),
            events_read=len(events),
            garbage_injected=verdict.garbage_injected,
            dead_letters=verdict.dead_letters,
            dead_letters_repeated=len(verdict.dead_letters_repeated),
            resubmitted=sum(submitter.retried.values()),
            timings={k: round(v, 1) for k, v in self.timings.items()},
            violations=self.violations + verdict.violations,
            notes=self.notes + verdict.notes,
            run_dir=str(self.run_dir),
        )

    def _client(self, settings: Settings, role: str) -> FleetClient:
        client = FleetClient(settings, role=role)
        self.clients.append(client)
        return client

    def _check_threads(self) -> None:
        for thread in self.threads:
            if thread.error is not None:
                raise FleetError(
                    f"{thread.name} failed: {type(thread.error).__name__}: {thread.error}"
                ) from thread.error

    def _read_back(
        self, clients: KafkaClients, topics: Topics, capabilities: Sequence[str], codec: Codec
    ) -> tuple[list[SeenEvent], list[SeenLetter], list[TaskAssigned]]:
        def read(topic: str) -> list[RawRecord]:
            return self._read(clients, topic)

        events: list[SeenEvent] = []
        for r in read(topics.events):
            try:
                events.append(
                    SeenEvent(r.partition, r.offset, codec.decode(r.value, WorkflowEvent))
                )
            except DecodeError as exc:
                self.violations.append(
                    f"undecodable workflow event p{r.partition}@{r.offset}: {exc}"
                )
        letters = [
            SeenLetter(r.partition, r.offset, codec.decode(r.value, DeadLetter))
            for r in read(topics.dead_letters)
        ]
        tasks: list[TaskAssigned] = []
        for cap in capabilities:
            for r in read(topics.tasks(cap)):
                with contextlib.suppress(DecodeError):  # the injected garbage
                    tasks.append(codec.decode(r.value, TaskAssigned))
        return events, letters, tasks

    def _read(self, clients: KafkaClients, topic: str) -> list[RawRecord]:
        timeout = self.config.read_s
        records, complete = read_topic(clients, topic, timeout)
        if not complete:
            self.violations.append(
                f"could not read {topic} to its end within {timeout:.0f} s (stuck transaction?)"
            )
        return records

    def close(self, *, passed: bool) -> None:
        """Stop threads, processes and the broker this run started, whatever happened."""
        for thread in self.threads:
            thread.stop.set()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(30)
        if self.processes is not None:
            with contextlib.suppress(Exception):
                self.processes.stop_all()
        elif self.supervisor is not None:
            self.supervisor.stop_all()
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        # Every Kafka client must be gone while the broker is still up: destroying a
        # librdkafka handle after the broker stopped can block the process for good.
        self.threads.clear()
        self.clients.clear()
        gc.collect()
        if self.started_broker and self.local is not None:
            with contextlib.suppress(Exception):
                self.local.stop()
            if passed and not self.config.keep_data:
                kafka = self.run_dir / "kafka"  # a cluster keeps node i's in node-i/data
                for data in [kafka / "data", *kafka.glob("node-*/data")]:
                    shutil.rmtree(data, ignore_errors=True)
        if self.watchdog is not None:
            self.watchdog.close()
        self.log.close()
