"""Workflow specs: the typed form of a submitted DAG, and its validation.

``parse_spec`` collects every problem it can find before raising, because a person
fixing a spec wants the whole list at once, not one error per round trip. Each problem
is ``(location, reason)`` with locations such as ``steps[1] (id 'enrich').for_each``.
"""

from __future__ import annotations

import json
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
from orchestrator.market.policy import (
    UNITS_MAX,
    MarketPolicy,
    NotAllowedError,
    Tenant,
    micro_to_credits,
    pydantic_money,
)
from orchestrator.refs import (
    STEP_ID_PATTERN,
    Ref,
    RefSyntaxError,
    Root,
    format_segment,
    is_ref,
    iter_ref_strings,
    json_kind,
    parse_ref,
)
from orchestrator.specfile import load_spec_file

__all__ = [
    "TIMEOUT_MAX_S",
    "StepSpec",
    "WorkflowSpec",
    "check_market",
    "load_spec_file",
    "parse_spec",
]

# Capabilities become Kafka topic names ``<prefix>tasks.<capability>`` (at most 249
# characters), so names use the topic alphabet and leave room for the prefix.
NAME_PATTERN = rf"^{STEP_ID_PATTERN.pattern}$"
NAME_MAX_LENGTH = 200
# Deadlines are epoch milliseconds in an Avro long; a year is far beyond any agent task
# and keeps ``now_ms + timeout_s * 1000`` an exact, bounded integer.
TIMEOUT_MAX_S = 365 * 24 * 3600.0

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]

Problem = tuple[str, str]


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
        return _without_defaults(self, handler, {"resources": {}, "max_price": None})

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
    # tenant's default band). Policy decides what a tenant may use: see check_market.
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
        raise SpecError([("spec", f"expected an object, got {_kind(doc)}")])
    problems: list[Problem] = []
    spec: WorkflowSpec | None = None
    try:
        spec = WorkflowSpec.model_validate(doc)
    except ValidationError as exc:
        problems.extend(_shape_problems(exc, doc))
    # Semantic checks still run on the steps that are well-formed on their own, so one
    # typo does not hide a cycle or a bad reference elsewhere.
    raw_steps = doc.get("steps")
    raw_list: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    steps = list(enumerate(spec.steps)) if spec is not None else _valid_steps(raw_list)
    known = _known_ids(raw_list, problems)
    problems.extend(_graph_problems(steps, known, raw_list))
    if has_capability is not None:
        for position, step in steps:
            if not has_capability(step.capability):
                where = f"{_label(position, raw_list)}.capability"
                problems.append((where, f"capability {step.capability!r} has no task topic"))
    if "output" in doc and isinstance(raw_steps, list):
        # Without a steps list every step reference would look unknown: pure noise.
        problems.extend(_ref_problems("output", doc["output"], known, allowed=None))
    if problems:
        raise SpecError(problems)
    assert spec is not None
    return spec


def check_market(spec: WorkflowSpec, policy: MarketPolicy) -> list[Problem]:
    """What in a valid ``spec`` the market ``policy`` forbids or makes impossible, as
    ``(location, reason)`` problems like :func:`parse_spec`'s; empty when it may run.

    Separate from :func:`parse_spec` because the policy is the deployment's, not the
    spec's: the orchestrator checks it on submission and rejects the workflow with these
    reasons. Capacity is the configured one (an operator may change it at run time).
    """
    problems: list[Problem] = []
    tenant: Tenant | None = None
    try:
        tenant = policy.tenant_of(spec.tenant)
        policy.band_of(tenant.name, spec.priority)
    except NotAllowedError as exc:
        problems.extend(exc.problems)
    for position, step in enumerate(spec.steps):
        label = f"steps[{position}] (id {step.id!r})"
        for pool_name, units in step.acquire_order():
            problems.extend(
                _pool_problems(label, step, pool_name, units, policy=policy, tenant=tenant)
            )
    # With the market off, the resources themselves are the problem, not the budget.
    needs_budget = spec.budget is None and any(step.resources for step in spec.steps)
    if needs_budget and policy.enabled and tenant is not None and tenant.budget_default is None:
        problems.append(
            (
                "budget",
                f"steps need resources and tenant {tenant.name!r} has no budget_default: "
                "set the workflow's budget",
            )
        )
    return problems


