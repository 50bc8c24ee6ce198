"""What the parts of one engine transition share, and how a transition ends badly.

The engine handles each input (a submission, a result, a market outcome, a due timer)
with plain functions spread over the modules of their concept: ``decompose`` starts
steps, ``fanin`` collects them, ``retry`` decides about a failed attempt, ``acquire``
deals with the market, ``waiting`` holds back what no live agent would take. Each takes
the :class:`Transition` of the input it serves: the engine's memory, market policy and
view of the agents, the input's time and the effects being built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from fleet.messages import TaskError, TaskStatus, WorkflowError
from orchestrator.effects import Effects
from orchestrator.market.policy import MarketPolicy
from orchestrator.state import TaskRun
from orchestrator.store import WorkflowStore

if TYPE_CHECKING:
    from orchestrator.waiting import Agents


@dataclass(frozen=True)
class Transition:
    """One input's handling: where it reads and writes, and when it happens.

    ``now_ms`` is an argument, never a clock read, so a replay of the same inputs
    yields the same effects."""

    store: WorkflowStore
    policy: MarketPolicy
    now_ms: int
    fx: Effects
    agents: Agents  # who may take a task now (orchestrator.waiting)


class AttemptFailure(NamedTuple):
    """One attempt that ended without success: a failed result, a timeout, or the
    market turning its bid away or ending its lease. The retry decision's input."""

    task_id: str
    run: TaskRun
    status: TaskStatus
    error: TaskError | None


class WorkflowFailed(Exception):  # noqa: N818 - internal control flow, never escapes
    """Raised anywhere inside a transition to fail the whole workflow with ``error``:
    the engine catches it and emits the workflow's one FAILED event."""

    def __init__(self, error: WorkflowError) -> None:
        super().__init__(error.message)
        self.error = error
