"""The fault driver: a real fleet under kill -9, SIGSTOP, a broker restart and garbage.

It starts its own broker (``fleet.localkafka``, or uses ``KAFKA_BOOTSTRAP_SERVERS``), a
unique topic namespace, N orchestrators and M worker processes, submits a seeded mix of
workflows at a bounded rate while a seeded fault schedule runs, then reads every workflow
event, task and dead letter back from the beginning (read_committed) and checks DESIGN §4
invariants 1 and 2 against expectations computed here, in plain Python, from the inputs:

* every submitted workflow has exactly one terminal event (duplicates: 0, lost: 0);
* its kind is the expected one and a COMPLETED output equals the expected output;
* no task is dispatched after its workflow's terminal event, and no (task, attempt) twice;
* the dead letters are exactly the injected garbage.

Everything is bounded by deadlines and every process and broker it started is stopped in
``finally``. Library: :func:`run_faults` returns a :class:`FaultSummary`. CLI::

    python -m tests.fault.driver [--preset soak|short] [--workflows N] [--seed S] [--runs K]

Sections: configuration, workload (shapes and their expected outcomes), garbage, fault
plan, the checker (pure), recovery times (pure), processes, the live run, the summary.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import heapq
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from pydantic import JsonValue

from fleet.client import FleetClient
from fleet.codec import Codec
from fleet.errors import DecodeError, FleetError
from fleet.kafka import KafkaClients, watermarks
from fleet.localkafka import LocalKafka
from fleet.messages import (
    DeadLetter,
    EventKind,
    Message,
    TaskAssigned,
    TaskResult,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowEvent,
    WorkflowSubmitted,
)
from fleet.settings import Settings
from fleet.supervisor import Child, Supervisor
from fleet.topology import Topics, Topology, apply_topics, desired_topics

WORKER_APP = "workers.examples:app"
PRODUCT_SESSION_TIMEOUT_MS = 45_000  # librdkafka's default session.timeout.ms

# =====================================================================================
# Configuration
# =====================================================================================


@dataclass(frozen=True)
class FaultConfig:
    """One run. The presets are :meth:`soak` (issue 3's full run) and :meth:`short` (CI)."""

    workflows: int = 1000
    seed: int = 1
    orchestrators: int = 3
    workers: int = 3
    concurrency: int = 8
    submit_rate: float = 8.0  # workflows per second: submission is spread over the run
    orchestrator_kills: int = 10
    worker_kills: int = 10
    pauses: int = 1  # SIGSTOP an orchestrator past its session timeout, then SIGCONT
    broker_restarts: int = 1
    garbage_rounds: int = 3  # each round: every garbage kind into every consumed topic
    cancellations: bool = True  # one workflow in 20 is cancelled (if the client can)
    fault_gap_s: float = 2.0  # faults never come closer than this
    restart_delay_s: tuple[float, float] = (0.0, 2.0)  # kill -9, then restart after this
    # The product passes any FLEET_KAFKA_CLIENT_* variable to librdkafka, so the session
    # timeout can be lowered; None keeps the product default (45 s) and pauses 50 s.
    session_timeout_ms: int | None = 6000
    pause_s: float | None = None  # default: past the session timeout with a margin
    broker_down_s: float = 2.0
    startup_s: float = 180.0  # broker, processes and the first workflow end to end
    wait_s: float = 600.0  # after the last submission, for every terminal event
    settle_s: float = 5.0  # then this long more, so a late duplicate would show
    read_s: float = 180.0  # reading topics back (an open transaction holds read_committed)
    run_dir: Path | None = None  # default: a new temporary dir (kept: logs are evidence)
    keep_data: bool = False  # keep the broker's data dir after a passing run
    extra_env: tuple[tuple[str, str], ...] = ()  # more env for every fleet process
    progress: TextIO | None = None  # live progress lines (default: stderr)

    @classmethod
    def soak(cls, **overrides: Any) -> FaultConfig:
        return cls(**overrides)

    @classmethod
    def short(cls, **overrides: Any) -> FaultConfig:
        values: dict[str, Any] = {
            "workflows": 200,
            "submit_rate": 6.0,
            "orchestrator_kills": 3,
            "worker_kills": 3,
            "pauses": 1,
            "broker_restarts": 1,
            "garbage_rounds": 1,
            "wait_s": 150.0,
            "settle_s": 3.0,
            "read_s": 90.0,
            "startup_s": 120.0,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def effective_pause_s(self) -> float:
        if self.pause_s is not None:
            return self.pause_s
        if self.session_timeout_ms is None:
            return 50.0
        return self.session_timeout_ms / 1000 * 1.5 + 3.0

    @property
    def submit_window_s(self) -> float:
        return self.workflows / self.submit_rate


# =====================================================================================
# Workload: shapes, each with its expected outcome computed here by construction
# =====================================================================================


class Shape(StrEnum):
    LINEAR = "linear"
    DIAMOND = "diamond"
    FAN_OUT = "fan-out"
    RETRIED = "retried"
    PERMANENT = "permanent-failure"
    FAN_OUT_FAIL = "fan-out-failure"
    EXHAUSTED = "retries-exhausted"
    REJECTED = "rejected"
    CANCEL = "cancel"


# One cycle of 20 submissions; CANCEL becomes LINEAR when cancellation is off.
MIX: tuple[Shape, ...] = (
    *[Shape.LINEAR] * 5,
    *[Shape.DIAMOND] * 3,
    *[Shape.FAN_OUT] * 4,
    *[Shape.RETRIED] * 2,
    *[Shape.PERMANENT] * 2,
    Shape.FAN_OUT_FAIL,
    Shape.EXHAUSTED,
    Shape.REJECTED,
    Shape.CANCEL,
)
MAX_FAN_OUT = 50
WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "gale", "heron", "iris", "jade")

Spec = dict[str, JsonValue]


@dataclass(frozen=True)
class Expected:
    """The terminal outcome a workflow must have: a kind (one of ``kinds``) and, for
    COMPLETED, exactly ``output``; for FAILED, the failing step and error type."""

    kinds: frozenset[EventKind]
    output: JsonValue = None
    error_step: str | None = None
    error_type: str | None = None
    error_contains: str | None = None


def completed(output: JsonValue) -> Expected:
    return Expected(frozenset({EventKind.COMPLETED}), output=output)


def failed(step: str, error_type: str) -> Expected:
    return Expected(frozenset({EventKind.FAILED}), error_step=step, error_type=error_type)


@dataclass(frozen=True)
class WorkItem:
    workflow_id: str
    shape: Shape
    spec: Spec
    expected: Expected
    cancel_after_s: float | None = None  # cancel this long after the submission is acked


def _noop(step_id: str, payload: JsonValue, needs: Sequence[str] = (), **extra: JsonValue) -> Spec:
    step: Spec = {"id": step_id, "capability": "noop", "input": payload, "needs": list(needs)}
    step.update(extra)
    return step


def linear(x: JsonValue, delays: Sequence[int]) -> tuple[Spec, Expected]:
    """s0 -> s1 -> ... : each step wraps its predecessor's output (noop echoes its input)."""
    steps: list[JsonValue] = [_noop("s0", {"x": "$.input.x", "n": 0, "delay_ms": delays[0]})]
    out: JsonValue = {"x": x, "n": 0, "delay_ms": delays[0]}
    for i in range(1, len(delays)):
        payload: JsonValue = {"prev": f"$.steps.s{i - 1}.output", "n": i, "delay_ms": delays[i]}
        steps.append(_noop(f"s{i}", payload, [f"s{i - 1}"]))
        out = {"prev": out, "n": i, "delay_ms": delays[i]}
    last = f"s{len(delays) - 1}"
    spec: Spec = {
        "name": "fault-linear",
        "input": {"x": x},
        "steps": steps,
        "output": {"last": f"$.steps.{last}.output", "x": "$.input.x"},
    }
    return spec, completed({"last": out, "x": x})


def diamond(root: JsonValue, delays: Sequence[int]) -> tuple[Spec, Expected]:
    """a -> (b, c) -> d: d joins both branches."""
    da, db, dc, dd = delays
    spec: Spec = {
        "name": "fault-diamond",
        "input": {"root": root},
        "steps": [
            _noop("a", {"root": "$.input.root", "delay_ms": da}),
            _noop("b", {"left": "$.steps.a.output.root", "delay_ms": db}, ["a"]),
            _noop("c", {"right": "$.steps.a.output", "delay_ms": dc}, ["a"]),
            _noop(
                "d",
                {"b": "$.steps.b.output", "c": "$.steps.c.output.right.root", "delay_ms": dd},
                ["b", "c"],
            ),
        ],
        "output": {"joined": "$.steps.d.output", "first": "$.steps.a.output.root"},
    }
    b: JsonValue = {"left": root, "delay_ms": db}
    d: JsonValue = {"b": b, "c": root, "delay_ms": dd}
    return spec, completed({"joined": d, "first": root})


def fan_out(words: Sequence[str], delays: Sequence[int]) -> tuple[Spec, Expected]:
    """source -> each (one task per element) -> sink: fan-in in element order."""
    items: list[JsonValue] = [
        {"i": i, "w": w, "d": d} for i, (w, d) in enumerate(zip(words, delays, strict=True))
    ]
    spec: Spec = {
        "name": "fault-fan-out",
        "steps": [
            _noop("source", {"items": items, "delay_ms": 5}),
            _noop(
                "each",
                {"i": "$.item.i", "w": "$.item.w", "pos": "$.index", "delay_ms": "$.item.d"},
                ["source"],
                for_each="$.steps.source.output.items",
            ),
            _noop("sink", {"all": "$.steps.each.output", "n": len(items), "delay_ms": 5}, ["each"]),
        ],
        "output": {"all": "$.steps.sink.output.all", "n": "$.steps.sink.output.n"},
    }
    expected: list[JsonValue] = [
        {"i": i, "w": w, "pos": i, "delay_ms": d}
        for i, (w, d) in enumerate(zip(words, delays, strict=True))
    ]
    return spec, completed({"all": expected, "n": len(items)})


def fan_out_failure(size: int, failing: int, delays: Sequence[int]) -> tuple[Spec, Expected]:
    """One element of a fan-out fails permanently: the workflow fails at that step."""
    items: list[JsonValue] = [
        {"i": i, "f": "permanent" if i == failing else "no", "d": d}
        for i, d in enumerate(delays[:size])
    ]
    spec: Spec = {
        "name": "fault-fan-out-failure",
        "steps": [
            _noop("source", {"items": items}),
            _noop(
                "each",
                {"i": "$.item.i", "fail": "$.item.f", "delay_ms": "$.item.d"},
                ["source"],
                for_each="$.steps.source.output.items",
            ),
            _noop("sink", {"all": "$.steps.each.output"}, ["each"]),
        ],
        "output": "$.steps.sink.output",
    }
    return spec, failed("each", "PermanentError")


def retried(tag: str, delay_ms: int) -> tuple[Spec, Expected]:
    """text.flaky fails its first attempt retryably; retries: 2 lets it succeed."""
    spec: Spec = {
        "name": "fault-retried",
        "steps": [
            {"id": "f", "capability": "text.flaky", "input": {"delay_ms": delay_ms}, "retries": 2},
            _noop("g", {"ok": "$.steps.f.output.ok", "tag": tag}, ["f"]),
        ],
        "output": "$.steps.g.output",
    }
    return spec, completed({"ok": True, "tag": tag})


def permanent_failure(length: int, failing: int, retries: int) -> tuple[Spec, Expected]:
    """A chain whose step ``failing`` raises PermanentError: no retry despite ``retries``."""
    steps: list[JsonValue] = []
    for i in range(length):
        payload: Spec = {"n": i, "delay_ms": 10}
        if i == failing:
            payload["fail"] = "permanent"
        needs = [f"s{i - 1}"] if i else []
        steps.append(_noop(f"s{i}", payload, needs, retries=retries if i == failing else 0))
    spec: Spec = {"name": "fault-permanent", "steps": steps}
    return spec, failed(f"s{failing}", "PermanentError")


def retries_exhausted(delay_ms: int) -> tuple[Spec, Expected]:
    """text.flaky without retries: its one attempt fails, so does the workflow."""
    spec: Spec = {
        "name": "fault-exhausted",
        "steps": [{"id": "f", "capability": "text.flaky", "input": {"delay_ms": delay_ms}}],
    }
    return spec, failed("f", "RetryableError")


def rejected() -> tuple[Spec, Expected]:
    """A cycle: the orchestrator must reject it without dispatching anything."""
    spec: Spec = {"name": "fault-rejected", "steps": [_noop("a", {}, ["b"]), _noop("b", {}, ["a"])]}
    return spec, Expected(frozenset({EventKind.REJECTED}), error_contains="cycle")


def cancellable(delays: Sequence[int]) -> tuple[Spec, Expected]:
    """A slow chain that gets cancelled while it runs, or completes first: either, once."""
    spec, done = linear("slow", delays)
    spec["name"] = "fault-cancel"
    kinds = frozenset({EventKind.CANCELLED, EventKind.COMPLETED})
    return spec, Expected(kinds, output=done.output)


def _json_value(rng: random.Random) -> JsonValue:
    roll = rng.randrange(5)
    if roll == 0:
        return rng.randint(-10_000, 10_000)
    if roll == 1:
        return rng.choice(WORDS)
    if roll == 2:
        return [rng.randint(0, 99) for _ in range(rng.randint(0, 4))]
    if roll == 3:
        return {"word": rng.choice(WORDS), "flag": rng.random() < 0.5, "none": None}
    return rng.random() < 0.5


def build_workload(
    count: int, seed: int, *, cancellations: bool = True, tag: str = ""
) -> list[WorkItem]:
    """A deterministic mix of ``count`` workflows; ids are readable in evidence."""
    rng = random.Random(seed)
    items: list[WorkItem] = []
    fan_outs = 0
    for i in range(count):
        shape = MIX[i % len(MIX)]
        if shape is Shape.CANCEL and not cancellations:
            shape = Shape.LINEAR
        cancel_after: float | None = None
        if shape is Shape.LINEAR:
            spec, expected = linear(
                _json_value(rng), [rng.randint(10, 150) for _ in range(rng.randint(1, 6))]
            )
        elif shape is Shape.DIAMOND:
            spec, expected = diamond(_json_value(rng), [rng.randint(10, 150) for _ in range(4)])
        elif shape is Shape.FAN_OUT:
            # The first fan-out is the widest allowed; the rest are spread up to it.
            size = MAX_FAN_OUT if fan_outs == 0 else rng.randint(0, MAX_FAN_OUT)
            fan_outs += 1
            words = [rng.choice(WORDS) for _ in range(size)]
            spec, expected = fan_out(words, [rng.randint(5, 80) for _ in range(size)])
        elif shape is Shape.FAN_OUT_FAIL:
            size = rng.randint(2, 20)
            spec, expected = fan_out_failure(
                size, rng.randrange(size), [rng.randint(5, 80) for _ in range(size)]
            )
        elif shape is Shape.RETRIED:
            spec, expected = retried(f"t{i}", rng.randint(10, 100))
        elif shape is Shape.PERMANENT:
            length = rng.randint(1, 4)
            spec, expected = permanent_failure(length, rng.randrange(length), rng.randint(0, 3))
        elif shape is Shape.EXHAUSTED:
            spec, expected = retries_exhausted(rng.randint(10, 100))
        elif shape is Shape.REJECTED:
            spec, expected = rejected()
        else:
            spec, expected = cancellable([rng.randint(1000, 2000) for _ in range(3)])
            cancel_after = round(rng.uniform(0.2, 6.0), 2)
        workflow_id = f"fault-{tag}{i:05d}-{shape.value}"
        items.append(WorkItem(workflow_id, shape, spec, expected, cancel_after))
    return items


# =====================================================================================
# Garbage: records no consumer can decode, one of each kind per consumed topic
# =====================================================================================


class GarbageKind(StrEnum):
    RANDOM = "random-bytes"
    UNKNOWN_SCHEMA = "unknown-fingerprint"
    WRONG_SCHEMA = "wrong-schema"
    TRUNCATED = "truncated-avro"


@dataclass(frozen=True)
class Garbage:
    topic: str
    kind: GarbageKind
    key: bytes
    value: bytes
    partition: int | None = None  # where it landed, from the delivery report
    offset: int | None = None


# What each consumer accepts, so garbage is built (and proven) undecodable for it.
ACCEPTS: dict[str, tuple[type[Message], ...]] = {
    "requests": (WorkflowSubmitted, WorkflowCancelRequested),
    "results": (TaskResult,),
    "tasks": (TaskAssigned,),
}


def _valid_record(role: str, serial: str, capability: str) -> Message:
    """A well-formed record of the type ``role`` accepts (to be truncated)."""
    if role == "requests":
        spec: JsonValue = {"name": serial, "steps": [{"id": "a", "capability": "noop"}]}
        return WorkflowSubmitted(workflow_id=f"garbage-{serial}", spec=spec, submitted_at_ms=1)
    if role == "results":
        return _garbage_result(serial)
    return TaskAssigned(
        task_id=f"garbage-{serial}/a/0",
        workflow_id=f"garbage-{serial}",
        step_id="a",
        capability=capability,
        attempt=1,
        input={"serial": serial},
        dispatched_at_ms=1,
    )


def _garbage_result(serial: str) -> TaskResult:
    return TaskResult(
        task_id=f"garbage-{serial}/a/0",
        workflow_id=f"garbage-{serial}",
        step_id="a",
        capability="noop",
        attempt=1,
        status=TaskStatus.SUCCEEDED,
        output={"serial": serial},
        duration_ms=1,
        worker_id="fault-driver",
        finished_at_ms=1,
    )


def _wrong_record(role: str, serial: str) -> Message:
    """A valid record of a type ``role`` does NOT accept."""
    if role == "results":
        return WorkflowSubmitted(workflow_id=f"garbage-{serial}", spec={}, submitted_at_ms=1)
    return _garbage_result(serial)


def garbage_value(
    codec: Codec,
    role: str,
    kind: GarbageKind,
    rng: random.Random,
    serial: str,
    capability: str = "noop",
) -> bytes:
    """One undecodable value for a consumer of ``role`` (requests, results or tasks)."""
    accepts = ACCEPTS[role]
    for _ in range(50):
        if kind is GarbageKind.RANDOM:
            value = rng.randbytes(rng.randint(1, 64)) + serial.encode()
        elif kind is GarbageKind.UNKNOWN_SCHEMA:
            value = b"\xc3\x01" + rng.randbytes(8) + serial.encode()
        elif kind is GarbageKind.WRONG_SCHEMA:
            value = codec.encode(_wrong_record(role, serial))
        else:
            whole = codec.encode(_valid_record(role, serial, capability))
            # Cut after the serial (so values stay unique) and before the end.
            keep_from = whole.index(serial.encode()) + len(serial)
            value = whole[: rng.randint(keep_from, len(whole) - 1)]
        if not _decodes(codec, value, accepts):
            return value
    raise AssertionError(f"could not make {kind} garbage for {role}")  # never: 50 draws


def _decodes(codec: Codec, value: bytes, accepts: tuple[type[Message], ...]) -> bool:
    try:
        codec.decode_any(value, accepts)  # type: ignore[arg-type]
    except DecodeError:
        return False
    return True


def garbage_round(
    codec: Codec, topics: Topics, capabilities: Sequence[str], rng: random.Random, round_no: int
) -> list[Garbage]:
    """Every garbage kind for every consumed topic: requests, results, each task topic."""
    targets = [(topics.requests, "requests", "noop"), (topics.results, "results", "noop")]
    targets += [(topics.tasks(cap), "tasks", cap) for cap in capabilities]
    batch = []
    for topic, role, capability in targets:
        for kind in GarbageKind:
            serial = f"r{round_no}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
            value = garbage_value(codec, role, kind, rng, serial, capability)
            batch.append(Garbage(topic, kind, f"garbage-{serial}".encode(), value))
    return batch


# =====================================================================================
# Fault plan: seeded, bounded, spread over the submission window
# =====================================================================================


class FaultKind(StrEnum):
    KILL_ORCHESTRATOR = "kill -9 orchestrator"
    KILL_WORKER = "kill -9 worker"
    PAUSE_ORCHESTRATOR = "SIGSTOP orchestrator"
    RESTART_BROKER = "restart broker"
    GARBAGE = "inject garbage"


@dataclass(frozen=True)
class PlannedFault:
    at_s: float  # after the fleet is up and the first workflow went through
    kind: FaultKind


def plan_faults(config: FaultConfig, rng: random.Random, window_s: float) -> list[PlannedFault]:
    """The schedule: kinds in seeded order at evenly spread, jittered times in the window.

    The broker restart sits near the middle (work in flight on both sides of it).
    """
    kinds = (
        [FaultKind.KILL_ORCHESTRATOR] * config.orchestrator_kills
        + [FaultKind.KILL_WORKER] * config.worker_kills
        + [FaultKind.PAUSE_ORCHESTRATOR] * config.pauses
        + [FaultKind.GARBAGE] * config.garbage_rounds
    )
    rng.shuffle(kinds)
    for _ in range(config.broker_restarts):
        kinds.insert(len(kinds) // 2, FaultKind.RESTART_BROKER)
    if not kinds:
        return []
    # Even slots with jitter, never closer than fault_gap_s; a short window stretches.
    step = max(config.fault_gap_s, window_s / (len(kinds) + 1))
    plan, at = [], 0.0
    for n, kind in enumerate(kinds):
        slot = step * (n + 1)
        at = max(at + config.fault_gap_s, slot + rng.uniform(-0.3, 0.3) * step)
        plan.append(PlannedFault(round(at, 2), kind))
    return plan


# =====================================================================================
# The checker: pure, over what was read back from the topics
# =====================================================================================


@dataclass(frozen=True)
class SeenEvent:
    partition: int
    offset: int
    event: WorkflowEvent


@dataclass(frozen=True)
class SeenLetter:
    partition: int
    offset: int
    letter: DeadLetter


def canonical(value: JsonValue) -> str:
    """JSON text that tells True from 1 and ignores key order: the output comparison."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _short(value: JsonValue, limit: int = 300) -> str:
    text = canonical(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(seen: SeenEvent) -> str:
    e = seen.event
    error = f" error={e.error.type}@{e.error.step_id}" if e.error else ""
    return f"{e.kind.value} at_ms={e.at_ms} (events p{seen.partition}@{seen.offset}){error}"


@dataclass
class Verdict:
    """What the checker found. ``violations`` break an invariant; ``notes`` do not."""

    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    duplicates: dict[str, list[SeenEvent]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    wrong_kind: list[str] = field(default_factory=list)
    wrong_output: list[str] = field(default_factory=list)
    unknown_workflows: list[str] = field(default_factory=list)
    tasks_after_terminal: list[str] = field(default_factory=list)
    duplicate_dispatches: list[str] = field(default_factory=list)
    duplicate_step_events: int = 0
    cancelled: int = 0
    completed_despite_cancel: int = 0
    garbage_injected: int = 0
    dead_letters: int = 0
    dead_letters_missing: list[str] = field(default_factory=list)
    dead_letters_unexpected: list[str] = field(default_factory=list)
    dead_letters_repeated: list[str] = field(default_factory=list)


def check_run(
    items: Sequence[WorkItem],
    events: Iterable[SeenEvent],
    tasks: Iterable[TaskAssigned],
    letters: Iterable[SeenLetter],
    garbage: Sequence[Garbage],
    *,
    cancel_requested: Iterable[str] = (),
    uncertain: Iterable[str] = (),
    eos_topics: Iterable[str] = (),
    max_listed: int = 20,
) -> Verdict:
    """Check the invariants on everything read back; each finding carries its evidence.

    ``uncertain``: ids whose submission was never acknowledged (they may or may not
    exist). ``eos_topics``: topics whose consumer is exactly-once (the orchestrator's),
    where a garbage record dead-lettered twice is a violation; on the workers' topics
    (at-least-once by design) it is a note.
    """
    verdict = Verdict()
    by_id = {item.workflow_id: item for item in items}
    cancels = set(cancel_requested)
    unsure = set(uncertain)
    terminals: dict[str, list[SeenEvent]] = defaultdict(list)
    steps_seen: Counter[tuple[str, str | None]] = Counter()
    for seen in events:
        kind = seen.event.kind
        if kind.terminal:
            terminals[seen.event.workflow_id].append(seen)
        elif kind is EventKind.STEP_COMPLETED:
            steps_seen[(seen.event.workflow_id, seen.event.step_id)] += 1
    verdict.duplicate_step_events = sum(n - 1 for n in steps_seen.values() if n > 1)

    for workflow_id, item in by_id.items():
        found = terminals.get(workflow_id, [])
        if not found:
            if workflow_id not in unsure:
                verdict.lost.append(workflow_id)
            continue
        if len(found) > 1:
            verdict.duplicates[workflow_id] = found
        first = min(found, key=lambda s: (s.event.at_ms, s.offset))
        event = first.event
        verdict.outcomes[event.kind.value] += 1
        if workflow_id in cancels:
            if event.kind is EventKind.CANCELLED:
                verdict.cancelled += 1
            elif event.kind is EventKind.COMPLETED:
                verdict.completed_despite_cancel += 1
        problem = _outcome_problem(item, event, cancelled=workflow_id in cancels)
        if problem is not None:
            target = verdict.wrong_output if problem[0] == "output" else verdict.wrong_kind
            target.append(f"{workflow_id}: {problem[1]}")
    verdict.unknown_workflows = sorted(w for w in terminals if w not in by_id and w not in unsure)

    _check_tasks(verdict, by_id, terminals, tasks)
    _check_dead_letters(verdict, garbage, letters, set(eos_topics))

    def listed(title: str, entries: Sequence[str]) -> None:
        if entries:
            more = f" (+{len(entries) - max_listed} more)" if len(entries) > max_listed else ""
            verdict.violations.append(
                f"{title}: {len(entries)}{more}\n    " + "\n    ".join(entries[:max_listed])
            )

    dup_lines = [
        f"{w}: {len(seen)} terminal events: " + "; ".join(_describe(s) for s in seen)
        for w, seen in sorted(verdict.duplicates.items())
    ]
    listed("workflows with more than one terminal event (duplicates found)", dup_lines)
    listed("workflows without a terminal event (lost)", verdict.lost)
    listed("workflows with an unexpected outcome", verdict.wrong_kind)
    listed("completed workflows with a wrong output", verdict.wrong_output)
    listed("terminal events of workflows nobody submitted", verdict.unknown_workflows)
    listed("tasks dispatched after their workflow's terminal event", verdict.tasks_after_terminal)
    listed("task attempts dispatched more than once", verdict.duplicate_dispatches)
    listed("injected garbage without a dead letter", verdict.dead_letters_missing)
    listed("dead letters that are not injected garbage", verdict.dead_letters_unexpected)
    eos_repeats = [r for r in verdict.dead_letters_repeated if r.startswith("[eos]")]
    listed("garbage dead-lettered more than once by an exactly-once consumer", eos_repeats)
    worker_repeats = len(verdict.dead_letters_repeated) - len(eos_repeats)
    if worker_repeats:
        verdict.notes.append(
            f"{worker_repeats} garbage record(s) on worker topics dead-lettered more than once "
            "(workers are at-least-once: a kill between the dead letter and the offset commit)"
        )
    if verdict.duplicate_step_events:
        verdict.notes.append(f"{verdict.duplicate_step_events} repeated STEP_COMPLETED events")
    return verdict


def _outcome_problem(
    item: WorkItem, event: WorkflowEvent, *, cancelled: bool
) -> tuple[str, str] | None:
    expected = item.expected
    kinds = set(expected.kinds)
    if not cancelled:
        kinds.discard(EventKind.CANCELLED)  # never asked to cancel: must not be cancelled
    error = event.error
    if event.kind not in kinds:
        wanted = "/".join(sorted(k.value for k in kinds))
        got = f"{event.kind.value}" + (
            f" ({error.type} at {error.step_id}: {error.message})" if error else ""
        )
        return ("kind", f"expected {wanted}, got {got}")
    if event.kind is EventKind.COMPLETED and canonical(event.output) != canonical(expected.output):
        return ("output", f"expected {_short(expected.output)}, got {_short(event.output)}")
    if event.kind is EventKind.FAILED:
        if error is None:
            return ("kind", "FAILED without an error")
        if (error.step_id, error.type) != (expected.error_step, expected.error_type):
            return (
                "kind",
                f"expected failure {expected.error_type} at {expected.error_step}, "
                f"got {error.type} at {error.step_id}: {error.message}",
            )
    wanted_text = expected.error_contains
    rejected_for = error.message if error is not None else ""
    if event.kind is EventKind.REJECTED and wanted_text and wanted_text not in rejected_for:
        return ("kind", f"REJECTED without {wanted_text!r} in its error: {error}")
    return None


def _check_tasks(
    verdict: Verdict,
    by_id: dict[str, WorkItem],
    terminals: dict[str, list[SeenEvent]],
    tasks: Iterable[TaskAssigned],
) -> None:
    attempts: Counter[tuple[str, int]] = Counter()
    for task in tasks:
        attempts[(task.task_id, task.attempt)] += 1
        found = terminals.get(task.workflow_id)
        item = by_id.get(task.workflow_id)
        if item is not None and EventKind.REJECTED in item.expected.kinds:
            verdict.tasks_after_terminal.append(
                f"{task.task_id} attempt {task.attempt}: a task of a rejected workflow"
            )
            continue
        if not found:
            continue
        first = min(found, key=lambda s: (s.event.at_ms, s.offset))
        # Strictly after: a task dispatched in the same batch as the end (same now_ms) was
        # dispatched before it, by the engine's order.
        if task.dispatched_at_ms > first.event.at_ms:
            verdict.tasks_after_terminal.append(
                f"{task.task_id} attempt {task.attempt} dispatched_at_ms={task.dispatched_at_ms} "
                f"after {_describe(first)} (+{task.dispatched_at_ms - first.event.at_ms} ms)"
            )
    verdict.duplicate_dispatches = [
        f"{task_id} attempt {attempt}: {n} TaskAssigned records"
        for (task_id, attempt), n in sorted(attempts.items())
        if n > 1
    ]


def _check_dead_letters(
    verdict: Verdict,
    garbage: Sequence[Garbage],
    letters: Iterable[SeenLetter],
    eos_topics: set[str],
) -> None:
    injected = {(g.topic, g.value): g for g in garbage}
    verdict.garbage_injected = len(injected)
    matched: Counter[tuple[str, bytes]] = Counter()
    for seen in letters:
        verdict.dead_letters += 1
        letter = seen.letter
        key = (letter.source_topic, letter.value or b"")
        source = injected.get(key)
        if source is None:
            verdict.dead_letters_unexpected.append(
                f"dead.letters p{seen.partition}@{seen.offset}: {letter.source_topic} "
                f"p{letter.source_partition}@{letter.source_offset} {letter.error_type}: "
                f"{letter.error_message[:200]} (by {letter.consumer})"
            )
            continue
        if source.offset is not None and (letter.source_partition, letter.source_offset) != (
            source.partition,
            source.offset,
        ):
            verdict.dead_letters_unexpected.append(
                f"dead letter of {source.kind} garbage on {source.topic} names "
                f"p{letter.source_partition}@{letter.source_offset}, it was produced to "
                f"p{source.partition}@{source.offset}"
            )
        matched[key] += 1
    for key, g in injected.items():
        n = matched.get(key, 0)
        where = f"{g.topic} p{g.partition}@{g.offset} ({g.kind})"
        if n == 0:
            verdict.dead_letters_missing.append(where)
        elif n > 1:
            label = "[eos]" if g.topic in eos_topics else "[at-least-once]"
            verdict.dead_letters_repeated.append(f"{label} {where}: {n} dead letters")


# =====================================================================================
# Recovery times: pure, from the fault log and the events read back
# =====================================================================================


@dataclass(frozen=True)
class FaultRecord:
    kind: FaultKind
    target: str
    at_ms: int  # wall clock, comparable with the events' at_ms (same machine)
    detail: str = ""


@dataclass(frozen=True)
class Recovery:
    fault: FaultRecord
    next_terminal_s: float | None  # until the next terminal event of any workflow
    all_partitions_s: float | None  # until every partition with work in flight moved again
    stalled_partitions: int


def recovery_times(
    faults: Sequence[FaultRecord], events: Sequence[SeenEvent], submitted_ms: dict[str, int]
) -> list[Recovery]:
    """For each disruptive fault: how long until progress resumed.

    *next terminal*: the first terminal event after the fault (the fleet as a whole goes
    on). *all partitions*: every partition that had a workflow in flight at the fault
    (submitted before, terminal after) shows an event again; this is what a kill of the
    owner of some partitions costs them (rebalance, restore, hung transactions).
    """
    terminal_at = sorted(s.event.at_ms for s in events if s.event.kind.terminal)
    partition_of: dict[str, int] = {}
    end_of: dict[str, int] = {}
    by_partition: dict[int, list[int]] = defaultdict(list)
    for seen in events:
        partition_of.setdefault(seen.event.workflow_id, seen.partition)
        by_partition[seen.partition].append(seen.event.at_ms)
        if seen.event.kind.terminal:
            prev = end_of.get(seen.event.workflow_id)
            end_of[seen.event.workflow_id] = (
                seen.event.at_ms if prev is None else min(prev, seen.event.at_ms)
            )
    for times in by_partition.values():
        times.sort()
    recoveries = []
    for fault in faults:
        if fault.kind is FaultKind.GARBAGE:
            continue
        t = fault.at_ms
        after = _first_from(terminal_at, t)
        busy = {
            partition_of[w]
            for w, sub in submitted_ms.items()
            if sub <= t and w in partition_of and end_of.get(w, t + 1) > t
        }
        waits: list[float] = []
        never = False
        for p in busy:
            nxt = _first_from(by_partition[p], t)
            if nxt is None:
                never = True
            else:
                waits.append((nxt - t) / 1000)
        recoveries.append(
            Recovery(
                fault,
                None if after is None else (after - t) / 1000,
                None if never or not busy else max(waits),
                len(busy),
            )
        )
    return recoveries


def _first_from(ordered: list[int], t: int) -> int | None:
    """The first value >= t of a sorted list, or None."""
    i = bisect.bisect_left(ordered, t)
    return ordered[i] if i < len(ordered) else None


# =====================================================================================
# Processes: the fleet's children, killed, paused and brought back like a supervisor would
# =====================================================================================


class DriverLog:
    """Timestamped lines to the progress stream and to ``driver.log`` in the run dir."""

    def __init__(self, path: Path, stream: TextIO | None) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._file = path.open("a")
        self._stream = stream if stream is not None else sys.stderr

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {message}"
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            with contextlib.suppress(ValueError, OSError):  # a closed capture stream
                print(line, file=self._stream, flush=True)

    def close(self) -> None:
        with self._lock:
            self._file.close()


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


class GarbageInjector:
    """Produces garbage rounds and remembers where each record landed."""

    def __init__(
        self,
        clients: KafkaClients,
        codec: Codec,
        topics: Topics,
        capabilities: Sequence[str],
        seed: int,
    ) -> None:
        self.producer = clients.producer()
        self.codec = codec
        self.topics = topics
        self.capabilities = list(capabilities)
        self.rng = random.Random(seed ^ 0x9A5BA9E)
        admin = clients.admin()
        meta = admin.list_topics(timeout=30).topics
        self.partitions = {name: len(t.partitions) for name, t in meta.items()}

    def inject(self, round_no: int) -> list[Garbage]:
        batch = garbage_round(self.codec, self.topics, self.capabilities, self.rng, round_no)
        landed: list[Garbage] = []
        errors: list[str] = []

        def delivered(g: Garbage) -> Callable[[KafkaError | None, Any], None]:
            def callback(err: KafkaError | None, msg: Any) -> None:
                if err is not None:
                    errors.append(f"{g.topic}: {err}")
                else:
                    landed.append(replace(g, partition=msg.partition(), offset=msg.offset()))

            return callback

        for n, g in enumerate(batch):
            # Spread over partitions, so over rounds every owner of a topic gets some.
            partition = (round_no * len(GarbageKind) + n) % self.partitions.get(g.topic, 1)
            self.producer.produce(
                g.topic, key=g.key, value=g.value, partition=partition, on_delivery=delivered(g)
            )
        remaining = self.producer.flush(60)
        if remaining or errors:
            raise FleetError(
                f"garbage round {round_no}: {remaining} undelivered, errors {errors[:3]}"
            )
        return landed


# =====================================================================================
# The live run: watcher, submitter, fault thread
# =====================================================================================


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
    """Runs the plan and keeps the fleet alive (restarts killed and crashed processes)."""

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
                self.stop.wait(0.1)
        except BaseException as exc:
            self.error = exc
            self.log(f"fault thread failed: {type(exc).__name__}: {exc}")
        finally:
            self.plan_done.set()
            with contextlib.suppress(Exception):
                self.processes.resume_all()
                self.processes.tick(restart_now=True)

    def _record(
        self, kind: FaultKind, target: str, detail: str = "", at_ms: int | None = None
    ) -> None:
        self.records.append(FaultRecord(kind, target, at_ms or int(time.time() * 1000), detail))

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
            reason = self.broker.restart_unsupported()
            if reason is not None:
                self.skipped.append(f"{kind}: {reason}")
                self.log(f"skipping the broker restart: {reason}")
                return
            self.processes.resume_all()  # one fault at a time on the broker's side
            self.log("stopping the broker")
            down = self.broker.restart(self.config.broker_down_s)
            self.log(f"broker back after {down:.1f} s")
            self._record(kind, self.broker.bootstrap, f"down {down:.1f} s", at_ms)
        else:
            round_no = sum(1 for r in self.records if r.kind is FaultKind.GARBAGE)
            landed = self.injector.inject(round_no)
            self.garbage.extend(landed)
            topics = len({g.topic for g in landed})
            self.log(f"injected {len(landed)} garbage records into {topics} topics")
            self._record(kind, f"{topics} topics", f"{len(landed)} records", at_ms)


# =====================================================================================
# Reading back and the summary
# =====================================================================================


@dataclass(frozen=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None


def read_topic(clients: KafkaClients, topic: str, timeout_s: float) -> tuple[list[RawRecord], bool]:
    """Every committed record of ``topic`` up to its high watermark at the start.

    The end is the high watermark (asked read_uncommitted), not what a read_committed
    consumer reports: that is the last stable offset, which stops short of an open
    transaction (a killed orchestrator's stays open until transaction.timeout.ms) and of
    everything committed after it. Reading read_committed up to the high watermark waits
    until every such transaction is decided. Returns the records and whether the end was
    reached before the deadline.
    """
    probe = clients.consumer(
        f"fault-probe-{uuid.uuid4().hex}", **{"isolation.level": "read_uncommitted"}
    )
    try:
        meta = probe.list_topics(topic, timeout=30).topics[topic]
        ends: dict[int, int] = {}
        for p in sorted(meta.partitions):
            low, high = watermarks(probe, topic, p)
            if high > low:
                ends[p] = high
    finally:
        probe.close()
    records: list[RawRecord] = []
    if not ends:
        return records, True
    consumer = clients.consumer(f"fault-reader-{uuid.uuid4().hex}")  # read_committed
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for record in consumer.consume(1000, timeout=0.2):
                if record.error() is None:
                    records.append(
                        RawRecord(record.partition() or 0, record.offset() or 0, record.value())
                    )
            # Aborted records and transaction markers are never delivered: the position
            # tells how far the read got.
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends.get(tp.partition, 0):
                    ends.pop(tp.partition, None)
        return records, not ends
    finally:
        consumer.close()


@dataclass
class FaultSummary:
    """What a run did and found. ``ok`` is True when no invariant was violated."""

    seed: int
    workflows: int
    shapes: dict[str, int]
    outcomes: dict[str, int]
    cancels_requested: int
    cancelled: int
    completed_despite_cancel: int
    faults: dict[str, int]
    skipped_faults: list[str]
    restarts: int
    unexpected_exits: list[str]
    recoveries: list[Recovery]
    duplicates: int
    lost: int
    wrong_outputs: int
    wrong_kinds: int
    tasks_after_terminal: int
    duplicate_dispatches: int
    tasks_dispatched: int
    events_read: int
    garbage_injected: int
    dead_letters: int
    dead_letters_repeated: int  # garbage records with more than one dead letter
    resubmitted: int
    timings: dict[str, float]
    violations: list[str]
    notes: list[str]
    run_dir: str

    @property
    def ok(self) -> bool:
        return not self.violations


def _stats(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    never = len(values) - len(known)
    if not known:
        return "-" if not never else f"never x{never}"
    text = f"{statistics.median(known):5.1f} / {max(known):5.1f} s"
    return text + (f" (never x{never})" if never else "")


def format_summary(s: FaultSummary) -> str:
    verdict = "PASS" if s.ok else "FAIL"
    lines = [
        f"fault run  seed {s.seed}  workflows {s.workflows}  {verdict}  (logs: {s.run_dir})",
        f"  invariants   duplicates found: {s.duplicates}  lost: {s.lost}  "
        f"wrong outputs: {s.wrong_outputs}  wrong outcomes: {s.wrong_kinds}  "
        f"tasks after terminal: {s.tasks_after_terminal}  "
        f"duplicate dispatches: {s.duplicate_dispatches}",
        "  outcomes     " + "  ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items())),
        "  shapes       " + ", ".join(f"{k} {v}" for k, v in sorted(s.shapes.items())),
        f"  cancels      requested {s.cancels_requested}: cancelled {s.cancelled}, "
        f"completed first {s.completed_despite_cancel}",
        f"  dead letters injected {s.garbage_injected}, found {s.dead_letters} "
        f"({s.dead_letters_repeated} garbage records dead-lettered more than once)",
        f"  read back    events {s.events_read}, tasks dispatched {s.tasks_dispatched}, "
        f"resubmitted {s.resubmitted}",
        f"  processes    restarts {s.restarts}, unexpected exits {len(s.unexpected_exits)}",
        f"  {'fault':24}{'count':>6}   {'next terminal p50 / max':<26}"
        "all busy partitions p50 / max",
    ]
    for kind in FaultKind:
        n = s.faults.get(kind.value, 0)
        rec = [r for r in s.recoveries if r.fault.kind is kind]
        if kind is FaultKind.GARBAGE:
            lines.append(f"  {kind.value:24}{n:>6}")
            continue
        lines.append(
            f"  {kind.value:24}{n:>6}   {_stats([r.next_terminal_s for r in rec]):<26}"
            f"{_stats([r.all_partitions_s for r in rec])}"
        )
    lines.append("  timings      " + "  ".join(f"{k} {v:.1f} s" for k, v in s.timings.items()))
    lines += [f"  skipped      {x}" for x in s.skipped_faults]
    lines += [f"  note         {x}" for x in s.notes]
    lines += [f"  exit         {x}" for x in s.unexpected_exits[:10]]
    lines += [f"  VIOLATION    {x}" for x in s.violations]
    return "\n".join(lines)


# =====================================================================================
# run_faults: the whole run, every process and the broker stopped in ``finally``
# =====================================================================================


# If the driver dies without running ``finally`` (a C-level abort in librdkafka, SIGKILL,
# a CI runner killing the job), this separate process stops what the run started: the
# fleet processes carrying the run's topic prefix and the broker tagged with its run dir.
# The driver terminates it after its own clean-up. Linux only (/proc); elsewhere a no-op.
_WATCHDOG = r"""
import os, signal, sys, time
driver, prefix, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def read(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
def driver_alive():
    stat = read(driver, "stat")
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
def ours():
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), driver):
            continue
        cmd = read(entry, "cmdline")
        if "fleet.cli" in cmd and f"FLEET_TOPIC_PREFIX={prefix}\0" in read(entry, "environ"):
            found.append(int(entry))
        elif f"-Dfleet.run.dir={run_dir}\0" in cmd:
            found.append(int(entry))
    return found
if not os.path.isdir("/proc"):
    sys.exit(0)
while driver_alive():
    time.sleep(1)
for sig in (signal.SIGCONT, signal.SIGTERM):
    for pid in ours():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
deadline = time.monotonic() + 30
while ours() and time.monotonic() < deadline:
    time.sleep(0.5)
for pid in ours():
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """Starts the watchdog process; ``close`` ends it once the driver cleaned up itself."""

    def __init__(self, prefix: str, kafka_run_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), prefix, str(kafka_run_dir)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the driver's process group spares it
        )

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class _Run:
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
        if base.bootstrap_servers:
            bootstrap = base.bootstrap_servers
            log(f"using the cluster at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)")
        else:
            self.local = LocalKafka(base)
            self.started_broker = True
            bootstrap = self.local.start(timeout_s=120)
            self._lap("broker start", began)
            log(f"local broker up on {bootstrap}")
        settings = base.with_bootstrap(bootstrap)
        topics = Topics(settings.topic_prefix)
        clients = KafkaClients(settings, bootstrap, role="fault-driver")
        topology = Topology.load(settings.topology_file)
        apply_topics(
            clients.ready_admin(), topology, desired_topics(topology, topics, topology.capabilities)
        )
        from workers.app import load_app  # noqa: PLC0415 - only the live run needs the app

        capabilities = load_app(WORKER_APP).capabilities

        up = time.monotonic()
        self.supervisor = Supervisor(settings, self.run_dir / "logs")
        self.processes = Processes(self.supervisor, config, log)
        self.processes.start_all()
        # A throwaway client: a describe request of wait_for_pools that timed out stays in
        # librdkafka, and the next broker restart then aborts the process (assertion
        # rd_kafka_enq_once_del_source_return: eonce->refcnt > 0); destroying it avoids that.
        pools = FleetClient(settings, role="fault-pools")
        try:
            pools.wait_for_pools(capabilities, config.workers, timeout_s=config.startup_s)
        finally:
            pools.close()
        del pools
        gc.collect()
        control = self._client(settings, "fault-control")
        watcher = Watcher(control)
        self.threads.append(watcher)
        watcher.start()

        can_cancel = callable(getattr(FleetClient, "cancel", None))
        if config.cancellations and not can_cancel:
            self.notes.append("FleetClient.cancel does not exist: no cancellations")
        sub_started = time.monotonic()
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
        broker = Broker(self.local, bootstrap)
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
        log(f"fleet stopped; reading everything back (exit codes {codes})")

        reading = time.monotonic()
        events, letters, tasks = self._read_back(clients, topics, capabilities, control.codec)
        self._lap("read back", reading)
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
            workflows=len(submitter.acked_ms),
            shapes=dict(Counter(i.shape.value for i in submitted_items)),
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
        timeout = self.config.read_s

        def read(topic: str) -> list[RawRecord]:
            records, complete = read_topic(clients, topic, timeout)
            if not complete:
                self.violations.append(
                    f"could not read {topic} to its end within {timeout:.0f} s (stuck transaction?)"
                )
            return records

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
                shutil.rmtree(self.run_dir / "kafka" / "data", ignore_errors=True)
        if self.watchdog is not None:
            self.watchdog.close()
        self.log.close()


def run_faults(config: FaultConfig) -> FaultSummary:
    """Run the fleet under faults and check it; every process is stopped on return."""
    run = _Run(config)
    passed = False
    try:
        summary = run.execute()
        passed = summary.ok
        return summary
    except BaseException as exc:
        # The traceback's frames hold Kafka clients; release them before the broker stops.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        run.close(passed=passed)


# =====================================================================================
# CLI
# =====================================================================================


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fault.driver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", choices=["soak", "short"], default="soak")
    parser.add_argument("--workflows", type=int, help="default: 1000 (soak), 200 (short)")
    parser.add_argument("--seed", type=int, help="default: random; run k uses seed + k")
    parser.add_argument(
        "--runs", type=int, default=1, help="consecutive runs; stops at the first failure"
    )
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a failing run")
    parser.add_argument("--rate", type=float, help="workflows submitted per second")
    parser.add_argument("--orchestrators", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        help="consumer session timeout of the fleet; 0 = product default (45 s)",
    )
    parser.add_argument("--run-dir", type=Path, help="base dir for the runs (default: a temp dir)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="more env for fleet processes"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fleet.logs import configure_logging  # noqa: PLC0415

    # The driver's own Kafka clients complain loudly while the broker restarts; only errors.
    configure_logging(Settings(log_level="error", log_format="console"))
    overrides: dict[str, Any] = {}
    for name, key in (
        ("workflows", "workflows"),
        ("rate", "submit_rate"),
        ("orchestrators", "orchestrators"),
        ("workers", "workers"),
    ):
        if getattr(args, name) is not None:
            overrides[key] = getattr(args, name)
    if args.session_timeout_ms is not None:
        overrides["session_timeout_ms"] = args.session_timeout_ms or None
    if bad := [e for e in args.env if "=" not in e]:
        _parser().error(f"--env takes K=V, got {bad}")
    if args.env:
        overrides["extra_env"] = tuple((k, v) for k, _, v in (e.partition("=") for e in args.env))
    base_seed = (
        args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    )
    passed = 0
    for k in range(args.runs):
        run_dir = args.run_dir / f"run-{k + 1}" if args.run_dir else None
        preset = FaultConfig.short if args.preset == "short" else FaultConfig.soak
        config = preset(**overrides, seed=base_seed + k, run_dir=run_dir)
        print(f"\n=== run {k + 1}/{args.runs} (seed {config.seed}) ===", flush=True)
        try:
            summary = run_faults(config)
        except FleetError as exc:
            print(f"run {k + 1} could not complete: {exc}", flush=True)
            if not args.keep_going:
                break
            continue
        print(format_summary(summary), flush=True)
        passed += summary.ok
        if not summary.ok and not args.keep_going:
            break
    print(f"\n{passed}/{args.runs} runs passed", flush=True)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
