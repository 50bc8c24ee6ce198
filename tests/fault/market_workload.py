"""The market run's inputs: its policy file and a seeded workload of contended ``hold`` tasks.

Four pools of 1 to 4 units, two bands (tenant ``lowco`` bids low, ``highco`` high). Every
workflow has two ``hold`` tasks (two parallel steps, a chain of two, or a fan-out of two),
each step needing one or two pools (one unit, sometimes two of the bigger pools). Each
item says by construction what must come out: COMPLETED with one ``hold`` output per task
of a known shape (:func:`output_problems` checks it), or, for the few workflows whose
budget is too small on purpose, FAILED with ``BudgetExhausted``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from pydantic import JsonValue

from fleet.messages import EventKind, WorkflowEvent
from orchestrator.market.policy import MICRO, micro_to_credits
from tests.fault.workload import Expected, Shape, Spec, WorkItem, completed, failed

POOLS: Mapping[str, int] = {"p1": 1, "p2": 2, "p3": 3, "p4": 4}  # name -> capacity
RESERVE = MICRO  # 1 credit per unit
BANDS = ("low", "high")
TENANT_OF_BAND = {"low": "lowco", "high": "highco"}
PRICES = (1_000_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000)  # max_price per unit
LEASE_TTL_MS = 30_000  # longer than any wait for a step's next pool, short enough that a
# killed worker's units come back within the run
CLAIM_TIMEOUT_MS = 10_000
# Steps retry what the market or a fault ends (a lease not claimed in time, a worker
# killed, an orchestrator's partitions stalled for a minute): enough attempts that every
# workflow completes by construction.
RETRIES = 10
TIMEOUT_S = 15.0  # per attempt, from dispatch; a hold takes at most 0.3 s
# A budget too small on purpose: step a ({p2: 1} at 1.5) fits twice, step b ({p4: 2} at
# 2 per unit: a hold of 4) never does, whatever a cost.
SHORT_BUDGET = 3_500_000


def policy_yaml(*, lease_ttl_ms: int = LEASE_TTL_MS) -> str:
    """The run's market file: no bid ever expires (a starved bid would show unserved)."""
    pools = "\n".join(
        f"  {name}: {{capacity: {capacity}, reserve: {micro_to_credits(RESERVE)}, "
        f'lease_ttl_ms: {lease_ttl_ms}, aging_per_round: "0.05", aging_cap: 1}}'
        for name, capacity in POOLS.items()
    )
    return (
        "# The market fault run's policy (tests/fault/market_workload.py).\n"
        f"pools:\n{pools}\n"
        f"bands: [{', '.join(BANDS)}]\n"
        "tenants:\n"
        "  lowco: {bands: [low], default_max_price: 2}\n"
        "  highco: {bands: [high], default_max_price: 2}\n"
        "default_tenant: lowco\n"
        "round_ms: 200\n"
        f"claim_timeout_ms: {CLAIM_TIMEOUT_MS}\n"
        "expiry_grace_ms: 2000\n"
        "bid_valid_rounds: 100000000\n"
    )


def write_policy(run_dir: Path) -> Path:
    path = run_dir / "market.yaml"
    path.write_text(policy_yaml())
    return path


class MarketShape(StrEnum):
    PAIR = "pair"  # steps a and b at once
    CHAIN = "chain"  # a, then b
    FAN_OUT = "fan-out"  # one step, two elements
    SHORT_BUDGET = "short-budget"  # a, then b, which the budget cannot hold


MIX: tuple[tuple[MarketShape, int], ...] = (
    (MarketShape.PAIR, 30),
    (MarketShape.CHAIN, 26),
    (MarketShape.FAN_OUT, 40),
    (MarketShape.SHORT_BUDGET, 4),
)


@dataclass(frozen=True)
class HoldTask:
    """One ``hold`` task as built: what its output must show."""

    step: str
    index: int | None  # the element of a fan-out
    tag: str
    resources: tuple[tuple[str, int], ...]  # (pool, units), by pool name
    max_price: int  # micro-credits per unit
    delay_ms: int


