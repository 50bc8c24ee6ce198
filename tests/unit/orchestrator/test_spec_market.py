"""Workflow and step fields of the market (budget, tenant, priority, resources, max_price):
parsing, the acquisition order, the checks against the policy, the changelog round trip."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import SpecError
from orchestrator.admission import check_market
from orchestrator.market.policy import MAX_CREDITS, MICRO, MarketPolicy, Pool, Tenant
from orchestrator.snapshot import decode, encode_active
from orchestrator.spec import StepSpec, WorkflowSpec, parse_spec
from orchestrator.state import StepRun, TaskRun, WorkflowState

pytestmark = pytest.mark.unit

LOCATION = "steps[0] (id 'a')"


def step(step_id: str = "a", **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "capability": "work", **fields}


def spec(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps or [step()]), **fields}


def problems_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(doc)
    return caught.value.problems


@pytest.fixture
def policy() -> MarketPolicy:
    return MarketPolicy(
        pools=MappingProxyType(
            {
                "gpu": Pool("gpu", capacity=2, reserve=1_000_000, lease_ttl_ms=60_000),
                "license": Pool("license", capacity=1, reserve=0, lease_ttl_ms=60_000),
            }
        ),
        bands=("low", "standard", "high"),
        tenants=MappingProxyType(
            {
                "default": Tenant("default", ("low", "standard"), "standard", 2_000_000, 10**8),
                "research": Tenant("research", ("low",), "low", 500_000, None),
            }
        ),
        default_tenant="default",
    )


# -- parsing -----------------------------------------------------------------------------


def test_a_spec_without_market_fields_is_what_it_was() -> None:
    parsed = parse_spec(spec())
    assert (parsed.budget, parsed.tenant, parsed.priority) == (None, None, None)
    assert (parsed.steps[0].resources, parsed.steps[0].max_price) == ({}, None)
    # Its changelog document has exactly the keys it had before the market existed, so
    # the previous version (which forbids unknown fields) can still restore it.
    doc = parsed.model_dump(mode="json")
    assert set(doc) == {"name", "input", "steps", "output", "deadline_s"}
    assert set(doc["steps"][0]) == {
        "id",
        "capability",
        "needs",
        "input",
        "for_each",
        "retries",
        "timeout_s",
        "backoff_s",
        "max_backoff_s",
    }


def test_market_fields_parse_into_micro_credits_and_units() -> None:
    parsed = parse_spec(
        spec(
            step(resources={"license": 1, "gpu": 2}, max_price="0.25"),
            budget=12.5,
            tenant="research",
            priority="low",
        )
    )
    assert parsed.budget == 12_500_000
    assert (parsed.tenant, parsed.priority) == ("research", "low")
    assert parsed.steps[0].resources == {"license": 1, "gpu": 2}
    assert parsed.steps[0].max_price == 250_000


@pytest.mark.parametrize(
    ("written", "micro"), [(2, 2_000_000), ("2", 2_000_000), (0, 0), ("0.000001", 1)]
)
def test_a_budget_is_exact_credits(written: object, micro: int) -> None:
    assert parse_spec(spec(budget=written)).budget == micro


@pytest.mark.parametrize(
    ("units", "reason"),
    [
        (0, "must be at least 1, got 0"),
        (-2, "must be at least 1, got -2"),
        ("1", 'expected an integer, got a string ("1")'),
        (True, "expected an integer, got a boolean (true)"),
        (1.0, "expected an integer, got a number (1.0)"),
        (2**31, "must be at most 2147483647, got 2147483648"),
    ],
)
def test_units_must_be_positive_integers(units: object, reason: str) -> None:
    assert problems_of(spec(step(resources={"gpu": units}))) == [
        (f"{LOCATION}.resources.gpu", reason)
    ]


def test_resources_must_map_pool_names_to_units() -> None:
    assert problems_of(spec(step(resources=["gpu"]))) == [
        (f"{LOCATION}.resources", "expected an object, got a list (length 1)")
    ]
    where, why = problems_of(spec(step(resources={"gpu slot": 1})))[0]
    assert (where, why.split(":")[0]) == (
        f"{LOCATION}.resources.gpu slot",
        "'gpu slot' is not a valid name",
    )


@pytest.mark.parametrize(
    ("field", "written", "reason"),
    [
        ("budget", -1, "credits must not be negative, got -1"),
        ("budget", "-0.5", 'credits must not be negative, got "-0.5"'),
        ("budget", True, "expected credits as a number or a decimal string, got a boolean (true)"),
        ("budget", float("nan"), "expected a finite amount of credits, got nan"),
        ("budget", "0.0000001", 'at most 6 decimals (1 micro-credit is 0.000001), got "0.0000001"'),
        ("budget", "1e3", 'expected credits as a decimal such as "2" or "0.25", got "1e3"'),
        ("budget", [], "expected credits as a number or a decimal string, got a list (length 0)"),
        ("tenant", "two words", "'two words' is not a valid name"),
        ("priority", 3, "expected a string, got a number (3)"),
    ],
)
def test_bad_workflow_market_fields_are_located(field: str, written: object, reason: str) -> None:
    [(where, why)] = problems_of(spec(**{field: written}))
    assert where == field
    assert why.startswith(reason)


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        (0, "must be more than 0 credits"),
        ("0", "must be more than 0 credits"),
        (-1, "credits must not be negative, got -1"),
        (False, "expected credits as a number or a decimal string, got a boolean (false)"),
    ],
)
def test_a_max_price_is_a_positive_amount(written: object, reason: str) -> None:
    doc = spec(step(resources={"gpu": 1}, max_price=written))
    assert problems_of(doc) == [(f"{LOCATION}.max_price", reason)]


def test_market_problems_come_with_the_others() -> None:
    doc = spec(
        step("a", resources={"gpu": 0}),
        step("b", needs=["c"]),
        step("c", needs=["b"]),
        budget=-1,
    )
    problems = problems_of(doc)
    assert ("budget", "credits must not be negative, got -1") in problems
    assert (f"{LOCATION}.resources.gpu", "must be at least 1, got 0") in problems
    assert any(why.startswith("cycle: ") for _, why in problems)


def test_the_new_fields_are_listed_for_a_typo() -> None:
    [(where, why)] = problems_of(spec(step(resource={"gpu": 1})))
    assert where == f"{LOCATION}.resource"
    assert why.endswith("resources, max_price, fallback, min_confidence, no_agent_timeout_s)")


# -- the acquisition order ---------------------------------------------------------------


def test_resources_are_acquired_in_pool_name_order() -> None:
    parsed = parse_spec(spec(step(resources={"license": 1, "gpu": 2, "api.quota": 3})))
    assert parsed.steps[0].acquire_order() == [("api.quota", 3), ("gpu", 2), ("license", 1)]
    assert StepSpec(id="b", capability="work").acquire_order() == []


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9._-]{0,8}", fullmatch=True), st.integers(1, 9)))
def test_every_step_uses_the_same_global_order(resources: dict[str, int]) -> None:
    # Any two steps meet their common pools in the same relative order, whatever order
    # they listed them in: no step can hold one while waiting for another held the other
    # way round.
    forward = StepSpec(id="f", capability="work", resources=resources)
    backward = StepSpec(id="b", capability="work", resources=dict(reversed(resources.items())))
    order = forward.acquire_order()
    assert order == backward.acquire_order()
    assert [pool for pool, _ in order] == sorted(resources)
    assert dict(order) == resources


# -- against the policy ------------------------------------------------------------------


def market(*steps: dict[str, Any], **fields: Any) -> WorkflowSpec:
    return parse_spec(spec(*steps, **fields))


def test_a_workflow_the_policy_allows_has_no_problems(policy: MarketPolicy) -> None:
    assert check_market(market(step(resources={"gpu": 2, "license": 1})), policy) == []
    assert check_market(market(step(), tenant="research", priority="low"), policy) == []
    assert check_market(market(step()), MarketPolicy.empty()) == []


def test_an_unknown_pool_is_named(policy: MarketPolicy) -> None:
    doc = market(step("a", resources={"tpu": 1}), step("b", resources={"gpu": 1}))
    assert check_market(doc, policy) == [
        (f"{LOCATION}.resources.tpu", "unknown pool 'tpu' (pools: gpu, license)")
    ]


def test_resources_with_the_market_off_are_refused() -> None:
    assert check_market(market(step(resources={"gpu": 1})), MarketPolicy.empty()) == [
        (f"{LOCATION}.resources.gpu", "no resource pools are configured: the market is off")
    ]


def test_more_units_than_the_pool_has_could_never_run(policy: MarketPolicy) -> None:
    assert check_market(market(step(resources={"gpu": 3})), policy) == [
        (
            f"{LOCATION}.resources.gpu",
            "needs 3 units but pool 'gpu' has 2: the step could never run",
        )
    ]


def test_an_unknown_tenant_or_a_band_it_may_not_use_is_refused(policy: MarketPolicy) -> None:
    assert check_market(market(step(), tenant="ops"), policy) == [
        ("tenant", "unknown tenant 'ops' (tenants: default, research)")
    ]
    assert check_market(market(step(), priority="high"), policy) == [
        ("priority", "tenant 'default' may not use band 'high' (allowed: low, standard)")
    ]
    assert check_market(market(step(), tenant="research", priority="urgent"), policy) == [
        ("priority", "unknown band 'urgent' (bands: low, standard, high)")
    ]


def test_a_max_price_below_the_reserve_could_never_win(policy: MarketPolicy) -> None:
    own = market(step(resources={"gpu": 1, "license": 1}, max_price="0.5"))
    assert check_market(own, policy) == [
        (
            f"{LOCATION}.max_price",
            "0.5 credits per unit is below pool 'gpu''s reserve of 1: its bids could never win",
        )
    ]
    # research's default is 0.5 credits, enough for the license (reserve 0) only.
    default = market(step(resources={"gpu": 1}), tenant="research", budget=1)
    assert check_market(default, policy) == [
        (
            f"{LOCATION}.max_price",
            "0.5 credits per unit (tenant 'research''s default) is below pool 'gpu''s "
            "reserve of 1: its bids could never win",
        )
    ]
    assert check_market(market(step(resources={"gpu": 1}, max_price=1)), policy) == []


def test_a_workflow_using_the_market_needs_a_budget_from_somewhere(policy: MarketPolicy) -> None:
    needs = market(step(resources={"license": 1}), tenant="research")
    assert check_market(needs, policy) == [
        (
            "budget",
            "steps need resources and tenant 'research' has no budget_default: "
            "set the workflow's budget",
        )
    ]
    own_budget = market(step(resources={"license": 1}), tenant="research", budget="0.5")
    assert check_market(own_budget, policy) == []
    assert check_market(market(step(), tenant="research"), policy) == []  # buys nothing


# -- the changelog round trip ------------------------------------------------------------


def through_the_changelog(parsed: WorkflowSpec) -> WorkflowSpec:
    state = WorkflowState(
        "wf-1",
        parsed,
        1_000,
        running={"a": StepRun(["t-1"], 1, fan_out=False)},
        tasks={"t-1": TaskRun("a", None, 1, 1_000, 2_000, {})},
    )
    record = json.loads(json.dumps(encode_active(state)))  # as the changelog stores it
    restored = decode("wf-1", record)
    assert isinstance(restored, WorkflowState)
    return restored.spec


def test_market_fields_survive_the_changelog() -> None:
    parsed = market(
        step(resources={"gpu": 2, "license": 1}, max_price="1.25"),
        budget="7.000001",
        tenant="prod",
        priority="high",
    )
    restored = through_the_changelog(parsed)
    assert restored == parsed
    assert (restored.budget, restored.steps[0].max_price) == (7_000_001, 1_250_000)


def test_a_workflow_without_market_fields_survives_the_changelog() -> None:
    parsed = market(step(retries=2))
    assert through_the_changelog(parsed) == parsed


@given(
    budget=st.none() | st.integers(0, MAX_CREDITS * MICRO),
    max_price=st.none() | st.integers(1, MAX_CREDITS * MICRO),
)
def test_any_amount_survives_the_changelog_exactly(
    budget: int | None, max_price: int | None
) -> None:
    # Dumped as credits, re-parsed as credits: never micro-credits read as credits.
    parsed = WorkflowSpec.model_validate(
        {
            "name": "wf",
            "budget": _credits(budget),
            "steps": [step(resources={"gpu": 1}, max_price=_credits(max_price))],
        }
    )
    assert (parsed.budget, parsed.steps[0].max_price) == (budget, max_price)
    assert through_the_changelog(parsed) == parsed
    assert WorkflowSpec.model_validate(parsed.model_dump()) == parsed  # python mode too


def _credits(micro: int | None) -> str | None:
    # Written with all six decimals, independently of micro_to_credits.
    return None if micro is None else f"{micro // MICRO}.{micro % MICRO:06d}"
