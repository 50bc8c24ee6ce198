"""The main job: a local broker, an orchestrator, worker pools and a sample workload.

Everything runs as separate processes on the embedded default (the local Apache Kafka
from Maven Central), shows live progress, prints a summary and leaves nothing running.
A burst of GPU renders in two bands contends for the market's ``gpu`` pool alongside the
mix; its market summary (fleetctl.demo_market) is read back from the market topics.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from fleet import usage
from fleet.errors import ConfigError, FleetError
from fleet.kafka import KafkaClients
from fleet.kafka.client import FleetClient
from fleet.kafka.follow import TopicReader
from fleet.kafka.topics import apply_topics, desired_topics
from fleet.messages import EventKind, WorkflowEvent
from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleetctl.console import Column, Table
from fleetctl.demo_market import (
    POOL,
    MarketSummary,
    build_burst,
    format_market_summary,
    read_burst_summary,
)
from fleetctl.demo_progress import Progress
from fleetctl.localkafka import LocalKafka
from fleetctl.supervisor import Supervisor
from orchestrator.market.policy import MarketPolicy
from orchestrator.specfile import load_spec_file

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "scripts" / "workflows"
WORKER_POOLS = 2
CONCURRENCY = 16
WAIT_S = 600.0

HOSTS = ["web-1", "web-2", "web-3", "db-1", "db-2", "cache-1", "queue-1", "api-1"]
ALERTS = [
    "disk full on {hosts}",
    "high cpu load on {hosts}, critical",
    "memory pressure and oom kills on {hosts}",
    "network packet loss between {hosts}",
]
DOCUMENTS = [
    "Invoice {n} from billing@acme.example: {k} items, total {t}. See https://acme.example/inv/{n}.",
    "Purchase order {n} for {k} GPUs at {t} each, contact ops@corp.example.",
    "Refund request {n}: {k} licences returned, credit {t} to https://pay.example/r/{n}.",
]
UNSCORABLE = "Please review the attached contract before Friday. Thanks!"
# Every 20th workflow fails on purpose, to show a failure explained with its cause.
INTENDED_FAILURE = (
    "every 20th workflow reviews a document without figures, so its score step has no "
    "number to score and fails with the cause"
)
SENTENCES = ["the quick brown fox", "agents coordinate through kafka topics", "one two three"]


@dataclass
class DemoWorkflow:
    kind: str
    spec: dict[str, Any]
    expect: JsonValue | None = None  # a known output fragment, checked after the run
    expect_failure: bool = False
    band: str | None = None  # the market band of a contended render


@dataclass
class DemoRun:
    workload: dict[str, DemoWorkflow]  # by workflow id
    outcomes: dict[str, WorkflowEvent]  # terminal events, by workflow id
    market: MarketSummary | None  # None: the run ended before every workflow did

    @property
    def exit_code(self) -> int:
        complete = len(self.outcomes) == len(self.workload)
        return 0 if complete and self.market is not None and not self.market.problems() else 1


def _template(name: str) -> dict[str, Any]:
    path = WORKFLOWS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"demo workflow {path} is missing; run the demo from a checkout")
    doc = load_spec_file(path)
    assert isinstance(doc, dict)
    return doc


def _with_latency(spec: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Simulated agent latency: every step input gets a delay_ms the agents honour."""
    for step in spec["steps"]:
        step["input"] = {**step.get("input", {}), "delay_ms": rng.randint(10, 120)}
    return spec


def build_workload(count: int, seed: int = 7) -> list[DemoWorkflow]:
    """A deterministic mix: fan-out/fan-in, sequences (a few failing), retried steps."""
    rng = random.Random(seed)  # noqa: S311 - a repeatable workload, not a secret
    incident, document, flaky = (
        _template("incident-response"),
        _template("document-review"),
        _template("flaky-retry"),
    )
    workload = []
    for i in range(count):
        roll = i % 20
        if roll < 8:
            hosts = rng.sample(HOSTS, rng.randint(1, 5))
            spec = json.loads(json.dumps(incident))
            spec["input"] = {"alert": rng.choice(ALERTS).format(hosts=", ".join(hosts))}
            workload.append(DemoWorkflow("incident-response", spec, {"count": len(hosts)}))
        elif roll < 15:
            spec = json.loads(json.dumps(document))
            if roll == 14:
                spec["input"] = {"text": UNSCORABLE}
                workload.append(DemoWorkflow("document-review", spec, expect_failure=True))
                continue
            n, k, t = rng.randint(1000, 9999), rng.randint(1, 9), round(rng.uniform(5, 900), 2)
            spec["input"] = {"text": rng.choice(DOCUMENTS).format(n=n, k=k, t=t)}
            workload.append(DemoWorkflow("document-review", spec, {"numbers": [n, k, t]}))
        else:
            text = rng.choice(SENTENCES)
            spec = json.loads(json.dumps(flaky))
            spec["input"] = {"text": text}
            workload.append(DemoWorkflow("flaky-retry", spec, {"words": len(text.split())}))
    for item in workload:
        _with_latency(item.spec, rng)
    return workload


