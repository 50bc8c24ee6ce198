"""What the engine remembers about each workflow: plain data, nothing else.

An active workflow is a :class:`WorkflowState`; a finished one shrinks to a
:class:`FinishedWorkflow` kept for a while so that a repeated submission is recognised.
``orchestrator.snapshot`` turns both into changelog records and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import JsonValue

from fleet.messages import EventKind, LeaseGrant, UsageLine
from orchestrator.market.budget import Budget
from orchestrator.refs import Context
from orchestrator.spec import StepSpec, WorkflowSpec


@dataclass
class TaskRun:
    """One task (one element of a started, unfinished step) and its latest attempt.

    An unfinished task is in one of four states: *waiting* (no live agent serves its
    capability: ``attempt`` is held back since ``waiting_since_ms``, see
    ``orchestrator.waiting``), *acquiring* (a step with resources:
    ``attempt`` waits for leases, one pool at a time; ``bid`` is the bid out now,
    ``leases`` what it holds), *in flight* (``attempt`` was dispatched, with its
    ``leases``, and has no accepted result yet; ``deadline_ms`` is when it times out) or
    *backing off* (``attempt`` failed and ``attempt + 1`` is due at ``retry_at_ms``).
    """

    step_id: str
    index: int | None  # element position for for_each steps, None for plain steps
    attempt: int
    dispatched_at_ms: int  # of ``attempt``
    deadline_ms: int  # of ``attempt``
    input: JsonValue  # kept so a retry re-sends exactly what the first attempt got
    succeeded: bool = False
    output: JsonValue = None
    retry_at_ms: int | None = None
    acquiring: bool = False
    bid: str | None = None  # the bid id (also the hold id) waiting at an auctioneer
    leases: dict[str, LeaseGrant] = field(default_factory=dict)  # pool -> lease held
    waiting_since_ms: int | None = None  # held back for want of a live agent, since
    # The escalation chain (orchestrator.escalation): which link runs ``attempt`` (0: the
    # step's own capability), the attempts made before that link, and why each earlier
    # link was left.
    link: int = 0
    link_base: int = 0
    causes: list[str] = field(default_factory=list)

    @property
    def in_flight(self) -> bool:
        return (
            not self.succeeded
            and self.retry_at_ms is None
            and not self.acquiring
            and self.waiting_since_ms is None
        )


@dataclass
class StepRun:
    task_ids: list[str]  # in element order, which is the order of the fan-in list
    remaining: int  # elements not yet succeeded
    fan_out: bool


@dataclass
class WorkflowState:
    """Everything the engine remembers about one active workflow."""

    workflow_id: str
    spec: WorkflowSpec
    submitted_at_ms: int
    outputs: dict[str, JsonValue] = field(default_factory=dict)  # completed steps
    running: dict[str, StepRun] = field(default_factory=dict)  # started, not complete
    tasks: dict[str, TaskRun] = field(default_factory=dict)  # task_id -> run, running steps
    # The spec as a JSON document, computed once: the spec never changes, and the
    # workflow's changelog record is rewritten after every change.
    spec_doc: JsonValue = field(default=None, compare=False, repr=False)
    # The market, decided at submission (a later policy change does not move a running
    # workflow to another band): None and 0 for workflows whose steps need no resources.
    budget: Budget | None = None
    band: int = 0
    # What the handlers of its accepted results reported, summed per model (fleet.usage).
    usage: list[UsageLine] = field(default_factory=list)

    @property
    def deadline_ms(self) -> int | None:
        """When the workflow fails if it has not finished (from the spec's deadline_s)."""
        if self.spec.deadline_s is None:
            return None
        return self.submitted_at_ms + duration_ms(self.spec.deadline_s)

    def context(self) -> Context:
        return Context(input=self.spec.input, outputs=self.outputs)

    def ready_steps(self) -> list[StepSpec]:
        """Steps not started whose needs are all complete, in spec order (which keeps
        dispatch order, and so replay, deterministic)."""
        return [
            step
            for step in self.spec.steps
            if step.id not in self.outputs
            and step.id not in self.running
            and all(need in self.outputs for need in step.needs)
        ]

    def why_not_running(self, task_id: str) -> str:
        """Why a result names a task this workflow does not run (for ``dropped``)."""
        prefix = f"{self.workflow_id}/"
        step_id = task_id[len(prefix) :].rsplit("/", 1)[0] if task_id.startswith(prefix) else None
        if step_id is not None and step_id in self.outputs:
            return f"duplicate, step {step_id!r} already completed"
        return f"no such task in workflow {self.workflow_id}"


@dataclass(frozen=True)
class FinishedWorkflow:
    """What is left of a workflow after its terminal event, until retention ends."""

    kind: EventKind  # COMPLETED, FAILED, CANCELLED or REJECTED
    at_ms: int  # time of the terminal event
    # False for a cancel that came before its submission: the terminal event is owed
    # to the submission when it arrives (and only then), so each workflow gets one.
    announced: bool = True


def duration_ms(seconds: float) -> int:
    """A spec duration as milliseconds; at least 1, so a deadline is never already past."""
    return max(1, round(seconds * 1000))


def task_id_for(workflow_id: str, step_id: str, index: int) -> str:
    return f"{workflow_id}/{step_id}/{index}"
