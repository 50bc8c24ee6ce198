"""Market admission: whether a valid spec may run under the deployment's market
policy (:func:`check_market`), and the band and budget a workflow gets when it is
accepted (:func:`admit`)."""

from __future__ import annotations

from orchestrator.market.budget import Budget
from orchestrator.market.policy import MarketPolicy, NotAllowedError, Tenant, micro_to_credits
from orchestrator.problems import Problem
from orchestrator.spec import StepSpec, WorkflowSpec
from orchestrator.state import WorkflowState


def check_market(spec: WorkflowSpec, policy: MarketPolicy) -> list[Problem]:
    """What in a valid ``spec`` the market ``policy`` forbids or makes impossible, as
    ``(location, reason)`` problems like ``parse_spec``'s; empty when it may run.

    Separate from ``parse_spec`` because the policy is the deployment's, not the
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


def admit(state: WorkflowState, policy: MarketPolicy) -> None:
    """Give an accepted workflow whose steps need resources its band and budget."""
    spec = state.spec
    if any(step.resources for step in spec.steps):
        # Band and budget are decided now, from the policy in force at submission.
        tenant = policy.tenant_of(spec.tenant)
        state.band = policy.band_of(tenant.name, spec.priority)
        limit = spec.budget if spec.budget is not None else tenant.budget_default
        state.budget = Budget(limit or 0)
