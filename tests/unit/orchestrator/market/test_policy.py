"""The market's configuration: credits as exact micro-credits, market.yaml, bands by policy."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import ConfigError, SpecError
from fleet.settings import Settings
from orchestrator.market.clearing import Pricing
from orchestrator.market.policy import (
    MAX_CREDITS,
    MICRO,
    MarketPolicy,
    MarketPolicyError,
    NotAllowedError,
    Pool,
    Tenant,
    credits_to_micro,
    micro_to_credits,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[4]


# -- money -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "micro"),
    [
        (2, 2_000_000),
        (0, 0),
        (1.5, 1_500_000),
        (0.1, 100_000),  # the float 0.1 is not exactly 1/10, but it was written "0.1"
        ("0.25", 250_000),
        ("2", 2_000_000),
        ("0.000001", 1),
        ("1.500000", 1_500_000),  # trailing zeros change nothing
        ("007.5", 7_500_000),
        (MAX_CREDITS, MAX_CREDITS * MICRO),
    ],
)
def test_credits_become_exact_micro_credits(written: object, micro: int) -> None:
    assert credits_to_micro(written) == micro


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        (True, "got a boolean (true)"),
        (False, "got a boolean (false)"),
        (-1, "must not be negative, got -1"),
        ("-0.5", 'must not be negative, got "-0.5"'),
        (-0.5, "must not be negative, got -0.5"),
        (float("nan"), "finite amount of credits, got nan"),
        (float("inf"), "finite amount of credits, got inf"),
        ("NaN", 'decimal such as "2" or "0.25", got "NaN"'),
        ("1e3", 'got "1e3"'),
        ("1_000", 'got "1_000"'),
        (" 1", 'got " 1"'),
        ("", 'got ""'),
        (".5", 'got ".5"'),
        ("0.0000001", 'at most 6 decimals (1 micro-credit is 0.000001), got "0.0000001"'),
        (1e-7, "at most 6 decimals"),
        (0.1234567, "at most 6 decimals"),
        (MAX_CREDITS + 1, f"at most {MAX_CREDITS} credits"),
        (1e300, f"at most {MAX_CREDITS} credits"),
        ("9" * 400, f"at most {MAX_CREDITS} credits"),
        (None, "got null"),
        ([1], "got a list"),
        ({"credits": 1}, "got an object"),
    ],
)
def test_bad_amounts_are_refused_with_the_reason(written: object, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        credits_to_micro(written)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("micro", "text"),
    [(0, "0"), (1, "0.000001"), (1_500_000, "1.5"), (2_000_000, "2"), (10_250_000, "10.25")],
)
def test_micro_credits_print_as_the_shortest_exact_decimal(micro: int, text: str) -> None:
    assert micro_to_credits(micro) == text


@pytest.mark.parametrize("micro", [-1, True, 1.0])
def test_only_whole_non_negative_micro_credits_print(micro: Any) -> None:
    with pytest.raises(ValueError, match="integer >= 0"):
        micro_to_credits(micro)


@given(st.integers(min_value=0, max_value=MAX_CREDITS * MICRO))
def test_micro_credits_survive_the_credit_text(micro: int) -> None:
    text = micro_to_credits(micro)
    assert credits_to_micro(text) == micro
    assert Decimal(text) * MICRO == micro  # the text means exactly that many credits


@given(
    st.decimals(min_value=0, max_value=MAX_CREDITS, places=6, allow_nan=False),
)
def test_any_credit_text_with_six_decimals_round_trips(amount: Decimal) -> None:
    text = f"{amount:f}"
    micro = credits_to_micro(text)
    assert Decimal(micro) / MICRO == amount
    assert Decimal(micro_to_credits(micro)) == amount


@given(st.decimals(min_value=0, max_value=1000, places=7, allow_nan=False))
def test_a_seventh_decimal_is_refused_never_rounded(amount: Decimal) -> None:
    text = f"{amount:f}"
    if (amount * MICRO) % 1 == 0:
        assert Decimal(credits_to_micro(text)) == amount * MICRO
    else:
        with pytest.raises(ValueError, match="at most 6 decimals"):
            credits_to_micro(text)


# -- the shipped market.yaml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> MarketPolicy:
    return MarketPolicy.load(ROOT / "market.yaml")


def test_the_shipped_market_file_loads(shipped: MarketPolicy) -> None:
    assert shipped.enabled
    assert shipped.pools["gpu"] == Pool(
        "gpu",
        capacity=2,
        reserve=1_000_000,
        lease_ttl_ms=120_000,
        aging_per_round=50_000,
        aging_cap=1_000_000,
    )
    assert shipped.pools["license"].capacity == 1
    assert shipped.bands == ("low", "standard", "high")
    assert shipped.default_tenant == "default"
    assert shipped.tenants["default"].bands == ("low", "standard")
    assert shipped.tenants["default"].default_band == "standard"
    assert shipped.tenants["research"].bands == ("low",)
    assert shipped.tenants["research"].default_band == "low"  # omitted: its lowest band
    assert shipped.tenants["research"].default_max_price == 1_500_000  # written "1.5"
    assert shipped.tenants["prod"].bands == ("low", "standard", "high")
    assert shipped.tenants["prod"].default_band == "high"
    assert shipped.round_ms == 200


def test_settings_point_at_the_shipped_market_file_unless_told_otherwise(tmp_path: Path) -> None:
    assert Settings.from_env({}).market_file == ROOT / "market.yaml"
    other = tmp_path / "market.yaml"
    assert Settings.from_env({"FLEET_MARKET_FILE": str(other)}).market_file == other


def test_a_pool_prices_with_its_reserve_and_aging(shipped: MarketPolicy) -> None:
    assert shipped.pools["gpu"].pricing == Pricing(1_000_000, 50_000, 1_000_000)


# -- bands -------------------------------------------------------------------------------


def test_a_workflow_gets_its_tenants_default_band(shipped: MarketPolicy) -> None:
    assert shipped.band_of("default", None) == 1
    assert shipped.band_of(None, None) == 1  # the default tenant
    assert shipped.band_of("prod", None) == 2
    assert shipped.band_of("research", None) == 0


def test_a_workflow_may_ask_for_any_band_its_tenant_has(shipped: MarketPolicy) -> None:
    assert [shipped.band_of("prod", band) for band in ("low", "standard", "high")] == [0, 1, 2]
    assert shipped.band_of("default", "low") == 0


def test_a_band_the_tenant_does_not_have_is_not_allowed(shipped: MarketPolicy) -> None:
    with pytest.raises(NotAllowedError) as caught:
        shipped.band_of("research", "high")
    assert caught.value.problems == [
        ("priority", "tenant 'research' may not use band 'high' (allowed: low)")
    ]
    assert isinstance(caught.value, SpecError)  # the orchestrator rejects such a workflow
    with pytest.raises(NotAllowedError, match="tenant 'default' may not use band 'high'"):
        shipped.band_of(None, "high")


def test_unknown_bands_and_tenants_are_not_allowed(shipped: MarketPolicy) -> None:
    with pytest.raises(NotAllowedError) as caught:
        shipped.band_of("prod", "urgent")
    assert (caught.value.location, caught.value.reason) == (
        "priority",
        "unknown band 'urgent' (bands: low, standard, high)",
    )
    with pytest.raises(NotAllowedError) as unknown:
        shipped.band_of("marketing", None)
    assert unknown.value.problems == [
        ("tenant", "unknown tenant 'marketing' (tenants: default, research, prod)")
    ]


def test_the_empty_policy_has_no_pools_and_one_band() -> None:
    empty = MarketPolicy.empty()
    assert not empty.enabled
    assert empty.pools == {}
    assert empty.band_of(None, None) == 0
    assert empty.tenant_of(None).budget_default is None


# -- policy file errors ------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "pools": {"gpu": {"capacity": 2, "reserve": 1, "lease_ttl_ms": 1000}},
    "bands": ["low", "high"],
    "tenants": {"default": {"bands": ["low"], "default_max_price": 2}},
}


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "market.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def edited(**changes: Any) -> dict[str, Any]:
    """GOOD with ``changes`` applied at dotted keys (None removes the key)."""
    doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(GOOD))  # a deep copy
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = doc
        for key in parents:
            target = target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return doc


def problems_of(tmp_path: Path, doc: object) -> list[tuple[str, str]]:
    path = write(tmp_path, doc)
    with pytest.raises(MarketPolicyError) as caught:
        MarketPolicy.load(path)
    assert isinstance(caught.value, ConfigError)
    assert str(caught.value).startswith(f"market file {path}: ")
    return caught.value.problems


def test_the_minimal_file_loads_with_default_timings(tmp_path: Path) -> None:
    policy = MarketPolicy.load(write(tmp_path, GOOD))
    assert policy.pools["gpu"].aging_per_round == 0
    assert policy.tenants["default"] == Tenant("default", ("low",), "low", 2_000_000, None)
    assert (policy.round_ms, policy.claim_timeout_ms) == (200, 30_000)
    assert (policy.expiry_grace_ms, policy.bid_valid_rounds) == (5_000, 1_500)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"pools__gpu__capacity": 0},
            ("pools.gpu.capacity", "Input should be greater than or equal to 1, got a number (0)"),
        ),
        (
            {"pools__gpu__capacity": "2"},
            ("pools.gpu.capacity", 'Input should be a valid integer, got a string ("2")'),
        ),
        (
            {"pools__gpu__reserve": "-1"},
            ("pools.gpu.reserve", 'credits must not be negative, got "-1"'),
        ),
        (
            {"pools__gpu__reserve": 0.0000001},
            ("pools.gpu.reserve", "at most 6 decimals (1 micro-credit is 0.000001), got 1e-07"),
        ),
        ({"pools__gpu__lease_ttl_ms": None}, ("pools.gpu.lease_ttl_ms", "required key is missing")),
        (
            {"pools__gpu__ttl": 5},
            (
                "pools.gpu.ttl",
                "unknown key (allowed: capacity, reserve, lease_ttl_ms, aging_per_round, "
                "aging_cap)",
            ),
        ),
        (
            {"pools__bad pool": {"capacity": 1, "reserve": 1, "lease_ttl_ms": 1}},
            (
                "pools.bad pool",
                "'bad pool' is not a valid name: use letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
            ),
        ),
        (
            {"pools__gpu__aging_per_round": 1},
            ("pools.gpu.aging_cap", "must be above 0 when aging_per_round is set"),
        ),
        (
            {"bands": []},
            (
                "bands",
                "List should have at least 1 item after validation, not 0, got a list (length 0)",
            ),
        ),
        ({"bands": ["low", "low"]}, ("bands[1]", "band 'low' is listed twice")),
        (
            {"tenants__default__bands": ["low", "urgent"]},
            ("tenants.default.bands", "unknown band 'urgent' (bands: low, high)"),
        ),
        (
            {"tenants__default__default_band": "high"},
            ("tenants.default.default_band", "'high' is not one of the tenant's bands (low)"),
        ),
        (
            {"tenants__default__default_max_price": None},
            ("tenants.default.default_max_price", "required key is missing"),
        ),
        (
            {"tenants__default__default_max_price": 0},
            (
                "tenants.default.default_max_price",
                "Input should be greater than or equal to 1, got a number (0)",
            ),
        ),
        (
            {"tenants__default__budget_default": True},
            (
                "tenants.default.budget_default",
                "expected credits as a number or a decimal string, got a boolean (true)",
            ),
        ),
        (
            {"default_tenant": "prod"},
            ("default_tenant", "'prod' is not a tenant (tenants: default)"),
        ),
        (
            {"round": 100},
            (
                "round",
                "unknown key (allowed: pools, bands, tenants, default_tenant, round_ms, "
                "claim_timeout_ms, expiry_grace_ms, bid_valid_rounds)",
            ),
        ),
        (
            {"round_ms": 0},
            ("round_ms", "Input should be greater than or equal to 1, got a number (0)"),
        ),
    ],
)
def test_a_bad_market_file_names_the_key(
    tmp_path: Path, changes: dict[str, Any], problem: tuple[str, str]
) -> None:
    assert problems_of(tmp_path, edited(**changes)) == [problem]


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    doc = edited(pools__gpu__capacity=0, default_tenant="prod")
    doc["tenants"]["default"]["bands"] = ["nope"]
    schema = problems_of(tmp_path, doc)
    assert [key for key, _ in schema] == ["pools.gpu.capacity"]  # schema problems first
    doc["pools"]["gpu"]["capacity"] = 1
    names = problems_of(tmp_path, doc)
    assert names == [
        ("tenants.default.bands", "unknown band 'nope' (bands: low, high)"),
        ("default_tenant", "'prod' is not a tenant (tenants: default)"),
    ]


def test_a_tenants_bands_are_ordered_low_to_high_whatever_the_file_says(tmp_path: Path) -> None:
    doc = edited(bands=["low", "standard", "high"])
    doc["tenants"]["default"]["bands"] = ["high", "low"]
    tenant = MarketPolicy.load(write(tmp_path, doc)).tenants["default"]
    assert tenant.bands == ("low", "high")
    assert tenant.default_band == "low"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "(top level): expected a mapping of keys, got a list (length 1)"),
        ("", "(top level): expected a mapping of keys, got null"),
        ("pools: {gpu: [\n", "is not valid YAML"),
    ],
)
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "market.yaml"
    path.write_text(text)
    with pytest.raises(MarketPolicyError, match=r"^market file ") as caught:
        MarketPolicy.load(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_a_missing_file_says_which_variable_to_set(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(MarketPolicyError) as caught:
        MarketPolicy.load(path)
    assert str(caught.value) == (
        f"market file {path} cannot be read (No such file or directory); "
        "point FLEET_MARKET_FILE at a market file"
    )


def test_a_policy_built_in_code_is_checked_too() -> None:
    gpu = Pool("gpu", capacity=1, reserve=0, lease_ttl_ms=1)
    tenant = Tenant("t", ("low",), "low", default_max_price=1)
    with pytest.raises(MarketPolicyError) as caught:
        MarketPolicy(
            pools=MappingProxyType({"GPU": gpu}),
            bands=("low",),
            tenants=MappingProxyType({"t": tenant}),
            default_tenant="default",
        )
    assert caught.value.problems == [
        ("pools.GPU", "pool named 'gpu' under the key 'GPU'"),
        ("default_tenant", "'default' is not a tenant (tenants: t)"),
    ]
