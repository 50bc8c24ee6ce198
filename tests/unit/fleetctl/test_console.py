"""Output for people: rich on a terminal, plain stable text on a pipe; tail's lines."""

from __future__ import annotations

import io

import pytest
from rich.text import Text

from fleet.messages import EventKind, WorkflowError, WorkflowEvent
from fleetctl.commands.workflows import budget_text, describe
from fleetctl.console import Column, Table, echo, format_duration

pytestmark = pytest.mark.unit

CREDIT = 1_000_000


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _table() -> Table:
    table = Table([Column("NAME"), Column("COUNT", right=True), Column("NOTE")])
    table.add("a", "1", "first")
    table.add("longer", "12345", "")
    return table


def test_a_piped_table_is_plain_text_columns_two_spaces_apart() -> None:
    assert _table().plain().splitlines() == [
        "NAME    COUNT  NOTE",
        "a           1  first",
        "longer  12345",
    ]
    out = io.StringIO()
    _table().print(out)
    assert out.getvalue() == _table().plain() + "\n"  # not a terminal: no box, no colour


def test_a_table_on_a_terminal_is_drawn_by_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    _table().print(out)
    drawn = out.getvalue()
    assert "\x1b[" in drawn  # colour: the bold header
    assert "─" in drawn  # rich's rule under the header
    assert "longer" in drawn and "12345" in drawn


def test_a_streamed_row_keeps_fixed_widths() -> None:
    table = Table([Column("ID", width=4), Column("N", width=3, right=True), Column("MSG")])
    assert table.header_text() == "ID     N MSG"
    assert table.row_text(["0:1", "7", "a long message"]) == "0:1    7 a long message"


def test_echo_colours_only_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    piped, terminal = io.StringIO(), Terminal()
    for stream in (piped, terminal):
        echo("12:00", Text("FAILED", style="red"), "[not markup] :smile:", stream=stream)
    assert piped.getvalue() == "12:00 FAILED [not markup] :smile:\n"
    assert "\x1b[31m" in terminal.getvalue() and "[not markup] :smile:" in terminal.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    echo(Text("FAILED", style="red"), stream=plain)
    assert plain.getvalue() == "FAILED\n"


def test_a_long_line_is_never_wrapped_on_a_pipe() -> None:
    out = io.StringIO()
    echo("x" * 500, stream=out)
    assert out.getvalue() == "x" * 500 + "\n"


@pytest.mark.parametrize(
    ("ms", "text"),
    [(None, "-"), (0, "0 ms"), (1_500, "1.5 s"), (61_000, "1 m 01 s"), (7_380_000, "2 h 03 m")],
)
def test_durations(ms: int | None, text: str) -> None:
    assert format_duration(ms) == text


def _event(kind: EventKind, **fields: object) -> WorkflowEvent:
    return WorkflowEvent(
        workflow_id="wf-1", kind=kind, submitted_at_ms=1_000, at_ms=2_500, **fields
    )


def test_a_completed_line_shows_the_output_and_the_budget_in_credits() -> None:
    event = _event(
        EventKind.COMPLETED,
        output={"v": 42},
        budget={"limit": 4_500_000, "spent": 2 * CREDIT, "holds": {}, "top_ups": {}},
    )
    assert describe(event) == 'output {"v":42}; budget: spent 2 of 4.5 credits'


def test_a_failed_line_says_the_cause() -> None:
    error = WorkflowError(type="ResolutionError", message="no numbers", step_id="score", attempt=1)
    assert describe(_event(EventKind.FAILED, error=error)) == (
        "cause ResolutionError at step score (attempt 1): no numbers"
    )
    cancelled = _event(EventKind.CANCELLED, error=WorkflowError(type="Cancelled", message="ops"))
    assert describe(cancelled) == "cause Cancelled: ops"


def test_a_long_output_is_cut_with_a_pointer_to_json() -> None:
    line = describe(_event(EventKind.COMPLETED, output={"text": "x" * 1_000}))
    assert len(line) < 260 and line.endswith("… (--json: all of it)")


def test_steps_and_acceptance() -> None:
    assert describe(_event(EventKind.STEP_COMPLETED, step_id="a")) == "step a"
    started = _event(EventKind.STEP_STARTED, step_id="each", index=2, attempt=1)
    assert describe(started) == "step each[2] (attempt 1)"
    done = _event(EventKind.STEP_COMPLETED, step_id="f", attempt=2, worker_id="w-1")
    assert describe(done) == "step f (attempt 2, on w-1)"
    assert describe(_event(EventKind.ACCEPTED, workflow_name="review")) == "review"


def test_budgets_that_are_not_budgets_show_nothing() -> None:
    assert budget_text(None) == ""
    assert budget_text({"limit": "x", "spent": 1}) == ""
    assert budget_text({"limit": 1, "spent": -1}) == ""
