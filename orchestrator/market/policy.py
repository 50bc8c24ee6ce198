"""The market's configuration (``market.yaml``): resource pools, priority bands, tenants.

Loaded once at the entry point from ``Settings.market_file``. Inside, money is integer
micro-credits (1 credit = 1,000,000) and time is milliseconds; people write credits as
numbers or decimal strings (``2``, ``1.5``, ``"0.25"``), converted exactly here, so no
float ever reaches a price, a hold or a sum.

Bands are policy, never the bidder's word (DESIGN §7): a workflow names a band, and
:meth:`MarketPolicy.band_of` checks that its tenant may use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from fleet.errors import ConfigError, SpecError
from fleet.json_codec import json_kind
from fleet.money import MAX_CREDITS, MICRO, credits_to_micro, micro_to_credits, pydantic_money
from orchestrator.market.clearing import Pricing
from orchestrator.refs import STEP_ID_PATTERN

__all__ = [
    "MAX_CREDITS",
    "MICRO",
    "UNITS_MAX",
    "MarketPolicy",
    "MarketPolicyError",
    "NotAllowedError",
    "Pool",
    "Tenant",
    "credits_to_micro",
    "micro_to_credits",
    "pydantic_money",
]

UNITS_MAX = 2**31 - 1  # units travel in Avro ints

# Pool, band and tenant names: the alphabet of step ids and capabilities, because pool
# names become Kafka keys and metric labels.
NAME_PATTERN = rf"^{STEP_ID_PATTERN.pattern}$"

Problem = tuple[str, str]


class MarketPolicyError(ConfigError):
    """The market file (or a policy built in code) is invalid. ``problems`` lists each
    ``(key, reason)``, keys written as in the file (``pools.gpu.capacity``)."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class NotAllowedError(SpecError):
    """A workflow asks for what the policy does not allow it (an unknown tenant, a band its
    tenant may not use). A spec error, so the orchestrator rejects it with the reason."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__([(location, reason)])
        self.location = location
        self.reason = reason


@dataclass(frozen=True)
class Pool:
    """A contended resource: ``capacity`` interchangeable units sold by auction."""

    name: str
    capacity: int  # units; an operator may change it at run time (a CAPACITY record)
    reserve: int  # micro-credits per unit: no unit goes for less
    lease_ttl_ms: int  # a lease not released by then is taken back (a dead worker)
    aging_per_round: int = 0  # micro-credits of score per round a bid waits
    aging_cap: int = 0  # the most aging credit a bid can collect

    @property
    def pricing(self) -> Pricing:
        return Pricing(self.reserve, self.aging_per_round, self.aging_cap)


@dataclass(frozen=True)
class Tenant:
    """Who a workflow bids for, and what the policy lets it do."""

    name: str
    bands: tuple[str, ...]  # the bands it may use, low -> high
    default_band: str  # when the workflow names no priority
    default_max_price: int  # micro-credits per unit, when a step names no max_price
    budget_default: int | None = None  # micro-credits; None: workflows must bring a budget


@dataclass(frozen=True, kw_only=True)
class MarketPolicy:
    """Pools, bands (low -> high: a band's number is its index) and tenants.

    Keyword-only: the timings have defaults and the rest does not, and a policy is
    clearer spelled out than positional.
    """

    pools: Mapping[str, Pool]
    bands: tuple[str, ...]
    tenants: Mapping[str, Tenant]
    default_tenant: str
    round_ms: int = 200  # a round closes this often while bids are pending
    claim_timeout_ms: int = 30_000  # an award not claimed by then is taken back
    expiry_grace_ms: int = 5_000  # a lease ends at expires_at + grace (clock skew)
    bid_valid_rounds: int = 1_500  # a bid not served within this many rounds expires

    def __post_init__(self) -> None:
        problems = list(_cross_problems(self))
        if problems:
            raise MarketPolicyError(f"market policy is invalid: {_joined(problems)}", problems)

    @property
    def enabled(self) -> bool:
        """False when no pool is configured: no step may then ask for resources."""
        return bool(self.pools)

    def tenant_of(self, tenant: str | None) -> Tenant:
        """The named tenant (None: the default one); :class:`NotAllowedError` if unknown."""
        name = self.default_tenant if tenant is None else tenant
        found = self.tenants.get(name)
        if found is None:
            known = ", ".join(self.tenants)
            raise NotAllowedError("tenant", f"unknown tenant {name!r} (tenants: {known})")
        return found

    def band_of(self, tenant: str | None, priority: str | None) -> int:
        """The band number a workflow of ``tenant`` bids in when it asks for ``priority``
        (None: the tenant's default band). :class:`NotAllowedError` says why not."""
        who = self.tenant_of(tenant)
        band = who.default_band if priority is None else priority
        if band not in self.bands:
            known = ", ".join(self.bands)
            raise NotAllowedError("priority", f"unknown band {band!r} (bands: {known})")
        if band not in who.bands:
            allowed = ", ".join(who.bands)
            raise NotAllowedError(
                "priority", f"tenant {who.name!r} may not use band {band!r} (allowed: {allowed})"
            )
        return self.bands.index(band)

    @classmethod
    def empty(cls) -> MarketPolicy:
        """No pools: the market is off, and a step that asks for resources is rejected."""
        standard = Tenant("default", ("standard",), "standard", default_max_price=1)
        return cls(
            pools=MappingProxyType({}),
            bands=("standard",),
            tenants=MappingProxyType({"default": standard}),
            default_tenant="default",
        )

    @classmethod
    def load(cls, path: Path) -> MarketPolicy:
        """The policy in the YAML file at ``path``, or :class:`MarketPolicyError` naming the
        file and each bad key."""
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise MarketPolicyError(
                f"market file {path} cannot be read ({exc.strerror}); "
                "point FLEET_MARKET_FILE at a market file"
            ) from exc
        except yaml.YAMLError as exc:
            raise MarketPolicyError(f"market file {path} is not valid YAML: {exc}") from exc
        try:
            parsed = _File.model_validate(raw)
        except ValidationError as exc:
            problems = [_file_problem(error) for error in exc.errors()]
            raise MarketPolicyError(f"market file {path}: {_joined(problems)}", problems) from None
        try:
            return parsed.policy()
        except MarketPolicyError as exc:
            raise MarketPolicyError(
                f"market file {path}: {_joined(exc.problems)}", exc.problems
            ) from None


def _cross_problems(policy: MarketPolicy) -> Iterator[Problem]:
    """What the file's schema cannot see: names that must agree with each other."""
    seen: set[str] = set()
    for number, band in enumerate(policy.bands):
        if band in seen:
            yield (f"bands[{number}]", f"band {band!r} is listed twice")
        seen.add(band)
    if not policy.bands:
        yield ("bands", "at least one band is required")
    for key, pool in policy.pools.items():
        if pool.name != key:
            yield (f"pools.{key}", f"pool named {pool.name!r} under the key {key!r}")
        if pool.aging_per_round > 0 and pool.aging_cap == 0:
            yield (f"pools.{key}.aging_cap", "must be above 0 when aging_per_round is set")
    for key, tenant in policy.tenants.items():
        if tenant.name != key:
            yield (f"tenants.{key}", f"tenant named {tenant.name!r} under the key {key!r}")
        for band in tenant.bands:
            if band not in seen:
                known = ", ".join(policy.bands)
                yield (f"tenants.{key}.bands", f"unknown band {band!r} (bands: {known})")
        if tenant.default_band not in tenant.bands:
            yield (
                f"tenants.{key}.default_band",
                f"{tenant.default_band!r} is not one of the tenant's bands "
                f"({', '.join(tenant.bands)})",
            )
    if policy.default_tenant not in policy.tenants:
        yield (
            "default_tenant",
            f"{policy.default_tenant!r} is not a tenant (tenants: {', '.join(policy.tenants)})",
        )


# The file's schema. Strict: "2" or 2.0 is not a capacity; money goes through credits.
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=200)]
Credits = Annotated[int, BeforeValidator(pydantic_money)]


