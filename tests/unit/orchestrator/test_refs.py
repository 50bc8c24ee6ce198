from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue

from fleet.errors import ResolutionError
from orchestrator.refs import (
    Context,
    Ref,
    RefSyntaxError,
    Root,
    find_refs,
    is_ref,
    parse_ref,
    resolve,
)

pytestmark = pytest.mark.unit

CTX = Context(
    input={"alert": "disk full", "hosts": ["web-1", "web-2"], "user name": "ann"},
    outputs={
        "triage": {"category": "disk", "hosts": [{"name": "web-1"}, {"name": "web-2"}]},
        "fetch.v2": [10, 20],
        "empty": None,
    },
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$.input", Ref(Root.INPUT)),
        ("$.input.alert", Ref(Root.INPUT, ("alert",))),
        ("$.input.hosts[1]", Ref(Root.INPUT, ("hosts", 1))),
        ('$.input["user name"]', Ref(Root.INPUT, ("user name",))),
        ("$.steps.triage.output", Ref(Root.STEPS, (), "triage")),
        (
            "$.steps.triage.output.hosts[0].name",
            Ref(Root.STEPS, ("hosts", 0, "name"), "triage"),
        ),
        ("$.steps.fetch.v2.output[1]", Ref(Root.STEPS, (1,), "fetch.v2")),
        ('$.steps["a.output"].output.output', Ref(Root.STEPS, ("output",), "a.output")),
        ("$.item", Ref(Root.ITEM)),
        ("$.item.host[2][0]", Ref(Root.ITEM, ("host", 2, 0))),
        ("$.index", Ref(Root.INDEX)),
    ],
)
def test_parse(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "$.input.alert",
        "$.steps.triage.output.hosts[0].name",
        '$.input["user name"][3]',
        '$.steps["a.output"].output',
        '$.steps["a..b"].output',
        "$.item",
    ],
)
def test_canonical_text_round_trips(text: str) -> None:
    assert str(parse_ref(text)) == text
    assert parse_ref(str(parse_ref(text))) == parse_ref(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("$.", "expected a key after '.' at position 1"),
        ("$.input.", "expected a key after '.' at position 7"),
        ("$.input..x", "expected a key after '.' at position 7"),
        ("$.input[-1]", 'expected [<index>] or ["<key>"] at position 7'),
        ("$.input[x]", 'expected [<index>] or ["<key>"] at position 7'),
        ("$.input.a b", "unexpected character ' ' at position 9"),
        ("$.output", "unknown root 'output'"),
        ("$.steps", "a step reference has the form $.steps.<id>.output[...]"),
        ("$.steps.a", "a step reference has the form $.steps.<id>.output[...]"),
        ("$.steps.output", "a step reference has the form $.steps.<id>.output[...]"),
        ("$.steps.a[0].output", "a step reference has the form $.steps.<id>.output[...]"),
        ('$.steps["a b"].output', "'a b' is not a valid step id"),
        ("$.index.x", "$.index is the element position (a number); it has no path"),
    ],
)
def test_syntax_errors_say_why(text: str, reason: str) -> None:
    with pytest.raises(RefSyntaxError) as caught:
        parse_ref(text)
    assert caught.value.text == text
    assert caught.value.reason.startswith(reason)


def test_resolve_replaces_references_at_any_depth() -> None:
    value: JsonValue = {
        "text": "$.input.alert",
        "first": "$.steps.triage.output.hosts[0].name",
        "all": ["$.input.hosts", {"n": "$.steps.fetch.v2.output[1]"}],
        "whole": "$.steps.empty.output",
        "quoted": '$.input["user name"]',
    }
    assert resolve(value, CTX) == {
        "text": "disk full",
        "first": "web-1",
        "all": [["web-1", "web-2"], {"n": 20}],
        "whole": None,
        "quoted": "ann",
    }


@pytest.mark.parametrize(
    "literal",
    ["plain", "see $.input.alert", "$", "$input", "", " $.input", 3, 2.5, True, None],
)
def test_literals_are_left_alone(literal: JsonValue) -> None:
    assert resolve(literal, CTX) == literal
    assert resolve({"k": [literal]}, CTX) == {"k": [literal]}
    assert not is_ref(literal)


def test_resolved_values_are_data_not_references() -> None:
    ctx = Context(input={"template": "$.input.template"})
    assert resolve("$.input.template", ctx) == "$.input.template"


