"""Typed messages: the in-process form of every Avro record on the wire.

Each class names its Avro schema. Fields listed in ``json_fields`` hold arbitrary JSON
(workflow inputs, handler outputs) and travel as ``<field>_json`` strings, because
Avro has no "any JSON" type; the codec converts them at its boundary and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, JsonValue


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_name: ClassVar[str]
    json_fields: ClassVar[tuple[str, ...]] = ()


class WorkflowSubmitted(Message):
    schema_name: ClassVar[str] = "io.fleet.WorkflowSubmitted"
    json_fields: ClassVar[tuple[str, ...]] = ("spec",)

    workflow_id: str
    spec: JsonValue
    submitted_at_ms: int
    submitted_by: str | None = None


class WorkflowCancelRequested(Message):
    schema_name: ClassVar[str] = "io.fleet.WorkflowCancelRequested"

    workflow_id: str
    reason: str = ""
    requested_by: str | None = None
    requested_at_ms: int


class LeaseGrant(BaseModel):
    """A lease on units of a contended resource, as tasks and outcomes carry it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str
    lease_id: str
    units: list[int]
    epoch: int
    seq: int
    unit_price: int
    expires_at_ms: int

    @property
    def token(self) -> tuple[int, int]:
        return (self.epoch, self.seq)


class TaskAssigned(Message):
    schema_name: ClassVar[str] = "io.fleet.TaskAssigned"
    json_fields: ClassVar[tuple[str, ...]] = ("input",)

    task_id: str
    workflow_id: str
    step_id: str
    capability: str
    attempt: int
    index: int | None = None
    input: JsonValue
    deadline_ms: int | None = None
    dispatched_at_ms: int
    leases: list[LeaseGrant] = []


class TaskStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class TaskError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str
    retryable: bool


