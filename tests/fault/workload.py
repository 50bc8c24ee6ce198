"""The workload: workflow shapes, each with its expected outcome computed by construction.

:func:`build_workload` makes a seeded, deterministic mix of them (one :class:`WorkItem`
per workflow); the checker compares what the fleet did with each item's
:class:`Expected`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import JsonValue

from fleet.messages import EventKind


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