@dataclass(frozen=True)
class MarketItem:
    workflow_id: str
    shape: MarketShape
    band: str
    spec: Spec
    tasks: tuple[HoldTask, ...]
    budget: int  # micro-credits
    fails_at: frozenset[str] = frozenset()  # BudgetExhausted at one of these steps

    @property
    def expected_tasks(self) -> int:
        """Hold tasks that run to completion by construction."""
        return 1 if self.fails_at else len(self.tasks)

    def work_item(self) -> WorkItem:
        """The item as issue 3's submitter and checker take it. A completed workflow's
        output is only known in shape; :func:`expected_for` fills it in after the check."""
        if self.fails_at:
            return WorkItem(
                self.workflow_id, Shape.PERMANENT, self.spec, failed("b", "BudgetExhausted")
            )
        shape = Shape.FAN_OUT if self.shape is MarketShape.FAN_OUT else Shape.LINEAR
        return WorkItem(self.workflow_id, shape, self.spec, completed(None))


def _step(task: HoldTask, needs: Sequence[str] = ()) -> Spec:
    return {
        "id": task.step,
        "capability": "hold",
        "needs": list(needs),
        "input": {"delay_ms": task.delay_ms, "tag": task.tag},
        "resources": dict(task.resources),
        "max_price": micro_to_credits(task.max_price),
        "retries": RETRIES,
        "timeout_s": TIMEOUT_S,
        "backoff_s": 0.2,
        "max_backoff_s": 2.0,
    }


def _resources(rng: random.Random) -> tuple[tuple[str, int], ...]:
    """One or two pools, picked in proportion to capacity (every unit about as busy);
    two units of a bigger pool one time in four."""
    names, weights = list(POOLS), [float(c) for c in POOLS.values()]
    chosen: list[str] = []
    for _ in range(rng.choice((1, 2))):
        pick = rng.choices(names, weights)[0]
        chosen.append(pick)
        at = names.index(pick)
        del names[at], weights[at]
    return tuple(sorted((p, 2 if POOLS[p] >= 3 and rng.random() < 0.25 else 1) for p in chosen))


def _task(rng: random.Random, workflow_id: str, step: str, index: int | None) -> HoldTask:
    where = step if index is None else f"{step}/{index}"
    return HoldTask(
        step,
        index,
        f"{workflow_id}/{where}",
        _resources(rng),
        rng.choice(PRICES),
        rng.randint(50, 300),
    )


def _cost(task: HoldTask) -> int:
    return task.max_price * sum(units for _, units in task.resources)


def build_market_workload(count: int, seed: int, tag: str = "") -> list[MarketItem]:
    """``count`` workflows, about half in each band, interleaved; ids readable in evidence."""
    rng = random.Random(seed)
    bands = [BANDS[i % 2] for i in range(count)]
    rng.shuffle(bands)
    shapes, weights = zip(*MIX, strict=True)
    items = []
    for i, band in enumerate(bands):
        shape = rng.choices(shapes, weights)[0]
        workflow_id = f"market-{tag}{i:05d}-{shape.value}-{band}"
        fails_at: frozenset[str] = frozenset()
        if shape is MarketShape.FAN_OUT:
            first = _task(rng, workflow_id, "each", 0)
            # One step: the same resources and price for both elements.
            second = HoldTask(
                "each", 1, f"{workflow_id}/each/1", first.resources, first.max_price, 0
            )
            tasks = (first, replace(second, delay_ms=rng.randint(50, 300)))
            items_in: list[JsonValue] = [{"d": t.delay_ms, "t": t.tag} for t in tasks]
            step = _step(first)
            step["for_each"] = "$.input.items"
            step["input"] = {"delay_ms": "$.item.d", "tag": "$.item.t"}
            steps: list[JsonValue] = [step]
            spec_input: JsonValue = {"items": items_in}
            output: JsonValue = {"each": "$.steps.each.output"}
        else:
            a, b = _task(rng, workflow_id, "a", None), _task(rng, workflow_id, "b", None)
            if shape is MarketShape.SHORT_BUDGET:
                a = HoldTask("a", None, a.tag, (("p2", 1),), 1_500_000, a.delay_ms)
                b = HoldTask("b", None, b.tag, (("p4", 2),), 2_000_000, b.delay_ms)
                # a may, rarely, need a third attempt that the budget cannot hold either.
                fails_at = frozenset({"a", "b"})
            tasks = (a, b)
            needs = ["a"] if shape is not MarketShape.PAIR else []
            steps = [_step(a), _step(b, needs)]
            spec_input = {}
            output = {"a": "$.steps.a.output", "b": "$.steps.b.output"}
        budget = (
            SHORT_BUDGET
            if shape is MarketShape.SHORT_BUDGET
            else (RETRIES + 1) * sum(_cost(t) for t in tasks)
        )
        spec: Spec = {
            "name": f"market-{shape.value}",
            "tenant": TENANT_OF_BAND[band],
            "priority": band,
            "budget": micro_to_credits(budget),
            "input": spec_input,
            "steps": steps,
            "output": output,
        }
        items.append(MarketItem(workflow_id, shape, band, spec, tasks, budget, fails_at))
    return items


