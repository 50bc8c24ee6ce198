"""What the demo prints: its planned failures said to be planned, in the progress line and
in the summary, and a summary table that stays plain text when piped."""

from __future__ import annotations

import io

import pytest

from fleet.messages import EventKind, WorkflowError, WorkflowEvent
from fleetctl.demo import DemoWorkflow, build_workload, print_summary
from fleetctl.demo_progress import Progress

pytestmark = pytest.mark.unit


def _ended(workflow_id: str, kind: EventKind, error: str | None = None) -> WorkflowEvent:
    return WorkflowEvent(
        workflow_id=workflow_id,
        kind=kind,
        submitted_at_ms=1_000,
        at_ms=1_250,
        output={"count": 1} if kind is EventKind.COMPLETED else None,
        error=WorkflowError(type=error, message="x") if error else None,
    )


def test_the_workload_fails_some_workflows_on_purpose() -> None:
    workload = build_workload(40)
    assert sum(w.expect_failure for w in workload) == 2  # every 20th


def test_the_progress_line_says_the_failures_are_intended() -> None:
    out = io.StringIO()
    with Progress(4, stream=out) as progress:
        progress.ended("COMPLETED")
        progress.ended("FAILED", intended_failure=True)
        assert progress.failed_text() == "failed 1 (as intended)"
        progress.ended("FAILED")
        assert progress.failed_text() == "failed 2 (1 intended)"
    last = out.getvalue().splitlines()[-1]
    assert "3/4" in last and "failed 2 (1 intended)" in last and "\x1b[" not in last


def test_the_summary_separates_intended_failures_from_unexpected_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    workload = {
        "a": DemoWorkflow("incident-response", {}, {"count": 1}),
        "b": DemoWorkflow("document-review", {}, expect_failure=True),
        "c": DemoWorkflow("document-review", {}, expect_failure=True),
    }
    outcomes = {
        "a": _ended("a", EventKind.COMPLETED),
        "b": _ended("b", EventKind.FAILED, "ResolutionError"),
        "c": _ended("c", EventKind.FAILED, "ResolutionError"),
    }
    print_summary(workload, outcomes, elapsed_s=1.0)
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("workflow"))
    assert header.split() == [
        "workflow", "runs", "completed", "failed", "intended", "p50", "ms", "p99", "ms"
    ]  # fmt: skip
    review = next(line for line in lines if line.startswith("document-review"))
    assert review.split() == ["document-review", "2", "0", "2", "2", "250", "250"]
    assert "intended failures: 2 x ResolutionError (every 20th workflow" in out
    assert "unexpected" not in out and "\x1b[" not in out

    outcomes["a"] = _ended("a", EventKind.FAILED, "HandlerError")
    print_summary(workload, outcomes, elapsed_s=1.0)
    assert "unexpected failures: 1 x HandlerError" in capsys.readouterr().out