def _pool_problems(
    label: str,
    step: StepSpec,
    pool_name: str,
    units: int,
    *,
    policy: MarketPolicy,
    tenant: Tenant | None,
) -> list[Problem]:
    """Why ``step`` could never be served ``units`` of ``pool_name``, if it could not."""
    where = f"{label}.resources.{pool_name}"
    pool = policy.pools.get(pool_name)
    if pool is None:
        if not policy.enabled:
            return [(where, "no resource pools are configured: the market is off")]
        return [(where, f"unknown pool {pool_name!r} (pools: {', '.join(policy.pools)})")]
    problems: list[Problem] = []
    if units > pool.capacity:
        problems.append(
            (
                where,
                f"needs {units} units but pool {pool_name!r} has {pool.capacity}: "
                "the step could never run",
            )
        )
    # Clearing turns a bid below the reserve away at once: such a step would never run.
    if step.max_price is not None:
        price, whose = step.max_price, ""
    elif tenant is not None:
        price, whose = tenant.default_max_price, f" (tenant {tenant.name!r}'s default)"
    else:
        return problems  # the unknown tenant is already reported
    if price < pool.reserve:
        problems.append(
            (
                f"{label}.max_price",
                f"{micro_to_credits(price)} credits per unit{whose} is below pool "
                f"{pool_name!r}'s reserve of {micro_to_credits(pool.reserve)}: "
                "its bids could never win",
            )
        )
    return problems


def _label(position: int, raw_steps: list[Any]) -> str:
    raw = raw_steps[position] if position < len(raw_steps) else None
    step_id = raw.get("id") if isinstance(raw, Mapping) else None
    return (
        f"steps[{position}] (id {step_id!r})" if isinstance(step_id, str) else f"steps[{position}]"
    )


def _valid_steps(raw_steps: list[Any]) -> list[tuple[int, StepSpec]]:
    valid = []
    for position, raw in enumerate(raw_steps):
        try:
            valid.append((position, StepSpec.model_validate(raw)))
        except ValidationError:
            continue  # already reported by the whole-document validation
    return valid


def _known_ids(raw_steps: list[Any], problems: list[Problem]) -> dict[str, int]:
    """Every step id in the document (valid step or not), reporting duplicates."""
    known: dict[str, int] = {}
    for position, raw in enumerate(raw_steps):
        step_id = raw.get("id") if isinstance(raw, Mapping) else None
        if not isinstance(step_id, str):
            continue
        if step_id in known:
            first = known[step_id]
            problems.append(
                (
                    f"{_label(position, raw_steps)}.id",
                    f"duplicate step id {step_id!r} (first used by steps[{first}])",
                )
            )
        else:
            known[step_id] = position
    return known


def _graph_problems(
    steps: list[tuple[int, StepSpec]], known: dict[str, int], raw_steps: list[Any]
) -> list[Problem]:
    problems: list[Problem] = []
    needs: dict[str, list[str]] = {}
    for position, step in steps:
        label = _label(position, raw_steps)
        for n, need in enumerate(step.needs):
            if need not in known:
                problems.append(
                    (f"{label}.needs[{n}]", f"unknown step {need!r} (steps: {', '.join(known)})")
                )
        needs.setdefault(step.id, [n for n in step.needs if n in known])
    problems.extend(_cycle_problems(steps, needs, raw_steps))
    for position, step in steps:
        label = _label(position, raw_steps)
        upstream = _upstream(step.id, needs)
        if step.for_each is not None:
            where = f"{label}.for_each"
            if not is_ref(step.for_each):
                problems.append(
                    (
                        where,
                        f"must be a $. reference to a list (e.g. $.steps.<id>.output.items), "
                        f"got {step.for_each!r}",
                    )
                )
            else:
                problems.extend(
                    _ref_problems(where, step.for_each, known, allowed=upstream, own_id=step.id)
                )
        fan_out = step.for_each is not None
        problems.extend(
            _ref_problems(
                f"{label}.input",
                step.input,
                known,
                allowed=upstream,
                own_id=step.id,
                fan_out=fan_out,
            )
        )
    return problems


def _cycle_problems(
    steps: list[tuple[int, StepSpec]], needs: dict[str, list[str]], raw_steps: list[Any]
) -> list[Problem]:
    """One problem per cycle found by depth-first search over ``needs`` edges."""
    problems: list[Problem] = []
    position_of = {step.id: position for position, step in steps}
    state: dict[str, int] = {}  # absent: unseen, 1: on the DFS stack, 2: finished
    stack: list[str] = []

    def visit(step_id: str) -> None:
        state[step_id] = 1
        stack.append(step_id)
        for need in needs.get(step_id, []):
            if state.get(need) == 1:
                cycle = [*stack[stack.index(need) :], need]
                where = f"{_label(position_of[need], raw_steps)}.needs"
                problems.append((where, f"cycle: {' -> '.join(cycle)} (each step needs the next)"))
            elif need not in state:
                visit(need)
        stack.pop()
        state[step_id] = 2

    # Recursion depth is bounded by the number of steps in one spec.
    for _, step in steps:
        if step.id not in state:
            visit(step.id)
    return problems


def _upstream(step_id: str, needs: dict[str, list[str]]) -> set[str]:
    """Steps ``step_id`` needs directly or transitively (cycle-safe)."""
    seen: set[str] = set()
    todo = list(needs.get(step_id, []))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(needs.get(current, []))
    seen.discard(step_id)  # a cycle through itself is reported as a cycle, not a ref error
    return seen


