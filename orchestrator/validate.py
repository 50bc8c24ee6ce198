"""The checks of a spec that span its steps: unique ids, needs that exist and form no
cycle, and ``$.`` references that can resolve when their step runs.

They run on every step, malformed or not (``StepLinks``: what they read of a step, taken
from its well-formed fields), so an unknown field or a wrong type does not hide a cycle
or a bad reference, in another step or in the same one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.problems import Problem, step_label
from orchestrator.refs import Ref, RefSyntaxError, Root, is_ref, iter_ref_strings, parse_ref

if TYPE_CHECKING:
    # Types only: spec.parse_spec calls these checks, so spec imports this module.
    from orchestrator.spec import StepSpec


@dataclass(frozen=True)
class StepLinks:
    """What the checks across steps read of one step: how it links to the others (id,
    needs, the references in its input and for_each) and to a task topic (capability).

    From a valid step, or salvaged from one that failed validation, so that a typo in
    one field does not hide a bad reference in another: a field is taken only when
    pydantic found nothing wrong with it, so nothing already reported is reported twice.
    """

    id: str | None  # None: the step has no string id
    needs: tuple[str, ...]
    input: object  # None when the input itself is malformed
    for_each: str | None
    fan_out: bool  # for_each was given: $.item and $.index are bound in the input
    capability: str | None  # None when malformed

    @classmethod
    def of(cls, step: StepSpec) -> StepLinks:
        fan_out = step.for_each is not None
        return cls(step.id, tuple(step.needs), step.input, step.for_each, fan_out, step.capability)

    @classmethod
    def salvage(cls, raw: Mapping[str, Any], bad: Iterable[str]) -> StepLinks:
        """The links of a step that failed validation; ``bad`` names its fields in error."""
        bad = set(bad)
        step_id, needs, for_each = raw.get("id"), raw.get("needs"), raw.get("for_each")
        capability = raw.get("capability")
        if not isinstance(capability, str) or "capability" in bad:
            capability = None
        return cls(
            id=step_id if isinstance(step_id, str) else None,
            # The strings of a list that has a non-string in it are still names to check.
            needs=tuple(n for n in needs if isinstance(n, str)) if isinstance(needs, list) else (),
            input=None if "input" in bad else raw.get("input"),
            for_each=for_each if isinstance(for_each, str) else None,
            fan_out=for_each is not None,  # a malformed for_each still means a fan-out
            capability=capability,
        )


def known_ids(raw_steps: list[Any], problems: list[Problem]) -> dict[str, int]:
    """Every step id in the document (valid step or not), reporting duplicates."""
    known: dict[str, int] = {}
    for position, raw in enumerate(raw_steps):
        step_id = raw.get("id") if isinstance(raw, Mapping) else None
        if not isinstance(step_id, str):
            continue
        if step_id in known:
            first = known[step_id]
            problems.append(
                (
                    f"{step_label(position, raw_steps)}.id",
                    f"duplicate step id {step_id!r} (first used by steps[{first}])",
                )
            )
        else:
            known[step_id] = position
    return known


def graph_problems(
    steps: list[tuple[int, StepLinks]], known: dict[str, int], raw_steps: list[Any]
) -> list[Problem]:
    problems: list[Problem] = []
    needs: dict[str, list[str]] = {}
    for position, step in steps:
        label = step_label(position, raw_steps)
        for n, need in enumerate(step.needs):
            if need not in known:
                problems.append(
                    (f"{label}.needs[{n}]", f"unknown step {need!r} (steps: {', '.join(known)})")
                )
        if step.id is not None:
            needs.setdefault(step.id, [n for n in step.needs if n in known])
    problems.extend(_cycle_problems(steps, needs, raw_steps))
    for position, step in steps:
        label = step_label(position, raw_steps)
        upstream = _upstream(step.id, [n for n in step.needs if n in known], needs)
        if step.for_each is not None:
            where = f"{label}.for_each"
            if not is_ref(step.for_each):
                problems.append(
                    (
                        where,
                        f"must be a $. reference to a list (e.g. $.steps.<id>.output.items), "
                        f"got {step.for_each!r}",
                    )
                )
            else:
                problems.extend(
                    ref_problems(where, step.for_each, known, allowed=upstream, own_id=step.id)
                )
        problems.extend(
            ref_problems(
                f"{label}.input",
                step.input,
                known,
                allowed=upstream,
                own_id=step.id,
                fan_out=step.fan_out,
            )
        )
    return problems


def _cycle_problems(
    steps: list[tuple[int, StepLinks]], needs: dict[str, list[str]], raw_steps: list[Any]
) -> list[Problem]:
    """One problem per cycle found by depth-first search over ``needs`` edges."""
    problems: list[Problem] = []
    position_of = {step.id: position for position, step in steps if step.id is not None}
    state: dict[str, int] = {}  # absent: unseen, 1: on the DFS stack, 2: finished
    stack: list[str] = []

    def visit(step_id: str) -> None:
        state[step_id] = 1
        stack.append(step_id)
        for need in needs.get(step_id, []):
            if state.get(need) == 1:
                cycle = [*stack[stack.index(need) :], need]
                where = f"{step_label(position_of[need], raw_steps)}.needs"
                problems.append((where, f"cycle: {' -> '.join(cycle)} (each step needs the next)"))
            elif need not in state:
                visit(need)
        stack.pop()
        state[step_id] = 2

    # Recursion depth is bounded by the number of steps in one spec.
    for _, step in steps:
        if step.id is not None and step.id not in state:
            visit(step.id)
    return problems


def _upstream(step_id: str | None, direct: list[str], needs: dict[str, list[str]]) -> set[str]:
    """Steps a step needs directly (``direct``) or transitively (cycle-safe)."""
    seen: set[str] = set()
    todo = list(direct)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(needs.get(current, []))
    if step_id is not None:
        seen.discard(step_id)  # a cycle through itself is reported as a cycle, not a ref error
    return seen


def ref_problems(
    where: str,
    value: object,
    known: Mapping[str, int],
    *,
    allowed: set[str] | None,
    own_id: str | None = None,
    fan_out: bool = False,
) -> list[Problem]:
    """Problems with the references in ``value``.

    ``allowed`` is the set of steps whose outputs may be read (None: any step, as for
    the workflow output); ``fan_out`` says whether ``$.item``/``$.index`` are bound.
    """
    problems: list[Problem] = []
    for suffix, text in iter_ref_strings(value):
        location = where + suffix
        try:
            ref = parse_ref(text)
        except RefSyntaxError as exc:
            problems.append((location, f"invalid reference {text!r}: {exc.reason}"))
            continue
        reason = _ref_reason(ref, known, allowed, own_id, fan_out)
        if reason is not None:
            problems.append((location, f"{text}: {reason}"))
    return problems


def _ref_reason(
    ref: Ref,
    known: Mapping[str, int],
    allowed: set[str] | None,
    own_id: str | None,
    fan_out: bool,
) -> str | None:
    if ref.root in (Root.ITEM, Root.INDEX) and not fan_out:
        return "only bound in the input of a for_each step"
    if ref.root is not Root.STEPS:
        return None
    assert ref.step_id is not None
    if ref.step_id not in known:
        return f"unknown step {ref.step_id!r}"
    if ref.step_id == own_id:
        return "a step cannot read its own output"
    if allowed is not None and ref.step_id not in allowed:
        return (
            f"step {ref.step_id!r} is not in needs (directly or transitively), so its "
            "output may not exist yet; add it to needs"
        )
    return None