# -- what a COMPLETED workflow's output must look like ---------------------------------


def _hold_problems(task: HoldTask, out: JsonValue) -> list[str]:
    if not isinstance(out, dict):
        return [f"{task.tag}: output is not an object: {out!r}"[:300]]
    problems = []
    if out.get("tag") != task.tag:
        problems.append(f"{task.tag}: output of another task (tag {out.get('tag')!r})")
    if not isinstance(out.get("pid"), int):
        problems.append(f"{task.tag}: no pid")
    leases = out.get("leases")
    wanted = dict(task.resources)
    if not isinstance(leases, dict) or set(leases) != set(wanted):
        got = sorted(leases) if isinstance(leases, dict) else leases
        return [*problems, f"{task.tag}: leases on {got}, the step needs {sorted(wanted)}"]
    for pool, units in wanted.items():
        problems += [f"{task.tag}: {pool}: {p}" for p in _lease_problems(leases[pool], units, pool)]
        lease = leases[pool]
        price = lease.get("unit_price") if isinstance(lease, dict) else None
        if isinstance(price, int) and not RESERVE <= price <= task.max_price:
            problems.append(
                f"{task.tag}: {pool}: unit price {price} outside [reserve {RESERVE}, "
                f"max_price {task.max_price}]"
            )
    return problems


def _ints(value: JsonValue, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(type(v) is int for v in value)


def _lease_problems(lease: JsonValue, units: int, pool: str) -> list[str]:
    if not isinstance(lease, dict):
        return ["lease is not an object"]
    problems = []
    got = lease.get("units")
    capacity = POOLS[pool]
    if not isinstance(got, list) or len(got) != units or len(set(map(str, got))) != units:
        problems.append(f"units {got!r}, expected {units} distinct")
    elif not all(type(u) is int and 0 <= u < capacity for u in got):
        problems.append(f"units {got!r} outside the pool's {capacity}")
    if not _ints(lease.get("token"), 2):
        problems.append(f"token {lease.get('token')!r} is not [epoch, seq]")
    held = lease.get("held_ms")
    if not (isinstance(held, list) and _ints(held, 2) and int(held[0]) <= int(held[1])):  # type: ignore[arg-type]
        problems.append(f"held_ms {held!r} is not [start, end]")
    if type(lease.get("unit_price")) is not int:
        problems.append(f"unit_price {lease.get('unit_price')!r} is not micro-credits")
    return problems


def output_problems(item: MarketItem, output: JsonValue) -> list[str]:
    """Why a COMPLETED workflow's output is not what its construction says (empty: it is)."""
    if not isinstance(output, dict):
        return [f"output is not an object: {output!r}"[:300]]
    if item.shape is MarketShape.FAN_OUT:
        each = output.get("each")
        if set(output) != {"each"} or not isinstance(each, list) or len(each) != 2:
            return [f"expected {{each: [2 outputs]}}, got keys {sorted(output)}"]
        outputs: list[JsonValue] = list(each)
    else:
        if set(output) != {"a", "b"}:
            return [f"expected keys a, b, got {sorted(output)}"]
        outputs = [output["a"], output["b"]]
    return [
        p for task, out in zip(item.tasks, outputs, strict=True) for p in _hold_problems(task, out)
    ]


def expected_for(item: MarketItem, event: WorkflowEvent) -> Expected:
    """The expectation issue 3's checker compares ``event`` with: the construction's, with
    the actual output (or failing step) filled in when the construction allows it."""
    work = item.work_item().expected
    if item.fails_at:
        step = event.error.step_id if event.error is not None else None
        if event.kind is EventKind.FAILED and step in item.fails_at:
            return failed(step, "BudgetExhausted")
        return work
    if event.kind is EventKind.COMPLETED and not output_problems(item, event.output):
        return completed(event.output)
    return work