def _optional_money(value: object) -> int | None:
    return None if value is None else pydantic_money(value)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _PoolFile(_Schema):
    capacity: int = Field(ge=1, le=UNITS_MAX)
    reserve: Credits
    lease_ttl_ms: int = Field(ge=1)
    aging_per_round: Credits = 0
    aging_cap: Credits = 0


class _TenantFile(_Schema):
    bands: list[Name] = Field(min_length=1)
    default_band: Name | None = None  # None: the tenant's lowest band
    default_max_price: Annotated[int, BeforeValidator(pydantic_money), Field(ge=1)]
    budget_default: Annotated[int | None, BeforeValidator(_optional_money)] = None


class _File(_Schema):
    pools: dict[Name, _PoolFile] = {}
    bands: list[Name] = Field(min_length=1)
    tenants: dict[Name, _TenantFile] = Field(min_length=1)
    default_tenant: Name = "default"
    round_ms: int = Field(default=200, ge=1)
    claim_timeout_ms: int = Field(default=30_000, ge=1)
    expiry_grace_ms: int = Field(default=5_000, ge=0)
    bid_valid_rounds: int = Field(default=1_500, ge=1)

    def policy(self) -> MarketPolicy:
        rank = {band: number for number, band in enumerate(self.bands)}
        tenants = {}
        for name, tenant in self.tenants.items():
            # Low -> high whatever the order in the file; unknown bands last, to be reported.
            bands = tuple(sorted(tenant.bands, key=lambda b: rank.get(b, len(rank))))
            default_band = tenant.default_band if tenant.default_band is not None else bands[0]
            tenants[name] = Tenant(
                name, bands, default_band, tenant.default_max_price, tenant.budget_default
            )
        pools = {
            name: Pool(
                name,
                pool.capacity,
                pool.reserve,
                pool.lease_ttl_ms,
                pool.aging_per_round,
                pool.aging_cap,
            )
            for name, pool in self.pools.items()
        }
        return MarketPolicy(
            pools=MappingProxyType(pools),
            bands=tuple(self.bands),
            tenants=MappingProxyType(tenants),
            default_tenant=self.default_tenant,
            round_ms=self.round_ms,
            claim_timeout_ms=self.claim_timeout_ms,
            expiry_grace_ms=self.expiry_grace_ms,
            bid_valid_rounds=self.bid_valid_rounds,
        )


