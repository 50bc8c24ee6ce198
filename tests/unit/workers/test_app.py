"""The worker SDK: registration, loading, one task -> one TaskResult, and the example agents."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import fleet
import fleet.app as fleet_app
from fleet import App, TaskContext
from fleet.app import Capability
from fleet.errors import ConfigError, PermanentError, RetryableError
from fleet.kafka.client import FleetClient
from fleet.messages import TaskAssigned, TaskStatus
from fleet.settings import Settings
from fleet.topology import Topology
from workers.bridge import HandlerThreads
from workers.examples import app as examples
from workers.execute import Outcome, execute
from workers.loading import load_app

pytestmark = pytest.mark.unit


# -- registration ---------------------------------------------------------------------


def test_one_import_path_for_users() -> None:
    """``from fleet import ...`` is all an agent module or a client program needs."""
    assert {"App", "TaskContext", "RetryableError", "PermanentError", "FleetClient"} <= set(
        fleet.__all__
    )
    assert (fleet.App, fleet.TaskContext) == (fleet_app.App, fleet_app.TaskContext)
    assert fleet.FleetClient is FleetClient
    assert (fleet.RetryableError, fleet.PermanentError) == (RetryableError, PermanentError)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = fleet.Nope


def test_import_fleet_loads_neither_the_contract_nor_a_broker_client() -> None:
    """The SDK names load on first use, so the kernel's package init stays light for every
    pure module (each one imports ``fleet`` first)."""
    probe = (
        "import sys, fleet; print(sorted(m for m in ('fleet.app', 'fleet.kafka.client', "
        "'confluent_kafka') if m in sys.modules)); fleet.App; print('fleet.app' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["[]", "True"], done.stdout + done.stderr


def test_decorator_registers_and_returns_the_function_unchanged() -> None:
    app = App()

    def plain(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    assert app.capability("a.b")(plain) is plain
    assert app.capabilities == ["a.b"]
    assert "a.b" in app and "zzz" not in app
    assert app.get("a.b").handler is plain
    with pytest.raises(ConfigError, match="not registered"):
        app.get("zzz")


def test_signature_decides_sync_async_and_context_once() -> None:
    app = App()

    @app.capability("one")
    def one(payload: Any) -> Any: ...

    @app.capability("two")
    async def two(payload: Any, ctx: TaskContext) -> Any: ...

    @app.capability("varargs")
    def varargs(*args: Any) -> Any: ...

    @app.capability("optional-ctx")
    def optional(payload: Any, ctx: TaskContext | None = None) -> Any: ...

    class AsyncCallable:
        async def __call__(self, payload: Any) -> Any: ...

    app.capability("obj")(AsyncCallable())
    shapes = {n: (app.get(n).is_async, app.get(n).wants_context) for n in app.capabilities}
    assert shapes == {
        "one": (False, False),
        "two": (True, True),
        "varargs": (False, True),
        "optional-ctx": (False, True),
        "obj": (True, False),
    }


@pytest.mark.parametrize("name", ["", "-x", "has space", "a/b", "x" * 201])
def test_invalid_capability_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid name"):
        App().capability(name)


def test_duplicate_capability_is_an_error() -> None:
    app = App()
    app.capability("dup")(lambda p: p)
    with pytest.raises(ConfigError, match="registered twice"):
        app.capability("dup")(lambda p: p)


def test_handlers_with_the_wrong_shape_are_refused() -> None:
    app = App()
    with pytest.raises(ConfigError, match=r"\(payload\) or \(payload, ctx\)"):
        app.capability("none")(lambda: None)
    with pytest.raises(ConfigError, match=r"\(payload\) or \(payload, ctx\)"):
        app.capability("three")(lambda a, b, c: None)


# -- load_app ------------------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fleet_test_app_")]:
        del sys.modules[name]


def test_load_app_finds_the_examples() -> None:
    assert load_app("workers.examples:app") is examples


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("workers.examples", "must look like 'package.module:attribute'"),
        (":app", "must look like"),
        ("no_such_module_xyz:app", "app module 'no_such_module_xyz' not found"),
        ("workers.examples:nope", "has no attribute 'nope'"),
        ("workers.examples:classify", "is a function, not a fleet.App"),
        ("workers.examples:CATEGORIES", "is a dict, not a fleet.App"),
    ],
)
def test_load_app_bad_references_say_what_is_wrong(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_app(reference)


def test_load_app_reports_a_failing_import_inside_the_module(app_dir: Path) -> None:
    (app_dir / "fleet_test_app_broken.py").write_text("import not_installed_dep_xyz\n")
    with pytest.raises(ConfigError, match=r"importing app module .* failed: No module named"):
        load_app("fleet_test_app_broken:app")
    (app_dir / "fleet_test_app_raises.py").write_text("raise RuntimeError('bad config')\n")
    with pytest.raises(ConfigError, match="RuntimeError: bad config"):
        load_app("fleet_test_app_raises:app")


def test_load_app_refuses_an_empty_app_and_follows_dotted_attributes(app_dir: Path) -> None:
    (app_dir / "fleet_test_app_ok.py").write_text(
        "from fleet import App\n"
        "class Holder:\n    app = App()\n"
        "Holder.app.capability('x')(lambda p: p)\n"
        "empty = App()\n"
    )
    assert load_app("fleet_test_app_ok:Holder.app").capabilities == ["x"]
    with pytest.raises(ConfigError, match="no capabilities"):
        load_app("fleet_test_app_ok:empty")


# -- one task -> one TaskResult ----------------------------------------------------------


def task_for(
    capability: str = "cap", payload: Any = None, *, deadline_in_s: float | None = None
) -> TaskAssigned:
    now = time.time()
    return TaskAssigned(
        task_id="wf-1/step/0",
        workflow_id="wf-1",
        step_id="step",
        capability=capability,
        attempt=2,
        index=0,
        input=payload if payload is not None else {"x": 1},
        deadline_ms=None if deadline_in_s is None else int((now + deadline_in_s) * 1000),
        dispatched_at_ms=int(now * 1000),
    )


@pytest.fixture(scope="module")
def threads() -> Iterator[HandlerThreads]:
    pool = HandlerThreads(4, name="test-handler")
    yield pool
    pool.shutdown(wait=False)


def run_one(
    handler: Callable[..., Any],
    threads: HandlerThreads,
    task: TaskAssigned | None = None,
    **kwargs: Any,
) -> Outcome:
    app = App()
    app.capability("cap")(handler)
    return asyncio.run(
        execute(app.get("cap"), task or task_for(), worker_id="w-1", threads=threads, **kwargs)
    )


def test_sync_success_is_succeeded_with_output_and_identity(threads: HandlerThreads) -> None:
    outcome = run_one(lambda p: {"doubled": p["x"] * 2}, threads)
    result = outcome.result
    assert result.status is TaskStatus.SUCCEEDED
    assert result.output == {"doubled": 2}
    assert result.error is None
    assert (result.task_id, result.workflow_id, result.step_id, result.capability) == (
        "wf-1/step/0",
        "wf-1",
        "step",
        "cap",
    )
    assert (result.attempt, result.index, result.worker_id) == (2, 0, "w-1")
    assert abs(result.finished_at_ms - time.time() * 1000) < 5000
    assert not outcome.timed_out


def test_async_handler_gets_the_context(threads: HandlerThreads) -> None:
    seen: list[TaskContext] = []

    async def handler(payload: Any, ctx: TaskContext) -> str:
        seen.append(ctx)
        await asyncio.sleep(0.01)
        return "ok"

    outcome = run_one(handler, threads, task_for(deadline_in_s=60), traceparent="00-ab-cd-01")
    assert outcome.result.output == "ok"
    ctx = seen[0]
    assert (ctx.task_id, ctx.workflow_id, ctx.step_id, ctx.capability) == (
        "wf-1/step/0",
        "wf-1",
        "step",
        "cap",
    )
    assert (ctx.attempt, ctx.index, ctx.traceparent) == (2, 0, "00-ab-cd-01")
    assert ctx.deadline is not None
    remaining = ctx.remaining_s()
    assert remaining is not None and 55 < remaining <= 60
    assert outcome.result.duration_ms >= 10


def test_remaining_s_without_deadline_is_none_and_never_negative() -> None:
    ctx = TaskContext.of(task_for())
    assert ctx.deadline is None and ctx.remaining_s() is None
    late = TaskContext.of(task_for(deadline_in_s=-5))
    assert late.remaining_s() == 0.0


def raiser(exc: BaseException) -> Callable[[Any], Any]:
    def handler(payload: Any) -> Any:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "type_", "retryable"),
    [
        (PermanentError("bad input"), "PermanentError", False),
        (RetryableError("try again"), "RetryableError", True),
        (ValueError("oops"), "ValueError", True),
        (KeyError("text"), "KeyError", True),
        (SystemExit(3), "SystemExit", True),  # fails the task, never the process
    ],
)
def test_exceptions_map_to_failed_results(
    threads: HandlerThreads, exc: BaseException, type_: str, retryable: bool
) -> None:
    result = run_one(raiser(exc), threads).result
    assert result.status is TaskStatus.FAILED
    assert result.output is None
    assert result.error is not None
    assert (result.error.type, result.error.retryable) == (type_, retryable)
    assert result.error.message == str(exc)


def test_async_exceptions_map_the_same_way(threads: HandlerThreads) -> None:
    async def handler(payload: Any) -> Any:
        raise PermanentError("no")

    error = run_one(handler, threads).result.error
    assert error is not None and (error.type, error.message, error.retryable) == (
        "PermanentError",
        "no",
        False,
    )


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"s": {1, 2}}, "set is not JSON serializable"),
        (object(), "object is not JSON serializable"),
        ({"x": math.nan}, "Out of range float values"),
    ],
)
def test_non_json_output_fails_permanently_with_a_type_error(
    threads: HandlerThreads, value: Any, detail: str
) -> None:
    result = run_one(lambda p: value, threads).result
    assert result.status is TaskStatus.FAILED
    assert result.error is not None
    assert result.error.type == "TypeError"
    assert result.error.retryable is False
    assert "not JSON-serialisable" in result.error.message
    assert detail in result.error.message


def test_output_is_normalised_to_json(threads: HandlerThreads) -> None:
    result = run_one(lambda p: {"t": (1, 2), 3: "int key"}, threads).result
    assert result.output == {"t": [1, 2], "3": "int key"}


def test_sync_handler_returning_a_coroutine_is_a_clear_error(threads: HandlerThreads) -> None:
    async def inner() -> int:
        return 1

    result = run_one(lambda p: inner(), threads).result
    assert result.error is not None
    assert result.error.type == "TypeError"
    assert "async def" in result.error.message


def test_async_handler_past_its_deadline_is_cancelled(threads: HandlerThreads) -> None:
    cancelled = threading.Event()

    async def hang(payload: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    outcome = run_one(hang, threads, task_for(deadline_in_s=0.2))
    assert time.monotonic() - started < 2
    assert cancelled.is_set()
    assert outcome.timed_out and not outcome.thread_abandoned
    error = outcome.result.error
    assert error is not None and (error.type, error.retryable) == ("TimeoutError", True)
    assert "passed its deadline" in error.message


def test_sync_handler_past_its_deadline_is_abandoned_not_waited_for(
    threads: HandlerThreads,
) -> None:
    released = threading.Event()
    finished = threading.Event()

    def slow(payload: Any) -> str:
        time.sleep(0.8)
        finished.set()
        return "too late"

    started = time.monotonic()
    outcome = run_one(slow, threads, task_for(deadline_in_s=0.2), on_thread_released=released.set)
    assert time.monotonic() - started < 0.7  # did not wait for the thread
    assert outcome.timed_out and outcome.thread_abandoned
    assert outcome.result.error is not None and outcome.result.error.type == "TimeoutError"
    assert not finished.is_set()
    assert released.wait(5) and finished.is_set()


def test_a_task_already_past_its_deadline_is_not_run(threads: HandlerThreads) -> None:
    calls: list[Any] = []
    outcome = run_one(calls.append, threads, task_for(deadline_in_s=-1))
    assert calls == []
    assert outcome.timed_out
    assert outcome.result.error is not None and outcome.result.error.type == "TimeoutError"


def test_sync_task_that_never_got_a_thread_is_not_counted_abandoned() -> None:
    pool = HandlerThreads(1)
    gate = threading.Event()
    try:
        pool.submit(gate.wait, 5)  # occupies the only thread
        outcome = run_one(lambda p: "ran", pool, task_for(deadline_in_s=0.2))
        assert outcome.timed_out and not outcome.thread_abandoned
    finally:
        gate.set()
        pool.shutdown(wait=True)


def test_bound_log_context_reaches_sync_handler_threads(threads: HandlerThreads) -> None:
    async def main() -> Outcome:
        structlog.contextvars.bind_contextvars(task_id="t-42")
        app = App()
        app.capability("cap")(lambda p: structlog.contextvars.get_contextvars().get("task_id"))
        return await execute(app.get("cap"), task_for(), worker_id="w", threads=threads)

    assert asyncio.run(main()).result.output == "t-42"


def test_handler_threads_run_calls_and_keep_exceptions() -> None:
    pool = HandlerThreads(2)
    try:
        assert pool.submit(lambda a, b: a + b, 1, b=2).result(5) == 3
        failed = pool.submit(raiser(ValueError("x")), None)
        assert isinstance(failed.exception(5), ValueError)
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("fleet-handler"))
    finally:
        pool.shutdown(wait=True)


# -- the example agents ----------------------------------------------------------------


def call(name: str, payload: Any, attempt: int = 1) -> Any:
    capability: Capability = examples.get(name)
    ctx = TaskContext.of(task_for(name).model_copy(update={"attempt": attempt}))
    value = capability.handler(*capability.arguments(payload, ctx))
    return asyncio.run(value) if capability.is_async else value


def test_examples_register_the_topology_capabilities() -> None:
    topology = Topology.load(Settings().topology_file)
    assert examples.capabilities == sorted(topology.capabilities)
    assert "render" in examples.capabilities  # the market's example (a GPU slot)


def test_classify_finds_category_severity_and_hosts() -> None:
    assert call("classify", {"text": "disk full on web-1, web-2"}) == {
        "category": "disk",
        "severity": "critical",
        "hosts": ["web-1", "web-2"],
    }
    assert call("classify", {"text": "Memory usage slow on db-eu-02"}) == {
        "category": "memory",
        "severity": "medium",
        "hosts": ["db-eu-02"],
    }
    assert call("classify", {"text": "OOM on api-3 after heap exhausted; disk ok"}) == {
        "category": "memory",
        "severity": "high",
        "hosts": ["api-3"],
    }
    assert call("classify", {"text": "all quiet"}) == {
        "category": "other",
        "severity": "low",
        "hosts": [],
    }


def test_lookup_is_stable_and_derived_from_the_name() -> None:
    web1 = {"host": "web-1", "rack": "rack-12", "owner": "platform", "uptime_days": 226}
    assert call("lookup", {"host": "web-1"}) == web1
    assert call("lookup", {"host": " WEB-1 "}) == web1
    assert call("lookup", {"host": "web-2"}) == {
        "host": "web-2",
        "rack": "rack-02",
        "owner": "search",
        "uptime_days": 152,
    }


def test_summarize_counts_findings_and_summarises_text() -> None:
    findings = [
        {"category": "disk", "severity": "critical", "hosts": ["web-1", "web-2"]},
        {"category": "memory", "severity": "medium", "hosts": ["db-1", "web-1"]},
        "a plain note",
    ]
    assert call("summarize", {"findings": findings}) == {
        "count": 3,
        "category": {"disk": 1, "memory": 1},
        "severity": {"critical": 1, "medium": 1},
        "worst": "critical",
        "hosts": ["web-1", "web-2", "db-1"],
        "summary": "3 findings; 1 disk, 1 memory; 1 critical, 1 medium; worst critical; "
        "hosts web-1, web-2, db-1",
    }
    looked_up = [call("lookup", {"host": "web-1"}), call("lookup", {"host": "web-2"})]
    assert call("summarize", {"findings": looked_up})["summary"] == (
        "2 findings; 1 platform, 1 search; hosts web-1, web-2"
    )
    assert call("summarize", {"text": "Disk is full. Web is down! Call ops?"}) == {
        "count": 3,
        "words": 8,
        "summary": "Disk is full.",
    }
    with pytest.raises(PermanentError, match="must be a list"):
        call("summarize", {"findings": "nope"})


def test_extract_finds_numbers_emails_and_urls() -> None:
    text = (
        "web-1 took 3.5s and 42 retries at -7 C; v1.2.3; mail ops@example.com "
        "or see https://status.example.com/x?a=1. 10GB"
    )
    assert call("extract", {"text": text}) == {
        "numbers": [3.5, 42, -7, 10],
        "emails": ["ops@example.com"],
        "urls": ["https://status.example.com/x?a=1"],
    }


def test_score_is_a_logistic_of_weighted_features() -> None:
    assert call(
        "score", {"features": {"a": 1, "b": 2}, "weights": {"a": 0.5, "b": -1}, "bias": 0.2}
    ) == {
        "score": 0.2142,
        "raw": -1.3,
        "band": "low",
    }
    assert call("score", {"features": {"errors": 3}}) == {
        "score": 0.9526,
        "raw": 3.0,
        "band": "high",
    }
    with pytest.raises(PermanentError, match="must be numbers"):
        call("score", {"features": {"a": "x"}})


def test_sdk_examples_behave_as_documented() -> None:
    assert call("text.wordcount", {"text": "the quick  brown fox"}) == {"words": 4}
    with pytest.raises(RetryableError, match="try again"):
        call("text.flaky", {}, attempt=1)
    assert call("text.flaky", {}, attempt=2) == {"ok": True}
    assert call("noop", {"a": [1, 2], "delay_ms": 1}) == {"a": [1, 2], "delay_ms": 1}


@pytest.mark.parametrize("name", ["classify", "lookup", "summarize", "extract", "score", "noop"])
def test_every_example_honours_fail_and_delay(name: str) -> None:
    with pytest.raises(PermanentError):
        call(name, {"fail": "permanent"})
    with pytest.raises(RetryableError):
        call(name, {"fail": "retryable"})
    started = time.monotonic()
    with pytest.raises(PermanentError):  # still fails, but only after the delay
        call(name, {"fail": "permanent", "delay_ms": 150})
    assert time.monotonic() - started >= 0.15


def test_bad_example_input_fails_permanently() -> None:
    with pytest.raises(PermanentError, match="string field 'text'"):
        call("classify", {"alert": "disk full"})
    with pytest.raises(PermanentError, match="string field 'host'"):
        call("lookup", {"host": 7})


def test_output_too_large_for_a_record_fails_permanently(threads: HandlerThreads) -> None:
    result = run_one(lambda p: "x" * 1_000_000, threads).result
    assert result.status is TaskStatus.FAILED and result.output is None
    assert result.error is not None
    assert (result.error.type, result.error.retryable) == ("ValueError", False)
    assert "over the 900000 limit" in result.error.message
