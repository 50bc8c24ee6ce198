"""The checker: pure, over what was read back from the topics.

:func:`check_run` takes the workload, the workflow events, the dispatched tasks, the dead
letters and the injected garbage, and returns a :class:`Verdict` whose violations each
carry their evidence (partition, offset, at_ms).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from fleet.messages import DeadLetter, EventKind, TaskAssigned, WorkflowEvent
from tests.fault.garbage import Garbage
from tests.fault.workload import WorkItem


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
