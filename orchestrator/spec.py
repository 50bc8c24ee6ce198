"""Workflow specs: the typed form of a submitted DAG, and ``parse_spec``.

``parse_spec`` collects every problem it can find before raising, because a person
fixing a spec wants the whole list at once, not one error per round trip. Each problem
is ``(location, reason)`` with locations such as ``steps[1] (id 'enrich').for_each``
(``orchestrator.problems``); the checks across steps are ``orchestrator.validate``'s.
What the market policy allows is checked apart, on submission
(``orchestrator.admission``); reading a spec file is ``orchestrator.specfile``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from fleet.errors import SpecError
from orchestrator.market.policy import UNITS_MAX, micro_to_credits, pydantic_money
from orchestrator.problems import Problem, describe, fields_in_error, shape_problems, step_label
from orchestrator.refs import STEP_ID_PATTERN
from orchestrator.validate import StepLinks, graph_problems, known_ids, ref_problems

__all__ = ["TIMEOUT_MAX_S", "StepSpec", "WorkflowSpec", "parse_spec"]

# Capabilities become Kafka topic names ``<prefix>tasks.<capability>`` (at most 249
# characters), so names use the topic alphabet and leave room for the prefix.
NAME_PATTERN = rf"^{STEP_ID_PATTERN.pattern}$"
NAME_MAX_LENGTH = 200
# Deadlines are epoch milliseconds in an Avro long; a year is far beyond any agent task
# and keeps ``now_ms + timeout_s * 1000`` an exact, bounded integer.
TIMEOUT_MAX_S = 365 * 24 * 3600.0
# How long a ready step waits for a live agent of its capability before it fails with
# NoLiveAgent (orchestrator.waiting); the routing policy (issue 12 item 10) will set it.
NO_AGENT_TIMEOUT_S = 300.0

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]


def _money(value: object) -> int | None:
    return None if value is None else pydantic_money(value)


def _price(value: object) -> int | None:
    micro = _money(value)
    if micro == 0:  # a hold of 0 would buy nothing and is not a hold (market/budget.py)
        raise PydanticCustomError("money", "must be more than 0 credits")
    return micro


def _credits(micro: int | None) -> str | None:
    return None if micro is None else micro_to_credits(micro)


# Users write credits (2, 1.5, "0.25"); the attribute holds exact micro-credits. Dumped,
# in any mode, it is credits again as a decimal string: the dump is the spec document
# (the changelog stores it and a restore re-parses it), so re-parsing reads back the same
# integer and never takes micro-credits for credits.
Money = Annotated[int | None, BeforeValidator(_money), PlainSerializer(_credits)]
Price = Annotated[int | None, BeforeValidator(_price), PlainSerializer(_credits)]
Units = Annotated[int, Field(ge=1, le=UNITS_MAX)]


def _without_defaults(
    model: BaseModel, handler: SerializerFunctionWrapHandler, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The model's document without the market fields left at their defaults.

    A workflow that does not use the market keeps the exact document it had before these
    fields existed, so an orchestrator of the previous version (which forbids unknown
    fields) can still restore its changelog record during a rolling upgrade or rollback.
    """
    doc: dict[str, Any] = handler(model)
    return {k: v for k, v in doc.items() if k not in defaults or v != defaults[k]}


