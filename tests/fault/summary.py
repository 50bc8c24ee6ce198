"""The summary: what a run did and found (:class:`FaultSummary`), and its table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tests.fault.plan import FaultKind
from tests.fault.recovery import Recovery


@dataclass
class FaultSummary:
    """What a run did and found. ``ok`` is True when no invariant was violated."""

    seed: int
    brokers: int
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
        f"fault run  seed {s.seed}  workflows {s.workflows}  brokers {s.brokers}  {verdict}  "
        f"(logs: {s.run_dir})",
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