class UsageLine(BaseModel):
    """What one model (or tool) consumed: reported by handlers (``ctx.report_usage``),
    carried by results, summed per workflow on its terminal event. ``cost`` is exact
    micro-credits, the market's unit (fleet.money)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""  # "" when the handler named none
    tokens_in: int = 0
    tokens_out: int = 0
    cost: int = 0


class TaskResult(Message):
    schema_name: ClassVar[str] = "io.fleet.TaskResult"
    json_fields: ClassVar[tuple[str, ...]] = ("output",)

    task_id: str
    workflow_id: str
    step_id: str
    capability: str
    attempt: int
    index: int | None = None
    status: TaskStatus
    output: JsonValue = None
    error: TaskError | None = None
    duration_ms: int
    worker_id: str
    finished_at_ms: int
    version: str | None = None  # of the capability that ran it (None: an older worker)
    usage: list[UsageLine] = []  # one line per model, by model name
    confidence: float | None = None  # what the handler said of its output (ctx.set_confidence)


class EventKind(StrEnum):
    UNKNOWN = "UNKNOWN"
    ACCEPTED = "ACCEPTED"
    STEP_COMPLETED = "STEP_COMPLETED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    # A task attempt was dispatched (appended last: Avro enums resolve by symbol, and a
    # reader older than it maps it to UNKNOWN, the enum's default).
    STEP_STARTED = "STEP_STARTED"
    # A ready task is held back: no live agent serves its capability (``reason`` says
    # which and until when); it is dispatched, with a STEP_STARTED, once one appears.
    STEP_WAITING = "STEP_WAITING"

    @property
    def terminal(self) -> bool:
        return self in (
            EventKind.COMPLETED,
            EventKind.FAILED,
            EventKind.REJECTED,
            EventKind.CANCELLED,
        )


class WorkflowError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str
    step_id: str | None = None
    attempt: int | None = None


class WorkflowEvent(Message):
    schema_name: ClassVar[str] = "io.fleet.WorkflowEvent"
    json_fields: ClassVar[tuple[str, ...]] = ("output", "budget")

    workflow_id: str
    kind: EventKind
    workflow_name: str | None = None
    step_id: str | None = None
    output: JsonValue = None
    error: WorkflowError | None = None
    submitted_at_ms: int | None = None
    at_ms: int
    # Terminal events of workflows that bid: what they spent, charge by charge, so anyone
    # can reconcile them with the market ledger.
    budget: JsonValue = None
    # STEP_STARTED: the attempt dispatched (and the element of a for_each step).
    # STEP_COMPLETED of a plain step: the attempt that completed it and its worker. No
    # worker at dispatch: a task goes to its capability's topic, and any worker of the
    # pool may take it.
    task_id: str | None = None
    attempt: int | None = None
    index: int | None = None
    worker_id: str | None = None
    # STEP_WAITING: why the task is held back instead of dispatched, and until when.
    reason: str | None = None
    # Terminal events: the usage of every attempt whose result was accepted, summed per
    # model (fleet.usage); empty when no handler reported any.
    usage: list[UsageLine] = []


class Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    value: bytes | None = None


class DeadLetter(Message):
    schema_name: ClassVar[str] = "io.fleet.DeadLetter"

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None = None
    value: bytes | None = None
    value_size: int | None = None
    value_truncated: bool = False
    headers: list[Header] = []
    error_type: str
    error_message: str
    consumer: str
    at_ms: int


class MarketInputKind(StrEnum):
    UNKNOWN = "UNKNOWN"
    BID = "BID"
    WITHDRAW = "WITHDRAW"
    CLAIM = "CLAIM"
    RELEASE = "RELEASE"
    REVOKE = "REVOKE"
    CAPACITY = "CAPACITY"


class MarketInput(Message):
    schema_name: ClassVar[str] = "io.fleet.MarketInput"

    kind: MarketInputKind
    resource: str
    bid_id: str | None = None
    workflow_id: str | None = None
    task_id: str | None = None
    band: int = 0
    price: int = 0
    units: int = 1
    lease_ttl_ms: int = 0
    valid_rounds: int = 0
    epoch: int = 0
    seq: int = 0
    capacity: int | None = None
    at_ms: int


class MarketOutcomeKind(StrEnum):
    UNKNOWN = "UNKNOWN"
    GRANTED = "GRANTED"
    LOST = "LOST"
    ENDED = "ENDED"


class LostReason(StrEnum):
    """Why an auctioneer turned a bid away: the ``reason`` of a LOST outcome."""

    EXPIRED = "expired"  # waited its valid rounds without an award
    BELOW_RESERVE = "below_reserve"  # bids under the pool's reserve can never win
    WITHDRAWN = "withdrawn"  # its owner took it back (workflow cancelled or failed)
    UNKNOWN_POOL = "unknown_pool"  # no configured pool of that name


class EndedReason(StrEnum):
    """Why a lease ended: the ``reason`` of an ENDED outcome."""

    RELEASED = "released"  # the task's result arrived
    EXPIRED = "expired"  # past expiry + grace: a dead worker gives its units back
    UNCLAIMED = "unclaimed"  # its owner never took it up
    REVOKED = "revoked"  # kill switch


class MarketOutcome(Message):
    schema_name: ClassVar[str] = "io.fleet.MarketOutcome"

    kind: MarketOutcomeKind
    resource: str
    bid_id: str
    workflow_id: str
    task_id: str
    lease: LeaseGrant | None = None
    # A LostReason or an EndedReason, kept a plain string (as on the wire): an outcome
    # with a reason this version does not know still decodes. Decide on lost_reason.
    reason: str | None = None
    round_no: int = 0
    at_ms: int

    @property
    def lost_reason(self) -> LostReason | None:
        """A LOST outcome's reason, typed; None for another kind or an unknown reason."""
        if self.kind is not MarketOutcomeKind.LOST or self.reason is None:
            return None
        try:
            return LostReason(self.reason)
        except ValueError:
            return None


class MarketRound(Message):
    schema_name: ClassVar[str] = "io.fleet.MarketRound"
    json_fields: ClassVar[tuple[str, ...]] = ("record",)

    resource: str
    round_no: int
    epoch: int
    hash: str
    prev_hash: str
    record: JsonValue


class BudgetTopUpRequested(Message):
    schema_name: ClassVar[str] = "io.fleet.BudgetTopUpRequested"

    workflow_id: str
    top_up_id: str
    amount: int
    requested_by: str | None = None
    requested_at_ms: int


class CancelReason(StrEnum):
    """Why the orchestrator stopped waiting for a task attempt: a TaskCancelled's reason."""

    WORKFLOW_CANCELLED = "workflow_cancelled"  # `fleet cancel` (a WorkflowCancelRequested)
    TIMED_OUT = "timed_out"  # no result by the attempt's deadline
    WORKFLOW_FAILED = "workflow_failed"  # another step failed it, or its deadline passed
    LEASE_ENDED = "lease_ended"  # a lease it held was revoked or expired (the market)


class TaskCancelled(Message):
    """Stop running one task attempt: the orchestrator will drop its result anyway."""

    schema_name: ClassVar[str] = "io.fleet.TaskCancelled"

    task_id: str
    workflow_id: str
    capability: str
    attempt: int
    # A CancelReason, kept a plain string (as on the wire), like MarketOutcome.reason.
    reason: str
    detail: str = ""
    at_ms: int