def _ref_problems(
    where: str,
    value: object,
    known: Mapping[str, int],
    *,
    allowed: set[str] | None,
    own_id: str | None = None,
    fan_out: bool = False,
) -> list[Problem]:
    """Problems with the references in ``value``.

    ``allowed`` is the set of steps whose outputs may be read (None: any step, as for
    the workflow output); ``fan_out`` says whether ``$.item``/``$.index`` are bound.
    """
    problems: list[Problem] = []
    for suffix, text in iter_ref_strings(value):
        location = where + suffix
        try:
            ref = parse_ref(text)
        except RefSyntaxError as exc:
            problems.append((location, f"invalid reference {text!r}: {exc.reason}"))
            continue
        reason = _ref_reason(ref, known, allowed, own_id, fan_out)
        if reason is not None:
            problems.append((location, f"{text}: {reason}"))
    return problems


def _ref_reason(
    ref: Ref,
    known: Mapping[str, int],
    allowed: set[str] | None,
    own_id: str | None,
    fan_out: bool,
) -> str | None:
    if ref.root in (Root.ITEM, Root.INDEX) and not fan_out:
        return "only bound in the input of a for_each step"
    if ref.root is not Root.STEPS:
        return None
    assert ref.step_id is not None
    if ref.step_id not in known:
        return f"unknown step {ref.step_id!r}"
    if ref.step_id == own_id:
        return "a step cannot read its own output"
    if allowed is not None and ref.step_id not in allowed:
        return (
            f"step {ref.step_id!r} is not in needs (directly or transitively), so its "
            "output may not exist yet; add it to needs"
        )
    return None


# pydantic error type -> our reason; filled from the error's ctx, input and kind.
_REASONS = {
    "missing": "required field is missing",
    "string_type": "expected a string, got {kind}",
    "int_type": "expected an integer, got {kind}",
    "float_type": "expected a number, got {kind}",
    "list_type": "expected a list, got {kind}",
    "dict_type": "expected an object, got {kind}",
    "model_type": "expected an object, got {kind}",
    "finite_number": "expected a finite number, got {input!r}",
    "invalid-json-value": "not a JSON value: {kind}",
    "string_pattern_mismatch": (
        "{input!r} is not a valid name: use letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    ),
    "string_too_long": "too long (at most {max_length} characters)",
    "string_too_short": "must not be empty",
    "too_short": "at least one step is required",  # steps is the only list with a minimum
    "greater_than": "must be greater than {gt}, got {input!r}",
    "greater_than_equal": "must be at least {ge}, got {input!r}",
    "less_than_equal": "must be at most {le}, got {input!r}",
}
_JSON_FIELDS = frozenset({"input", "output"})


def _shape_problems(exc: ValidationError, doc: Mapping[str, Any]) -> list[Problem]:
    """pydantic's errors in the same ``(location, reason)`` form as every other problem."""
    raw_steps = doc.get("steps")
    raw_list: list[Any] = raw_steps if isinstance(raw_steps, list) else []
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        if loc and loc[-1] == "[key]" and error["type"] != "string_type":
            # A string key that is not a valid name (a pool in resources).
            problems.append((_location(loc[:-1], raw_list), _reason(error)))
            continue
        if loc and loc[-1] == "[key]":
            # JSON object keys must be strings; pydantic reports the key itself.
            where = _location(loc[:-1], raw_list)
            problems.append((where, f"object keys must be strings, got {_kind(error['input'])}"))
            continue
        problems.append((_location(loc, raw_list), _reason(error)))
    return problems


def _location(loc: tuple[int | str, ...], raw_steps: list[Any]) -> str:
    parts: list[str] = []
    items = list(loc)
    if len(items) >= 2 and items[0] == "steps" and isinstance(items[1], int):
        parts.append(_label(items[1], raw_steps))
        items = items[2:]
    in_json = False
    index = 0
    while index < len(items):
        item = items[index]
        index += 1
        if in_json and item in ("dict", "list") and index < len(items):
            # JsonValue errors interleave the container type with each key; skip it.
            item = items[index]
            index += 1
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not parts:
            parts.append(item)
        else:
            parts.append(format_segment(item) if in_json else f".{item}")
        in_json = in_json or item in _JSON_FIELDS
    return "".join(parts) or "spec"


def _reason(error: Any) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        model = StepSpec if error["loc"][0] == "steps" else WorkflowSpec
        return f"unknown field (allowed: {', '.join(model.model_fields)})"
    template = _REASONS.get(kind)
    if template is None:
        return str(error["msg"])
    fields = {**(error.get("ctx") or {}), "input": value, "kind": _kind(value)}
    return template.format(**fields)


def _kind(value: object) -> str:
    """``json_kind`` plus the value itself when it is a short scalar."""
    phrase = json_kind(value)
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        return f"{phrase} ({json.dumps(value)})"
    return phrase
