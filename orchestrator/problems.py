"""Problems with a spec, as ``(location, reason)``: where they are, and pydantic's
validation errors rendered in the same form.

Locations read like the document: ``steps[1] (id 'enrich').for_each``,
``input["user name"]``; reasons say what was expected and what was found, never
pydantic's wording or error codes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from fleet.json_codec import json_kind
from orchestrator.refs import format_segment

Problem = tuple[str, str]


def step_label(position: int, raw_steps: list[Any]) -> str:
    """Where step ``position`` is: ``steps[1] (id 'enrich')``, or ``steps[1]`` when the
    document gives it no string id."""
    raw = raw_steps[position] if position < len(raw_steps) else None
    step_id = raw.get("id") if isinstance(raw, Mapping) else None
    return (
        f"steps[{position}] (id {step_id!r})" if isinstance(step_id, str) else f"steps[{position}]"
    )


# pydantic error type -> our reason; filled from the error's ctx, input and kind.
_REASONS = {
    "missing": "required field is missing",
    "string_type": "expected a string, got {kind}",
    "int_type": "expected an integer, got {kind}",
    "float_type": "expected a number, got {kind}",
    "list_type": "expected a list, got {kind}",
    "dict_type": "expected an object, got {kind}",
    "model_type": "expected an object, got {kind}",
    "finite_number": "expected a finite number, got {input!r}",
    "invalid-json-value": "not a JSON value: {kind}",
    "string_pattern_mismatch": (
        "{input!r} is not a valid name: use letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    ),
    "string_too_long": "too long (at most {max_length} characters)",
    "string_too_short": "must not be empty",
    "too_short": "at least one step is required",  # steps is the only list with a minimum
    "greater_than": "must be greater than {gt}, got {input!r}",
    "greater_than_equal": "must be at least {ge}, got {input!r}",
    "less_than_equal": "must be at most {le}, got {input!r}",
}
_JSON_FIELDS = frozenset({"input", "output"})


class _Fields(NamedTuple):
    step: list[str]
    spec: list[str]


def shape_problems(
    exc: ValidationError,
    doc: Mapping[str, Any],
    *,
    step_fields: Iterable[str],
    spec_fields: Iterable[str],
) -> list[Problem]:
    """pydantic's errors in the same ``(location, reason)`` form as every other problem.

    ``step_fields`` and ``spec_fields`` are the fields a step and a spec allow, named
    when a document has one too many."""
    fields = _Fields(list(step_fields), list(spec_fields))
    raw_steps = doc.get("steps")
    raw_list: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        if loc and loc[-1] == "[key]" and error["type"] != "string_type":
            # A string key that is not a valid name (a pool in resources).
            problems.append((_location(loc[:-1], raw_list), _reason(error, fields)))
            continue
        if loc and loc[-1] == "[key]":
            # JSON object keys must be strings; pydantic reports the key itself.
            where = _location(loc[:-1], raw_list)
            problems.append((where, f"object keys must be strings, got {describe(error['input'])}"))
            continue
        problems.append((_location(loc, raw_list), _reason(error, fields)))
    return problems


def fields_in_error(exc: ValidationError) -> dict[int, set[str]]:
    """The fields of each step (by position) that pydantic found something wrong with;
    ``"*"`` when the step as a whole is (not an object)."""
    bad: dict[int, set[str]] = {}
    for error in exc.errors():
        loc = error["loc"]
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            bad.setdefault(loc[1], set()).add(str(loc[2]) if len(loc) > 2 else "*")
    return bad


def _location(loc: tuple[int | str, ...], raw_steps: list[Any]) -> str:
    parts: list[str] = []
    items = list(loc)
    if len(items) >= 2 and items[0] == "steps" and isinstance(items[1], int):
        parts.append(step_label(items[1], raw_steps))
        items = items[2:]
    in_json = False
    index = 0
    while index < len(items):
        item = items[index]
        index += 1
        if in_json and item in ("dict", "list") and index < len(items):
            # JsonValue errors interleave the container type with each key; skip it.
            item = items[index]
            index += 1
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not parts:
            parts.append(item)
        else:
            parts.append(format_segment(item) if in_json else f".{item}")
        in_json = in_json or item in _JSON_FIELDS
    return "".join(parts) or "spec"


def _reason(error: Any, fields: _Fields) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        allowed = fields.step if error["loc"][0] == "steps" else fields.spec
        return f"unknown field (allowed: {', '.join(allowed)})"
    template = _REASONS.get(kind)
    if template is None:
        return str(error["msg"])
    values = {**(error.get("ctx") or {}), "input": value, "kind": describe(value)}
    return template.format(**values)


def describe(value: object) -> str:
    """``json_kind`` plus the value itself when it is a short scalar."""
    phrase = json_kind(value)
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        return f"{phrase} ({json.dumps(value)})"
    return phrase