def test_item_and_index_are_bound_for_fan_out_elements() -> None:
    ctx = Context(input=None, outputs={}, item={"host": "web-2"}, index=1)
    assert resolve({"h": "$.item.host", "i": "$.index"}, ctx) == {"h": "web-2", "i": 1}
    assert resolve("$.item", Context(item=None, index=0)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "$.steps.triage.output.hosts[0].name.first",
            "$.steps.triage.output.hosts[0].name.first: cannot index a string with key 'first'",
        ),
        (
            "$.steps.triage.output.category.x",
            "$.steps.triage.output.category.x: cannot index a string with key 'x'",
        ),
        (
            "$.input.alert[0]",
            "$.input.alert[0]: cannot index a string with [0]",
        ),
        (
            "$.input.hosts[3]",
            "$.input.hosts[3]: index 3 out of range (length 2)",
        ),
        (
            "$.input.hosts.first",
            "$.input.hosts.first: cannot index a list (length 2) with key 'first'",
        ),
        (
            "$.steps.triage.output.owner.name",
            "$.steps.triage.output.owner.name: key 'owner' not found in object with keys "
            "['category', 'hosts'] (at $.steps.triage.output)",
        ),
        (
            "$.steps.empty.output[0]",
            "$.steps.empty.output[0]: cannot index null with [0]",
        ),
        ("$.steps.later.output", "$.steps.later.output: step 'later' has not completed"),
        ("$.item", "$.item: only bound inside a for_each step"),
        ("$.index", "$.index: only bound inside a for_each step"),
        ("$.nope", "$.nope: invalid reference: unknown root 'nope'"),
    ],
)
def test_resolution_errors_say_where_the_path_broke(text: str, message: str) -> None:
    with pytest.raises(ResolutionError) as caught:
        resolve({"x": [text]}, CTX)
    assert str(caught.value).startswith(message)


def test_the_missing_key_message_quotes_the_brief() -> None:
    ctx = Context(outputs={"triage": {"category": "disk"}})
    with pytest.raises(ResolutionError) as caught:
        resolve("$.steps.triage.output.hosts", ctx)
    assert str(caught.value) == (
        "$.steps.triage.output.hosts: key 'hosts' not found in object with keys ['category']"
    )


def test_long_key_lists_are_truncated() -> None:
    ctx = Context(input={f"k{i}": i for i in range(50)})
    with pytest.raises(ResolutionError) as caught:
        resolve("$.input.missing", ctx)
    assert "'k19', ... (50 keys)]" in str(caught.value)
    assert "'k20'" not in str(caught.value)


def test_find_refs_walks_dicts_and_lists_with_locations() -> None:
    value: JsonValue = {
        "a": "$.input.x",
        "b": [1, "literal", {"c": "$.steps.s.output[0]"}],
        "odd key": ["$.item"],
    }
    assert list(find_refs(value)) == [
        (".a", Ref(Root.INPUT, ("x",))),
        (".b[2].c", Ref(Root.STEPS, (0,), "s")),
        ('["odd key"][0]', Ref(Root.ITEM)),
    ]
    assert list(find_refs("$.index")) == [("", Ref(Root.INDEX))]
    assert list(find_refs({"x": "no refs", "y": [None, 1.5]})) == []


def test_find_refs_raises_on_bad_syntax() -> None:
    with pytest.raises(RefSyntaxError):
        list(find_refs({"a": ["$.input[", "$.input"]}))


# --- property: resolving a path into a random document returns the value at that path

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_docs = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=25,
)


@st.composite
def doc_and_path(draw: st.DrawFn) -> tuple[Any, tuple[str | int, ...], Any]:
    """A document, a random valid path into it, and the value found there by hand."""
    doc = draw(json_docs)
    path: list[str | int] = []
    current = doc
    while draw(st.booleans()):
        if isinstance(current, list) and current:
            index = draw(st.integers(0, len(current) - 1))
            path.append(index)
            current = current[index]
        elif isinstance(current, dict) and current:
            key = draw(st.sampled_from(sorted(current)))
            path.append(key)
            current = current[key]
        else:
            break
    return doc, tuple(path), current


step_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)


@given(doc_and_path(), step_ids, st.sampled_from([Root.INPUT, Root.STEPS, Root.ITEM]))
def test_resolve_finds_the_value_at_any_valid_path(
    case: tuple[Any, tuple[str | int, ...], Any], step_id: str, root: Root
) -> None:
    doc, path, expected = case
    ref = Ref(root, path, step_id if root is Root.STEPS else None)
    text = str(ref)
    assert parse_ref(text) == ref
    ctx = Context(input=doc, outputs={step_id: doc}, item=doc, index=0)
    assert resolve(text, ctx) == expected
    assert resolve({"nested": [text]}, ctx) == {"nested": [expected]}
