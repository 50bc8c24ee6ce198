"""Leases in a real worker process on a real broker: TaskAssigned v2 carries them to the
handler's context, a guard in the worker refuses a stale token, and a handler that
outlives its lease fails its task with ``LeaseExpired`` while the worker goes on.

The worker runs ``fleet worker --app tests.integration.test_worker_leases:app``: the
handlers below are its app, and the test plays the orchestrator (see test_worker.py).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fleet import App, PermanentError, TaskContext
from fleet.messages import LeaseGrant, TaskAssigned, TaskStatus
from fleet.settings import Settings
from fleetctl.supervisor import Child, Supervisor
from tests.integration.test_worker import ROOT, Harness, log_lines, wait_for_log
from workers.leases import LeaseGuard

pytestmark = pytest.mark.kafka

app = App()
# In the worker process: the resource side of one GPU, shared by every handler thread.
GPU = LeaseGuard("gpu")


@app.capability("t.lease-echo")
async def lease_echo(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Sleeps ``delay_ms`` (if given), then returns the leases it saw."""
    if isinstance(payload, dict) and "delay_ms" in payload:
        await asyncio.sleep(payload["delay_ms"] / 1000)
    gpu = ctx.lease("gpu")
    return {
        "leases": [lease.lease_id for lease in ctx.leases],
        "gpu": None if gpu is None else {"units": gpu.units, "token": list(gpu.token)},
        "deadline": ctx.deadline,
    }


@app.capability("t.lease-use")
def lease_use(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Holds its GPU units through the guard for ``hold_s`` seconds."""
    gpu = ctx.lease("gpu")
    if gpu is None:
        raise PermanentError("this capability needs a lease on 'gpu'")
    with GPU.holding(gpu, int(time.time() * 1000)):
        time.sleep(payload.get("hold_s", 0) if isinstance(payload, dict) else 0)
    return {"used": gpu.units}


def lease(resource: str, seq: int, units: list[int], *, expires_in_s: float = 120) -> LeaseGrant:
    return LeaseGrant(
        resource=resource,
        lease_id=f"bid-{uuid.uuid4().hex[:8]}",
        units=units,
        epoch=1,
        seq=seq,
        unit_price=100,
        expires_at_ms=int((time.time() + expires_in_s) * 1000),
    )


def with_leases(task: TaskAssigned, *leases: LeaseGrant) -> TaskAssigned:
    return task.model_copy(update={"leases": list(leases)})


@dataclass
class Worker:
    settings: Settings
    child: Child


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the module; each test has its own workflow id, so results never mix."""
    env = dict(os.environ)
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    env["FLEET_TOPIC_PREFIX"] = f"tl-{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env(env)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    args = ["worker", "--app", f"{__name__}:app", "--concurrency", "4", "--grace", "10"]
    with Supervisor(settings, tmp_path_factory.mktemp("lease-worker-logs")) as supervisor:
        child = supervisor.start(
            "lease-worker", args, env={"PYTHONPATH": path, "FLEET_LOG_LEVEL": "debug"}
        )
        wait_for_log(child, lambda line: line.get("event") == "worker consuming")
        yield Worker(settings, child)
        assert supervisor.stop_all(grace_s=30) == {"lease-worker": 0}, child.log_tail()


@pytest.fixture
def harness(worker: Worker) -> Iterator[Harness]:
    h = Harness(worker.settings)
    yield h
    h.close()
    assert worker.child.alive(), worker.child.log_tail()


def test_the_handler_sees_the_leases_its_task_carries(harness: Harness) -> None:
    gpu, licence = lease("gpu", 3, [1, 2]), lease("licence", 9, [0])
    leased = with_leases(harness.task("t.lease-echo", {}, 0), gpu, licence)
    plain = harness.task("t.lease-echo", {}, 1)
    harness.send(leased, plain)

    got = harness.results(2)
    assert got[leased.task_id].result.output == {
        "leases": [gpu.lease_id, licence.lease_id],
        "gpu": {"units": [1, 2], "token": [1, 3]},
        # No task deadline: the first lease's expiry is when the worker stops waiting.
        "deadline": gpu.expires_at_ms / 1000,
    }
    assert got[plain.task_id].result.output == {"leases": [], "gpu": None, "deadline": None}


def test_a_guard_in_the_worker_refuses_a_stale_token(harness: Harness) -> None:
    def run(n: int, seq: int) -> Any:
        harness.send(with_leases(harness.task("t.lease-use", {}, n), lease("gpu", seq, [0])))
        return harness.results(n + 1)[f"{harness.workflow_id}/t.lease-use/{n}"].result

    assert run(0, 5).status is TaskStatus.SUCCEEDED
    stale = run(1, 4)  # e.g. an old attempt redelivered after unit 0 moved on
    assert stale.status is TaskStatus.FAILED and stale.error is not None
    assert (stale.error.type, stale.error.retryable) == ("StaleLease", True)
    assert "unit 0" in stale.error.message and "(1, 5)" in stale.error.message
    assert run(2, 6).output == {"used": [0]}


def test_a_handler_outliving_its_lease_fails_its_task_and_the_worker_goes_on(
    harness: Harness, worker: Worker
) -> None:
    gpu_async = lease("gpu", 20, [5], expires_in_s=1.5)
    gpu_sync = lease("gpu", 21, [6], expires_in_s=1.5)
    hang = with_leases(harness.task("t.lease-echo", {"delay_ms": 30_000}, 0), gpu_async)
    hold = with_leases(harness.task("t.lease-use", {"hold_s": 5}, 1), gpu_sync)
    harness.send(hang, hold)

    got = {k: r.result for k, r in harness.results(2).items()}
    for task, grant in ((hang, gpu_async), (hold, gpu_sync)):
        result = got[task.task_id]
        assert result.status is TaskStatus.FAILED and result.error is not None
        assert (result.error.type, result.error.retryable) == ("LeaseExpired", True)
        assert grant.lease_id in result.error.message
        # Stopped waiting at the lease's expiry (there is no task deadline).
        assert grant.expires_at_ms <= result.finished_at_ms < grant.expires_at_ms + 2000

    after = with_leases(harness.task("t.lease-echo", {}, 2), lease("gpu", 22, [5]))
    harness.send(after)
    assert harness.results(3)[after.task_id].result.status is TaskStatus.SUCCEEDED
    expired = [
        line
        for line in log_lines(worker.child)
        if line.get("event", "").startswith("lease expired while the handler ran")
    ]
    assert {line["task_id"] for line in expired} == {hang.task_id, hold.task_id}
    assert {line["lease_id"] for line in expired} == {gpu_async.lease_id, gpu_sync.lease_id}