class StepSpec(BaseModel):
    # strict: a spec is a contract, so "2" is not silently the integer 2.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: Name
    capability: Name
    needs: list[str] = []
    input: JsonValue = {}
    for_each: str | None = None
    retries: int = Field(default=0, ge=0)
    timeout_s: float = Field(default=300.0, gt=0, le=TIMEOUT_MAX_S, allow_inf_nan=False)
    # Retry n waits min(max_backoff_s, backoff_s * 2**(n-1)) times a jitter in [0.5, 1];
    # backoff_s 0 re-dispatches at once.
    backoff_s: float = Field(default=1.0, ge=0, le=TIMEOUT_MAX_S, allow_inf_nan=False)
    # validate_default: the default 60 must still be checked against a larger backoff_s.
    max_backoff_s: float = Field(
        default=60.0, ge=0, le=TIMEOUT_MAX_S, allow_inf_nan=False, validate_default=True
    )
    # Units of each contended pool the step holds while it runs ({gpu: 1, license: 1}).
    resources: dict[Name, Units] = {}
    # Credits per unit the step bids at most (None: its tenant's default_max_price).
    max_price: Price = None
    # The escalation chain (orchestrator.escalation): capabilities to try in order when
    # this one cannot do the task: its breaker is open, no live agent came within
    # no_agent_timeout_s, its attempts failed for good, or its confidence was too low.
    fallback: list[Name] = []
    # A result that reports a confidence (ctx.set_confidence) below this is not accepted:
    # the step escalates, or fails at its chain's end. None: any result is accepted.
    min_confidence: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    # How long a ready task waits for a live agent of its capability (orchestrator.waiting).
    no_agent_timeout_s: float = Field(
        default=NO_AGENT_TIMEOUT_S, gt=0, le=TIMEOUT_MAX_S, allow_inf_nan=False
    )

    @property
    def chain(self) -> list[str]:
        """Its own capability, then its fallbacks: the escalation chain's links."""
        return [self.capability, *self.fallback]

    def capability_at(self, link: int) -> str:
        """The capability of link ``link`` of the chain (0: the step's own)."""
        return self.chain[link]

    def acquire_order(self) -> list[tuple[str, int]]:
        """``(pool, units)`` in the order the engine acquires them: by pool name.

        One global order for every step is what rules out waiting cycles (Havender's
        ordered resources): a step holding pool p only ever waits for a pool named after
        p (a pool's units come in one all-or-nothing award, never piecemeal), so along
        any chain "waits for a pool held by a step that waits for ..." the names strictly
        increase and the chain cannot come back to where it started.
        """
        return sorted(self.resources.items())

    @model_serializer(mode="wrap")
    def _document(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "resources": {},
            "max_price": None,
            "no_agent_timeout_s": NO_AGENT_TIMEOUT_S,
            "fallback": [],
            "min_confidence": None,
        }
        return _without_defaults(self, handler, defaults)

    @field_validator("fallback")
    @classmethod
    def _a_chain_without_repeats(cls, value: list[str], info: ValidationInfo) -> list[str]:
        chain = [info.data.get("capability"), *value]
        repeated = sorted({c for c in value if chain.count(c) > 1})
        if repeated:
            raise PydanticCustomError(
                "fallback_repeat",
                "a capability may appear once in the chain (the step's own included): {names}",
                {"names": ", ".join(repeated)},
            )
        return value

    @field_validator("max_backoff_s")
    @classmethod
    def _not_below_backoff(cls, value: float, info: ValidationInfo) -> float:
        backoff = info.data.get("backoff_s")  # absent when backoff_s itself was invalid
        if isinstance(backoff, float) and value < backoff:
            raise PydanticCustomError(
                "backoff_order",
                "must be at least backoff_s ({backoff_s}), got {value}",
                {"backoff_s": backoff, "value": value},
            )
        return value


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH)
    input: JsonValue = {}
    steps: list[StepSpec] = Field(min_length=1)
    output: JsonValue = None
    # Measured from the request's submitted_at_ms; past it the workflow fails.
    deadline_s: float | None = Field(default=None, gt=0, le=TIMEOUT_MAX_S, allow_inf_nan=False)
    # Credits the workflow may spend on resources (None: its tenant's budget_default).
    budget: Money = None
    # Who it bids for (None: the policy's default tenant), and in which band (None: the
    # tenant's default band). Policy decides what a tenant may use: see admission.py.
    tenant: Name | None = None
    priority: Name | None = None

    @model_serializer(mode="wrap")
    def _document(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_defaults(self, handler, {"budget": None, "tenant": None, "priority": None})

    def step(self, step_id: str) -> StepSpec:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def parse_spec(doc: object, *, has_capability: Callable[[str], bool] | None = None) -> WorkflowSpec:
    """Validate ``doc`` into a :class:`WorkflowSpec` or raise :class:`SpecError` listing
    every problem. ``has_capability`` (when given) says whether a capability has a topic."""
    if not isinstance(doc, Mapping):
        raise SpecError([("spec", f"expected an object, got {describe(doc)}")])
    problems: list[Problem] = []
    spec: WorkflowSpec | None = None
    bad: dict[int, set[str]] = {}
    try:
        spec = WorkflowSpec.model_validate(doc)
    except ValidationError as exc:
        problems.extend(
            shape_problems(
                exc,
                doc,
                step_fields=StepSpec.model_fields,
                spec_fields=WorkflowSpec.model_fields,
            )
        )
        bad = fields_in_error(exc)
    # The checks across steps still run on every step, malformed or not: a step's links
    # are taken from its fields that are well-formed, so an unknown field or a bad type
    # does not hide a cycle or a bad reference (orchestrator.validate.StepLinks).
    raw_steps = doc.get("steps")
    raw_list: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    steps = (
        [(position, StepLinks.of(step)) for position, step in enumerate(spec.steps)]
        if spec is not None
        else _salvaged_steps(raw_list, bad)
    )
    known = known_ids(raw_list, problems)
    problems.extend(graph_problems(steps, known, raw_list))
    if has_capability is not None:
        for position, step in steps:
            if step.capability is not None and not has_capability(step.capability):
                where = f"{step_label(position, raw_list)}.capability"
                problems.append((where, f"capability {step.capability!r} has no task topic"))
        for position, declared in enumerate(spec.steps if spec is not None else []):
            for n, fallback in enumerate(declared.fallback):
                if not has_capability(fallback):
                    where = f"{step_label(position, raw_list)}.fallback[{n}]"
                    problems.append((where, f"capability {fallback!r} has no task topic"))
    if "output" in doc and isinstance(raw_steps, list):
        # Without a steps list every step reference would look unknown: pure noise.
        problems.extend(ref_problems("output", doc["output"], known, allowed=None))
    if problems:
        raise SpecError(problems)
    assert spec is not None
    return spec


def _salvaged_steps(raw_steps: list[Any], bad: dict[int, set[str]]) -> list[tuple[int, StepLinks]]:
    return [
        (position, StepLinks.salvage(raw, bad.get(position, set())))
        for position, raw in enumerate(raw_steps)
        if isinstance(raw, Mapping) and "*" not in bad.get(position, set())
    ]