def output_matches(item: DemoWorkflow, event: WorkflowEvent) -> bool:
    if item.expect_failure:
        return event.kind is EventKind.FAILED
    if event.kind is not EventKind.COMPLETED or not isinstance(event.output, dict):
        return False
    if item.kind == "render":  # the market summary checks the slots; here, the shape
        return {"units", "token", "unit_price", "held_ms"} <= event.output.keys()
    # document-review nests the extracted figures; the others return them at the top.
    found = event.output.get("figures") if item.kind == "document-review" else event.output
    assert isinstance(item.expect, dict)
    return isinstance(found, dict) and all(found.get(k) == v for k, v in item.expect.items())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


SUMMARY = [
    Column("workflow", style="bold"),
    Column("runs", right=True),
    Column("completed", right=True, style="green"),
    Column("failed", right=True, style="red"),
    Column("intended", right=True),  # of the failed: failures the demo planned
    Column("p50 ms", right=True),
    Column("p99 ms", right=True),
]


def print_summary(
    workload: dict[str, DemoWorkflow], outcomes: dict[str, WorkflowEvent], elapsed_s: float
) -> None:
    rows: dict[str, list[tuple[WorkflowEvent, DemoWorkflow]]] = {}
    for workflow_id, item in workload.items():
        if workflow_id in outcomes:
            rows.setdefault(item.kind, []).append((outcomes[workflow_id], item))
    print()
    table = Table(SUMMARY)
    every = [row for ended in rows.values() for row in ended]
    for kind, ended in [*sorted(rows.items()), ("total", every)]:
        latencies = [float(e.at_ms - (e.submitted_at_ms or e.at_ms)) for e, _ in ended]
        kinds = Counter(e.kind.value for e, _ in ended)
        intended = sum(e.kind is EventKind.FAILED and w.expect_failure for e, w in ended)
        table.add(
            kind,
            str(len(ended)),
            str(kinds["COMPLETED"]),
            str(kinds["FAILED"] + kinds["REJECTED"]),
            str(intended),
            f"{statistics.median(latencies) if latencies else 0:.0f}",
            f"{_percentile(latencies, 0.99):.0f}",
        )
    table.print()
    correct = sum(output_matches(workload[w], e) for w, e in outcomes.items())
    print(
        f"\nthroughput {len(outcomes) / elapsed_s:.1f} workflows/s over {elapsed_s:.1f} s; "
        f"outputs checked against expectations: {correct}/{len(outcomes)} correct"
    )
    billed = usage.merge(*(e.usage for e in outcomes.values()))
    if billed:  # what the handlers reported (the example summarize bills its calls)
        print(f"usage reported by the agents: {usage.describe(billed)}")
    _print_failures(workload, outcomes)
    sample = next(
        (
            (w, e)
            for w, e in outcomes.items()
            if workload[w].kind == "incident-response" and e.kind is EventKind.COMPLETED
        ),
        None,
    )
    if sample is not None:
        print(f"\nsample result ({sample[0]}, incident-response):")
        print(json.dumps(sample[1].output, indent=2))


def _print_failures(workload: dict[str, DemoWorkflow], outcomes: dict[str, WorkflowEvent]) -> None:
    """Failure causes, the demo's planned ones apart from any other."""
    planned: Counter[str] = Counter()
    unplanned: Counter[str] = Counter()
    for workflow_id, event in outcomes.items():
        if event.kind is EventKind.FAILED and event.error is not None:
            failures = planned if workload[workflow_id].expect_failure else unplanned
            failures[event.error.type] += 1
    if planned:
        causes = ", ".join(f"{n} x {t}" for t, n in planned.items())
        print(f"intended failures: {causes} ({INTENDED_FAILURE})")
    if unplanned:
        causes = ", ".join(f"{n} x {t}" for t, n in unplanned.items())
        print(f"unexpected failures: {causes} (see `fleet tail --workflow ID` for one)")


def run_demo(settings: Settings, workflows: int = 240, keep_broker: bool = False) -> int:
    local = LocalKafka(settings)
    started_broker = False
    if not settings.bootstrap_servers:
        if local.status() is None and not keep_broker:
            # Not started on the user's development broker and its data: a throw-away one
            # of the demo's own, wiped as it starts (--keep-broker: the development one).
            local = LocalKafka.throwaway(settings, "demo")
        started_broker = local.status() is None
        print("starting the local Apache Kafka broker (first run fetches it)...", file=sys.stderr)
        settings = settings.with_bootstrap(local.start())
    # A fresh topic namespace per run: no leftovers from an earlier demo are counted.
    settings = settings.model_copy(update={"topic_prefix": f"demo-{uuid.uuid4().hex[:6]}."})
    log_dir = settings.kafka_run_dir.parent / "demo-logs" / settings.topic_prefix.rstrip(".")
    try:
        return run_workload(settings, workflows, log_dir).exit_code
    finally:
        if started_broker and not keep_broker:
            # Every client of the run is closed by now. One that outlived its owner in a
            # reference cycle would be destroyed at the next garbage collection, and at
            # the interpreter's exit, after the broker stopped, librdkafka's destroy hangs
            # (rdk:main joining an rdk:broker thread that never ends: the demo hung for
            # minutes when fleet.kafka.clients kept its probed admin client in such a
            # cycle). Collected now, any such client goes while the broker answers.
            gc.collect()
            print("stopping the local broker", file=sys.stderr)
            local.stop()