_KEYS = {
    "pools": _PoolFile.model_fields,
    "tenants": _TenantFile.model_fields,
}


def _file_problem(error: Any) -> Problem:
    loc = error["loc"]
    kind = error["type"]
    if not loc:
        return ("(top level)", f"expected a mapping of keys, got {_kind(error['input'])}")
    if loc[-1] == "[key]":  # a pool, band or tenant name that is not a valid name
        loc = loc[:-1]
    key = "".join(
        f"[{part}]" if isinstance(part, int) else (f".{part}" if i else str(part))
        for i, part in enumerate(loc)
    )
    if kind == "string_pattern_mismatch":
        return (
            key,
            f"{error['input']!r} is not a valid name: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    if kind == "extra_forbidden":
        fields = _KEYS[loc[0]] if len(loc) == 3 and loc[0] in _KEYS else _File.model_fields
        return (key, f"unknown key (allowed: {', '.join(fields)})")
    if kind == "missing":
        return (key, "required key is missing")
    if kind == "money":
        return (key, str(error["msg"]))
    return (key, f"{error['msg']}, got {_kind(error['input'])}")


def _joined(problems: list[Problem]) -> str:
    return "; ".join(f"{key}: {reason}" for key, reason in problems)


def _kind(value: object) -> str:
    phrase = json_kind(value)
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        return f"{phrase} ({json.dumps(value)})"
    return phrase
