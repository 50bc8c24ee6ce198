"""``$.`` references: how a step's input points at workflow data.

A string that starts with ``$.`` is a reference and must be a valid path; any other
string (including one that merely contains ``$.`` further in) is a literal. Making the
whole prefix reserved, instead of guessing whether ``"$.input.x "`` was meant as a
reference, turns typos into spec errors at submit time rather than silent literals.

Grammar::

    ref     := "$" segment+
    segment := "." key | "[" digits "]" | "[" json-string "]"
    key     := one or more word characters or "-"

The first key is the root: ``$.input``, ``$.steps.<id>.output``, ``$.item``, ``$.index``.
Step ids may contain dots (``$.steps.fetch.v2.output``): the id is every key before the
first dotted ``output``; an id with an ``output`` (or empty) component is written quoted
(``$.steps["a.output"].output``).

Resolved values are data: a string inside a step output or the workflow input that
happens to start with ``$.`` is never resolved again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import JsonValue

from fleet.errors import ResolutionError, SpecError
from fleet.json_codec import json_kind

PREFIX = "$."
STEP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_KEY = re.compile(r"[\w-]+")
_INDEX = re.compile(r"\[([0-9]+)\]")
_QUOTED = re.compile(r'\[("(?:[^"\\]|\\.)*")\]')
_MAX_KEYS_SHOWN = 20

Segment = str | int


class Root(StrEnum):
    INPUT = "input"
    STEPS = "steps"
    ITEM = "item"
    INDEX = "index"


class RefSyntaxError(SpecError):
    """A ``$.`` string is not a valid reference; ``parse_spec`` re-locates it."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__([(text, reason)])
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``root`` (plus ``step_id`` for steps) and the path below it.

    For ``$.steps.<id>.output[...]`` the path starts below ``output``.
    """

    root: Root
    path: tuple[Segment, ...] = ()
    step_id: str | None = None

    def __str__(self) -> str:
        return self.prefix(len(self.path))

    def prefix(self, depth: int) -> str:
        """The canonical text of this reference cut after ``depth`` path segments."""
        head = f"$.{self.root.value}"
        if self.root is Root.STEPS:
            assert self.step_id is not None
            # Quote ids whose dotted form would not parse back to the same id.
            if any(part in ("", "output") for part in self.step_id.split(".")):
                head += f"[{json.dumps(self.step_id)}]"
            else:
                head += f".{self.step_id}"
            head += ".output"
        return head + "".join(format_segment(s) for s in self.path[:depth])


@dataclass(frozen=True)
class Context:
    """What references resolve against.

    ``outputs`` holds only completed steps. ``index`` is None outside a fan-out element;
    ``item`` is meaningful only when ``index`` is set (an item may itself be null).
    """

    input: JsonValue = None
    outputs: Mapping[str, JsonValue] = field(default_factory=dict)
    item: JsonValue = None
    index: int | None = None


def format_segment(segment: Segment) -> str:
    if isinstance(segment, int):
        return f"[{segment}]"
    if _KEY.fullmatch(segment):
        return f".{segment}"
    return f"[{json.dumps(segment, ensure_ascii=False)}]"


def is_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_ref(text: str) -> Ref:
    """Parse ``text`` (which must start with ``$.``) or raise :class:`RefSyntaxError`."""
    if not text.startswith(PREFIX):
        raise RefSyntaxError(text, "a reference starts with '$.'")
    tokens = _tokenize(text)
    root_token, _ = tokens[0]
    try:
        root = Root(str(root_token))  # _tokenize guarantees a key first
    except ValueError:
        raise RefSyntaxError(
            text,
            f"unknown root {root_token!r}: a reference starts with $.input, "
            "$.steps.<id>.output, $.item or $.index",
        ) from None
    rest = tokens[1:]
    if root is Root.INDEX and rest:
        raise RefSyntaxError(text, "$.index is the element position (a number); it has no path")
    if root is not Root.STEPS:
        return Ref(root, tuple(t for t, _ in rest))
    return _parse_step_ref(text, rest)


def _tokenize(text: str) -> list[tuple[Segment, bool]]:
    """Split into segments; the flag tells a dotted key (True) from a bracketed one."""
    tokens: list[tuple[Segment, bool]] = []
    pos = 1  # past the "$"
    while pos < len(text):
        char = text[pos]
        if char == ".":
            match = _KEY.match(text, pos + 1)
            if match is None:
                raise RefSyntaxError(text, f"expected a key after '.' at position {pos}")
            tokens.append((match.group(), True))
        elif (match := _INDEX.match(text, pos)) is not None:
            tokens.append((int(match.group(1)), False))
        elif (match := _QUOTED.match(text, pos)) is not None:
            try:
                key = json.loads(match.group(1))
            except ValueError:
                raise RefSyntaxError(text, f"bad quoted key at position {pos}") from None
            tokens.append((key, False))
        elif char == "[":
            raise RefSyntaxError(text, f'expected [<index>] or ["<key>"] at position {pos}')
        else:
            raise RefSyntaxError(text, f"unexpected character {char!r} at position {pos}")
        pos = match.end()
    if not tokens or not isinstance(tokens[0][0], str):
        raise RefSyntaxError(text, "a reference starts with a root key, e.g. $.input")
    return tokens


def _parse_step_ref(text: str, tokens: list[tuple[Segment, bool]]) -> Ref:
    id_parts: list[str] = []
    for position, (part, dotted) in enumerate(tokens):
        if dotted and part == "output" and id_parts:
            step_id = ".".join(id_parts)
            if not STEP_ID_PATTERN.fullmatch(step_id):
                raise RefSyntaxError(text, f"{step_id!r} is not a valid step id")
            return Ref(Root.STEPS, tuple(t for t, _ in tokens[position + 1 :]), step_id)
        if not isinstance(part, str):
            break
        id_parts.append(part)
    raise RefSyntaxError(text, "a step reference has the form $.steps.<id>.output[...]")


def iter_ref_strings(value: object, where: str = "") -> Iterator[tuple[str, str]]:
    """Every reference string inside ``value`` with its location suffix (``.a[0].b``)."""
    if isinstance(value, str):
        if is_ref(value):
            yield where, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from iter_ref_strings(child, where + format_segment(key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from iter_ref_strings(child, f"{where}[{index}]")


def find_refs(value: JsonValue) -> Iterator[tuple[str, Ref]]:
    """Every reference inside ``value``, parsed; raises :class:`RefSyntaxError` on a bad one."""
    for where, text in iter_ref_strings(value):
        yield where, parse_ref(text)


def resolve(value: JsonValue, ctx: Context) -> JsonValue:
    """``value`` with every reference replaced by what it points to in ``ctx``."""
    if isinstance(value, str):
        return lookup(_parse_for_resolve(value), ctx) if is_ref(value) else value
    if isinstance(value, dict):
        return {key: resolve(child, ctx) for key, child in value.items()}
    if isinstance(value, list):
        return [resolve(child, ctx) for child in value]
    return value


def _parse_for_resolve(text: str) -> Ref:
    # parse_spec rejects bad syntax up front; this only guards direct callers.
    try:
        return parse_ref(text)
    except RefSyntaxError as exc:
        raise ResolutionError(f"{text}: invalid reference: {exc.reason}") from None


def lookup(ref: Ref, ctx: Context) -> JsonValue:
    """The value ``ref`` points to, or :class:`ResolutionError` saying where the path broke."""
    current: JsonValue
    if ref.root is Root.INPUT:
        current = ctx.input
    elif ref.root is Root.STEPS:
        assert ref.step_id is not None
        if ref.step_id not in ctx.outputs:
            raise ResolutionError(f"{ref}: step {ref.step_id!r} has not completed")
        current = ctx.outputs[ref.step_id]
    else:
        if ctx.index is None:
            raise ResolutionError(f"{ref}: only bound inside a for_each step")
        current = ctx.item if ref.root is Root.ITEM else ctx.index
    for depth, segment in enumerate(ref.path):
        child = _step_into(current, segment)
        if isinstance(child, _Missing):
            # Name the container when the break is above the last segment.
            where = "" if depth == len(ref.path) - 1 else f" (at {ref.prefix(depth)})"
            raise ResolutionError(f"{ref}: {child.reason}{where}")
        current = child
    return current


@dataclass(frozen=True)
class _Missing:
    reason: str


def _step_into(value: JsonValue, segment: Segment) -> JsonValue | _Missing:
    if isinstance(segment, int):
        if not isinstance(value, list):
            return _Missing(f"cannot index {json_kind(value)} with [{segment}]")
        if segment >= len(value):
            return _Missing(f"index {segment} out of range (length {len(value)})")
        return value[segment]
    if not isinstance(value, dict):
        return _Missing(f"cannot index {json_kind(value)} with key {segment!r}")
    if segment not in value:
        keys = list(value)
        shown = repr(keys[:_MAX_KEYS_SHOWN])
        if len(keys) > _MAX_KEYS_SHOWN:
            shown = shown[:-1] + f", ... ({len(keys)} keys)]"
        return _Missing(f"key {segment!r} not found in object with keys {shown}")
    return value[segment]
