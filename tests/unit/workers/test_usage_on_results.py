"""What a handler reports with ctx.report_usage reaches its result, whatever the ending."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleet import App, TaskContext
from fleet.errors import RetryableError
from fleet.messages import TaskAssigned, TaskStatus, UsageLine
from workers.bridge import HandlerThreads
from workers.execute import Outcome, execute

pytestmark = pytest.mark.unit

SPENT = [UsageLine(model="gpt-x", tokens_in=120, tokens_out=30, cost=4_200)]


@pytest.fixture(scope="module")
def threads() -> Iterator[HandlerThreads]:
    pool = HandlerThreads(2, name="test-usage")
    yield pool
    pool.shutdown(wait=False)


def run(handler: Callable[..., Any], threads: HandlerThreads, deadline_in_s: float = 30) -> Outcome:
    app = App()
    app.capability("cap", version="2.1.0")(handler)
    now = time.time()
    task = TaskAssigned(
        task_id="wf-1/s/0",
        workflow_id="wf-1",
        step_id="s",
        capability="cap",
        attempt=1,
        input={},
        deadline_ms=int((now + deadline_in_s) * 1000),
        dispatched_at_ms=int(now * 1000),
    )
    return asyncio.run(execute(app.get("cap"), task, worker_id="w-1", threads=threads))


def test_a_succeeded_result_carries_the_usage_and_the_version(threads: HandlerThreads) -> None:
    def handler(payload: Any, ctx: TaskContext) -> str:
        ctx.report_usage(tokens_in=100, tokens_out=30, cost="0.004", model="gpt-x")
        ctx.report_usage(tokens_in=20, cost="0.0002", model="gpt-x")
        return "ok"

    result = run(handler, threads).result
    assert result.status is TaskStatus.SUCCEEDED
    assert (result.usage, result.version) == (SPENT, "2.1.0")


def test_a_failed_attempt_still_carries_what_it_consumed(threads: HandlerThreads) -> None:
    async def handler(payload: Any, ctx: TaskContext) -> str:
        ctx.report_usage(tokens_in=120, tokens_out=30, cost="0.0042", model="gpt-x")
        raise RetryableError("the model's answer did not parse")

    result = run(handler, threads).result
    assert result.status is TaskStatus.FAILED and result.usage == SPENT


def test_a_timed_out_attempt_carries_the_usage_reported_before_its_deadline(
    threads: HandlerThreads,
) -> None:
    async def handler(payload: Any, ctx: TaskContext) -> str:
        ctx.report_usage(tokens_in=120, tokens_out=30, cost="0.0042", model="gpt-x")
        await asyncio.sleep(30)
        return "never"

    outcome = run(handler, threads, deadline_in_s=0.3)
    assert outcome.timed_out and outcome.result.usage == SPENT


def test_a_bad_report_fails_the_task_with_the_reason(threads: HandlerThreads) -> None:
    def handler(payload: Any, ctx: TaskContext) -> str:
        ctx.report_usage(tokens_in=-5)
        return "unreachable"

    result = run(handler, threads).result
    assert result.status is TaskStatus.FAILED and result.error is not None
    assert "report_usage: tokens_in must be between 0" in result.error.message
    assert result.usage == []


def test_no_report_no_usage(threads: HandlerThreads) -> None:
    assert run(lambda payload: "ok", threads).result.usage == []


def test_a_handler_says_how_sure_it_is_and_the_result_carries_it(threads: HandlerThreads) -> None:
    def handler(payload: Any, ctx: TaskContext) -> str:
        ctx.set_confidence(0.25)
        ctx.set_confidence(0.75)  # the last call counts
        assert ctx.confidence == 0.75
        return "ok"

    assert run(handler, threads).result.confidence == 0.75
    assert run(lambda payload: "ok", threads).result.confidence is None

    def unsure(payload: Any, ctx: TaskContext) -> str:
        ctx.set_confidence(1.5)
        return "unreachable"

    error = run(unsure, threads).result.error
    assert error is not None and "set_confidence: expected 0 to 1, got 1.5" in error.message