def run_workload(settings: Settings, count: int, log_dir: Path) -> DemoRun:
    """Apply the topics, start the fleet, run ``count`` mixed workflows plus the contended
    burst, print the summaries and return what happened (the fleet is stopped after).

    Every Kafka client it opens is closed before it returns, on errors too."""
    assert settings.bootstrap_servers
    # Before anything starts: a market file the burst cannot run under stops the demo here.
    policy = MarketPolicy.load(settings.market_file)
    burst = build_burst(_template("gpu-render"), policy, settings.market_file)
    topology = Topology.load(settings.topology_file)
    _apply_topics(settings, settings.bootstrap_servers, topology)
    print(f"broker {settings.bootstrap_servers}; process logs in {log_dir}", file=sys.stderr)
    with Supervisor(settings, log_dir) as supervisor:
        supervisor.start("orchestrator", ["orchestrator"])
        for n in range(1, WORKER_POOLS + 1):
            supervisor.start(
                f"worker-{n}",
                ["worker", "--app", "workers.examples:app", "--concurrency", str(CONCURRENCY)],
            )
        with closing(FleetClient(settings, role="demo")) as client:
            print(f"waiting for {WORKER_POOLS} worker pools to join their groups", file=sys.stderr)
            client.wait_for_pools(topology.capabilities, WORKER_POOLS, timeout_s=60)
            with closing(client.event_consumer(from_beginning=False)) as consumer:
                # The burst goes first, its low band first of all: arrival order favours the
                # low band, so a lower wait for the high band is the market's doing.
                mix = build_workload(count)
                total = len(burst) + len(mix)
                bands = Counter(c.band for c in burst)
                print(
                    f"submitting {total} workflows "
                    f"({', '.join(sorted({'render', *(w.kind for w in mix)}))}) "
                    f"to {WORKER_POOLS} worker pools x {CONCURRENCY} concurrency; "
                    f"{len(burst)} renders ({', '.join(f'{n} {b}' for b, n in bands.items())}) "
                    f"contend for the {POOL} pool's {policy.pools[POOL].capacity} slots",
                    file=sys.stderr,
                )
                started = time.monotonic()
                contenders = {client.submit(c.spec, flush=False): c for c in burst}
                by_id = {
                    w: DemoWorkflow("render", c.spec, band=c.band) for w, c in contenders.items()
                }
                by_id |= {client.submit(item.spec, flush=False): item for item in mix}
                client.flush()
                outcomes = _outcomes(client, consumer, by_id, supervisor)
                elapsed = time.monotonic() - started
            print_summary(by_id, outcomes, elapsed)
            missing = total - len(outcomes)
            market = None
            if missing:
                print(
                    f"\n{missing} workflows had no outcome within {WAIT_S:.0f} s", file=sys.stderr
                )
            else:
                market = read_burst_summary(client, contenders, outcomes, policy)
                print("\n" + "\n".join(format_market_summary(market)))
        return DemoRun(by_id, outcomes, market)


def _apply_topics(settings: Settings, bootstrap: str, topology: Topology) -> None:
    # Its own function: the admin client goes when it returns, before the fleet starts.
    admin = KafkaClients(settings, bootstrap, role="demo").ready_admin()
    apply_topics(
        admin,
        topology,
        desired_topics(topology, Topics(settings.topic_prefix), topology.capabilities),
    )


def _outcomes(
    client: FleetClient,
    consumer: TopicReader,
    by_id: dict[str, DemoWorkflow],
    supervisor: Supervisor,
) -> dict[str, WorkflowEvent]:
    """The terminal events of ``by_id``'s workflows, with live progress, until all have
    ended or WAIT_S passed; a FleetError if a fleet process exits meanwhile."""
    total = len(by_id)
    outcomes: dict[str, WorkflowEvent] = {}
    with Progress(total) as progress:

        def check_children() -> None:
            progress.update()
            for child in supervisor.dead():
                raise FleetError(
                    f"{child.name} exited ({child.process.returncode}):\n{child.log_tail()}"
                )

        for event in client.events(
            consumer,
            until=lambda _e: len(outcomes) == total,
            timeout_s=WAIT_S,
            on_idle=check_children,
        ):
            if event.kind.terminal and event.workflow_id in by_id:
                outcomes[event.workflow_id] = event
                progress.ended(
                    event.kind.value, intended_failure=by_id[event.workflow_id].expect_failure
                )
    return outcomes
