from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import SpecError
from orchestrator.spec import StepSpec, WorkflowSpec, parse_spec
from orchestrator.specfile import load_spec_file

pytestmark = pytest.mark.unit

EXAMPLE_YAML = """\
name: incident-response
input: {alert: "disk full on web-1, web-2"}
steps:
  - id: triage
    capability: classify
    input: {text: "$.input.alert"}
  - id: enrich                      # fan-out: one task per element of the list
    capability: lookup
    needs: [triage]
    for_each: "$.steps.triage.output.hosts"
    input: {host: "$.item"}
  - id: report                      # fan-in: enrich's outputs as a list, in element order
    capability: summarize
    needs: [enrich]
    input: {findings: "$.steps.enrich.output"}
    retries: 2
output: "$.steps.report.output"
"""


def step(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "capability": fields.pop("capability", "work"), **fields}


def spec(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps), **fields}


def problems_of(doc: object, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(doc, **kwargs)
    return caught.value.problems


def only_problem(doc: object, **kwargs: Any) -> tuple[str, str]:
    problems = problems_of(doc, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.fixture
def example(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "incident.yaml"
    path.write_text(EXAMPLE_YAML)
    doc = load_spec_file(path)
    assert isinstance(doc, dict)
    return doc


def test_the_example_parses_with_its_defaults(example: dict[str, Any]) -> None:
    parsed = parse_spec(example, has_capability=lambda cap: True)
    assert isinstance(parsed, WorkflowSpec)
    assert parsed.name == "incident-response"
    assert parsed.input == {"alert": "disk full on web-1, web-2"}
    assert [s.id for s in parsed.steps] == ["triage", "enrich", "report"]
    enrich = parsed.step("enrich")
    assert enrich.for_each == "$.steps.triage.output.hosts"
    assert enrich.needs == ["triage"]
    assert enrich.input == {"host": "$.item"}
    assert (enrich.retries, enrich.timeout_s) == (0, 300.0)
    assert (enrich.backoff_s, enrich.max_backoff_s) == (1.0, 60.0)
    assert parsed.deadline_s is None
    assert parsed.step("report").retries == 2
    assert parsed.output == "$.steps.report.output"


def test_a_minimal_step_gets_empty_needs_and_input() -> None:
    parsed = parse_spec(spec(step("a")))
    assert parsed.steps == [StepSpec(id="a", capability="work")]
    assert parsed.steps[0].needs == []
    assert parsed.steps[0].input == {}
    assert parsed.output is None


def test_a_non_object_document_is_rejected() -> None:
    assert only_problem(["a"]) == ("spec", "expected an object, got a list (length 1)")


def test_a_typo_in_a_field_name_is_an_unknown_field(example: dict[str, Any]) -> None:
    example["steps"][1]["retires"] = 2
    where, why = only_problem(example)
    assert where == "steps[1] (id 'enrich').retires"
    assert why.startswith("unknown field (allowed: id, capability, needs, input, for_each")


def test_an_unknown_top_level_field_is_rejected(example: dict[str, Any]) -> None:
    example["outputs"] = "$.steps.report.output"
    where, why = only_problem(example)
    assert where == "outputs"
    assert "unknown field" in why


def test_missing_required_fields_are_reported_per_step() -> None:
    problems = problems_of({"steps": [{"id": "a"}]})
    assert ("name", "required field is missing") in problems
    assert ("steps[0] (id 'a').capability", "required field is missing") in problems


def test_wrong_types_are_not_coerced() -> None:
    where, why = only_problem(spec(step("a", retries="2")))
    assert where == "steps[0] (id 'a').retries"
    assert why == 'expected an integer, got a string ("2")'


def test_negative_retries_and_non_positive_timeouts_are_rejected() -> None:
    problems = problems_of(spec(step("a", retries=-1), step("b", timeout_s=0)))
    assert problems == [
        ("steps[0] (id 'a').retries", "must be at least 0, got -1"),
        ("steps[1] (id 'b').timeout_s", "must be greater than 0.0, got 0"),
    ]


def test_backoff_and_deadline_are_parsed() -> None:
    parsed = parse_spec(
        spec(step("a", retries=3, backoff_s=0.5, max_backoff_s=30), deadline_s=3600)
    )
    a = parsed.step("a")
    assert (a.backoff_s, a.max_backoff_s, parsed.deadline_s) == (0.5, 30.0, 3600.0)
    zero = parse_spec(spec(step("a", backoff_s=0, max_backoff_s=0))).step("a")
    assert (zero.backoff_s, zero.max_backoff_s) == (0.0, 0.0)


def test_max_backoff_below_backoff_is_rejected() -> None:
    assert only_problem(spec(step("a", backoff_s=5, max_backoff_s=2))) == (
        "steps[0] (id 'a').max_backoff_s",
        "must be at least backoff_s (5.0), got 2.0",
    )
    # The default max_backoff_s (60) is checked too, so the fix is named.
    assert only_problem(spec(step("a", backoff_s=120))) == (
        "steps[0] (id 'a').max_backoff_s",
        "must be at least backoff_s (120.0), got 60.0",
    )


def test_bad_backoffs_and_deadlines_are_rejected() -> None:
    problems = problems_of(
        spec(step("a", backoff_s=-1), step("b", max_backoff_s=float("nan")), deadline_s=0)
    )
    assert problems == [
        ("steps[0] (id 'a').backoff_s", "must be at least 0.0, got -1"),
        ("steps[1] (id 'b').max_backoff_s", "expected a finite number, got nan"),
        ("deadline_s", "must be greater than 0.0, got 0"),
    ]
    where, why = only_problem(spec(step("a"), deadline_s="1h"))
    assert (where, why) == ("deadline_s", 'expected a number, got a string ("1h")')


def test_an_infinite_timeout_is_rejected() -> None:
    where, why = only_problem(spec(step("a", timeout_s=float("inf"))))
    assert where == "steps[0] (id 'a').timeout_s"
    assert why == "expected a finite number, got inf"


@pytest.mark.parametrize("bad", ["-lead", "has space", "tasks/x", "é", ""])
def test_capability_names_must_be_topic_safe(bad: str) -> None:
    where, why = only_problem(spec(step("a", capability=bad)))
    assert where == "steps[0] (id 'a').capability"
    assert f"{bad!r} is not a valid name" in why


def test_capability_names_are_bounded_so_topic_names_fit() -> None:
    where, why = only_problem(spec(step("a", capability="c" * 201)))
    assert where == "steps[0] (id 'a').capability"
    assert why == "too long (at most 200 characters)"
    parse_spec(spec(step("a", capability="c" * 200)))


def test_step_ids_use_the_same_alphabet() -> None:
    where, why = only_problem(spec(step("a/b")))
    assert where == "steps[0] (id 'a/b').id"
    assert "'a/b' is not a valid name" in why


def test_steps_must_not_be_empty() -> None:
    assert only_problem(spec()) == ("steps", "at least one step is required")


def test_non_json_values_in_input_are_located_inside_the_value() -> None:
    doc = spec(step("a", input={"hosts": [1, {"when": {1, 2}}]}))
    where, why = only_problem(doc)
    assert where == "steps[0] (id 'a').input.hosts[1].when"
    assert why == "not a JSON value: a set"


def test_non_string_object_keys_are_rejected() -> None:
    where, why = only_problem(spec(step("a"), output={"k": {3: "x"}}))
    assert where == "output.k[3]"
    assert why == "object keys must be strings, got a number (3)"


def test_duplicate_step_ids_name_the_first_use() -> None:
    where, why = only_problem(spec(step("a"), step("b"), step("a")))
    assert where == "steps[2] (id 'a').id"
    assert why == "duplicate step id 'a' (first used by steps[0])"


def test_needs_naming_an_unknown_step() -> None:
    where, why = only_problem(spec(step("a"), step("b", needs=["a", "triage"])))
    assert where == "steps[1] (id 'b').needs[1]"
    assert why == "unknown step 'triage' (steps: a, b)"


def test_a_cycle_is_spelled_out() -> None:
    doc = spec(step("a", needs=["c"]), step("b", needs=["a"]), step("c", needs=["b"]))
    where, why = only_problem(doc)
    assert where == "steps[0] (id 'a').needs"
    assert why == "cycle: a -> c -> b -> a (each step needs the next)"


def test_a_step_needing_itself_is_a_cycle() -> None:
    where, why = only_problem(spec(step("a", needs=["a"])))
    assert (where, why) == ("steps[0] (id 'a').needs", "cycle: a -> a (each step needs the next)")


def test_for_each_must_be_a_reference(example: dict[str, Any]) -> None:
    example["steps"][1]["for_each"] = "hosts"
    where, why = only_problem(example)
    assert where == "steps[1] (id 'enrich').for_each"
    assert why.startswith("must be a $. reference to a list")
    assert "got 'hosts'" in why


def test_for_each_may_not_read_a_step_outside_its_needs(example: dict[str, Any]) -> None:
    example["steps"][1]["needs"] = []
    where, why = only_problem(example)
    assert where == "steps[1] (id 'enrich').for_each"
    assert why.startswith("$.steps.triage.output.hosts: step 'triage' is not in needs")


def test_input_may_not_read_a_step_outside_its_needs(example: dict[str, Any]) -> None:
    example["steps"][2]["input"]["alert"] = "$.steps.triage.output"
    example["steps"].append(step("audit", input={"x": ["$.steps.report.output"]}))
    where, why = only_problem(example)
    assert where == "steps[3] (id 'audit').input.x[0]"
    assert why == (
        "$.steps.report.output: step 'report' is not in needs (directly or transitively), "
        "so its output may not exist yet; add it to needs"
    )


def test_transitive_needs_are_enough(example: dict[str, Any]) -> None:
    # report needs enrich, which needs triage: triage's output surely exists by then.
    example["steps"][2]["input"]["alert"] = "$.steps.triage.output.summary"
    parse_spec(example)


def test_a_step_may_not_read_its_own_output() -> None:
    where, why = only_problem(spec(step("a", input="$.steps.a.output")))
    assert (where, why) == (
        "steps[0] (id 'a').input",
        "$.steps.a.output: a step cannot read its own output",
    )


def test_references_to_unknown_steps() -> None:
    where, why = only_problem(spec(step("a", input={"x": "$.steps.ghost.output"})))
    assert (where, why) == (
        "steps[0] (id 'a').input.x",
        "$.steps.ghost.output: unknown step 'ghost'",
    )


def test_the_workflow_output_may_read_any_step_but_not_unknown_ones() -> None:
    parse_spec(
        spec(step("a"), step("b"), output={"a": "$.steps.a.output", "b": "$.steps.b.output"})
    )
    where, why = only_problem(spec(step("a"), output=["$.steps.zz.output"]))
    assert (where, why) == ("output[0]", "$.steps.zz.output: unknown step 'zz'")


@pytest.mark.parametrize("root", ["$.item", "$.index"])
def test_item_and_index_outside_a_for_each_step(root: str) -> None:
    where, why = only_problem(spec(step("a", input={"v": root})))
    assert where == "steps[0] (id 'a').input.v"
    assert why == f"{root}: only bound in the input of a for_each step"


def test_item_is_not_bound_inside_for_each_itself() -> None:
    where, why = only_problem(spec(step("a", for_each="$.item.hosts", input="$.item")))
    assert (where, why) == (
        "steps[0] (id 'a').for_each",
        "$.item.hosts: only bound in the input of a for_each step",
    )


def test_item_is_not_bound_in_the_workflow_output() -> None:
    assert only_problem(spec(step("a"), output="$.index")) == (
        "output",
        "$.index: only bound in the input of a for_each step",
    )


def test_unknown_reference_roots() -> None:
    where, why = only_problem(spec(step("a", input={"x": "$.outputs.a"})))
    assert where == "steps[0] (id 'a').input.x"
    assert why.startswith("invalid reference '$.outputs.a': unknown root 'outputs'")
    assert "$.input, $.steps.<id>.output, $.item or $.index" in why


def test_step_references_must_name_output() -> None:
    where, why = only_problem(spec(step("a"), step("b", needs=["a"], input="$.steps.a.result")))
    assert where == "steps[1] (id 'b').input"
    assert why == (
        "invalid reference '$.steps.a.result': a step reference has the form "
        "$.steps.<id>.output[...]"
    )


def test_invalid_path_syntax_is_located() -> None:
    where, why = only_problem(spec(step("a", input={"q": ["ok", "$.input.hosts[first]"]})))
    assert where == "steps[0] (id 'a').input.q[1]"
    assert why == (
        "invalid reference '$.input.hosts[first]': expected [<index>] or [\"<key>\"] at position 13"
    )


def test_strings_merely_containing_a_reference_are_literals() -> None:
    parsed = parse_spec(spec(step("a", input={"note": "see $.input.x", "cost": "$5"})))
    assert parsed.steps[0].input == {"note": "see $.input.x", "cost": "$5"}


def test_the_workflow_input_is_data_not_references() -> None:
    parse_spec(spec(step("a"), input={"template": "$.steps.nowhere.output"}))


def test_capabilities_without_a_task_topic() -> None:
    doc = spec(step("a", capability="classify"), step("b", capability="translate"))
    where, why = only_problem(doc, has_capability=lambda cap: cap == "classify")
    assert (where, why) == (
        "steps[1] (id 'b').capability",
        "capability 'translate' has no task topic",
    )


def test_every_problem_is_reported_at_once(example: dict[str, Any]) -> None:
    doc = copy.deepcopy(example)
    doc["steps"][0]["capability"] = "no such"  # shape
    doc["steps"][1]["for_each"] = "$.item"  # item outside a fan-out input
    doc["steps"][2]["needs"] = ["enrich", "nobody"]  # unknown need
    doc["steps"][2]["input"]["x"] = "$.outputs"  # unknown root
    doc["steps"].append(step("report"))  # duplicate
    doc["steps"].append(step("loop", needs=["loop"]))  # cycle
    doc["output"] = "$.steps.missing.output"  # unknown step in output
    problems = dict(problems_of(doc, has_capability=lambda cap: cap != "lookup"))
    assert set(problems) == {
        "steps[0] (id 'triage').capability",
        "steps[1] (id 'enrich').for_each",
        "steps[1] (id 'enrich').capability",
        "steps[2] (id 'report').needs[1]",
        "steps[2] (id 'report').input.x",
        "steps[3] (id 'report').id",
        "steps[4] (id 'loop').needs",
        "output",
    }
    assert problems["steps[1] (id 'enrich').capability"] == "capability 'lookup' has no task topic"
    assert problems["steps[4] (id 'loop').needs"].startswith("cycle: loop -> loop")


def test_an_unknown_field_does_not_hide_a_bad_reference_in_the_same_step() -> None:
    # Issue 10: a typo'd field made the whole step skip the reference checks, so the
    # user fixed one problem and only then met the next.
    doc = spec(step("a", retry=3, input={"x": "$.steps.nope.output"}, needs=["gone"]))
    assert problems_of(doc) == [
        ("steps[0] (id 'a').retry", problems_of(spec(step("a", retry=3)))[0][1]),
        ("steps[0] (id 'a').needs[0]", "unknown step 'gone' (steps: a)"),
        ("steps[0] (id 'a').input.x", "$.steps.nope.output: unknown step 'nope'"),
    ]


def test_a_malformed_step_keeps_its_well_formed_links() -> None:
    doc = spec(
        step("fan", retries="3", for_each=7, needs=["b", 3], input={"i": "$.item"}),
        step("b", capability="bad name", input={"x": "$.steps.fan.output"}),
        step(
            "c",
            needs=["c"],
            input={"1": "$.steps.nowhere.output"},
            timeout_s=-1,
            capability="gone",
        ),
    )
    problems = problems_of(doc, has_capability=lambda cap: cap != "gone")
    assert problems == [
        ("steps[0] (id 'fan').needs[1]", "expected a string, got a number (3)"),
        ("steps[0] (id 'fan').for_each", "expected a string, got a number (7)"),
        ("steps[0] (id 'fan').retries", 'expected an integer, got a string ("3")'),
        ("steps[1] (id 'b').capability", problems[3][1]),
        ("steps[2] (id 'c').timeout_s", "must be greater than 0.0, got -1"),
        # The links of the malformed steps, still checked: the well-formed need of 'fan'
        # (its $.item is bound, for_each was given), b's read outside its needs, c's cycle,
        # unknown reference and capability without a topic; none reported twice.
        ("steps[2] (id 'c').needs", "cycle: c -> c (each step needs the next)"),
        (
            "steps[1] (id 'b').input.x",
            "$.steps.fan.output: step 'fan' is not in needs (directly or transitively), so "
            "its output may not exist yet; add it to needs",
        ),
        ("steps[2] (id 'c').input.1", "$.steps.nowhere.output: unknown step 'nowhere'"),
        ("steps[2] (id 'c').capability", "capability 'gone' has no task topic"),
    ]


def test_the_error_message_lists_every_problem() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec(step("a", needs=["x"]), step("a")))
    assert str(caught.value) == (
        "steps[1] (id 'a').id: duplicate step id 'a' (first used by steps[0]); "
        "steps[0] (id 'a').needs[0]: unknown step 'x' (steps: a)"
    )


def test_load_spec_file_reads_json(tmp_path: Path, example: dict[str, Any]) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(example))
    assert load_spec_file(path) == example


def test_load_spec_file_keeps_dates_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: wf\ninput: {day: 2024-05-01}\nsteps: [{id: a, capability: c}]\n")
    doc = load_spec_file(path)
    assert isinstance(doc, dict)
    assert doc["input"] == {"day": "2024-05-01"}
    parse_spec(doc)


def test_load_spec_file_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_file(tmp_path / "missing.yaml")
    [(where, why)] = caught.value.problems
    assert where.endswith("missing.yaml")
    assert why == "cannot read file: No such file or directory"


def test_load_spec_file_reports_where_parsing_failed(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: wf\nsteps: [{id: a\n")
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    [(where, why)] = caught.value.problems
    assert where.startswith(f"{path}:3:")
    assert why.startswith("not valid YAML or JSON: ")


def test_load_spec_file_rejects_empty_and_binary_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="file is empty"):
        load_spec_file(empty)
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec_file(binary)
