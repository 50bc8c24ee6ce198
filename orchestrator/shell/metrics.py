"""The orchestrator's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet import usage
from fleet.messages import MarketOutcome, MarketOutcomeKind, UsageLine
from fleet.metrics import LATENCY_BUCKETS
from orchestrator.engine import Effects
from orchestrator.market.book import Book
from orchestrator.market.stats import AwardStat

# Credits per task: from a hundredth of a cent's worth of tokens to a long agent run.
COST_BUCKETS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dispatched = Counter(
            "fleet_tasks_dispatched", "Task attempts dispatched", ["capability"], registry=registry
        )
        self.completed = Counter(
            "fleet_tasks_completed",
            "Task attempts that succeeded",
            ["capability"],
            registry=registry,
        )
        self.failed = Counter(
            "fleet_tasks_failed", "Task attempts that failed", ["capability"], registry=registry
        )
        self.in_flight = Gauge(
            "fleet_tasks_in_flight", "Dispatched attempts without a result", registry=registry
        )
        self.task_latency = Histogram(
            "fleet_task_latency_seconds",
            "Dispatch to accepted result, per capability",
            ["capability"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.workflow_latency = Histogram(
            "fleet_workflow_latency_seconds",
            "Submission to terminal event",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Cost per task = this histogram's sum / count, by capability, version and tenant
        # (accepted results only; one that reported nothing costs 0). Float credits here,
        # for Prometheus; events and sums keep exact micro-credits.
        self.task_cost = Histogram(
            "fleet_task_cost_credits",
            "Credits a task attempt reported consuming (ctx.report_usage), per accepted result",
            ["capability", "version", "tenant"],
            buckets=COST_BUCKETS,
            registry=registry,
        )
        self.task_tokens = Counter(
            "fleet_task_tokens",
            "Tokens task attempts reported consuming, by direction (in, out)",
            ["capability", "version", "tenant", "direction"],
            registry=registry,
        )
        self.workflows_active = Gauge(
            "fleet_workflows_active", "Workflows held in memory", registry=registry
        )
        self.dead_letters = Counter(
            "fleet_dead_letters", "Records sent to dead letters", ["topic"], registry=registry
        )
        self.dropped = Counter(
            "fleet_inputs_dropped", "Duplicate, stale or unknown inputs ignored", registry=registry
        )
        # The market (auctioneer side: per pool this instance owns).
        self.market_outcomes = Counter(
            "fleet_market_outcomes",
            "Auctioneer answers: grants, lost bids, ended leases (expired, revoked, ...)",
            ["pool", "kind", "reason"],
            registry=registry,
        )
        self.clearing_price = Gauge(
            "fleet_market_clearing_price_micro",
            "Unit price of the last lease granted, micro-credits",
            ["pool"],
            registry=registry,
        )
        self.leased_units = Gauge(
            "fleet_market_leased_units", "Units under a live lease", ["pool"], registry=registry
        )
        self.capacity = Gauge(
            "fleet_market_capacity_units", "Units a pool has", ["pool"], registry=registry
        )
        self.waiting_bids = Gauge(
            "fleet_market_waiting_bids", "Bids waiting for a round", ["pool"], registry=registry
        )
        self.time_to_award = Histogram(
            "fleet_market_time_to_award_seconds",
            "From a bid to its award, per pool and band",
            ["pool", "band"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rounds_waited = Histogram(
            "fleet_market_rounds_waited",
            "Rounds an awarded bid lost before it won",
            ["pool"],
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=registry,
        )
        self.fill_rate = Gauge(
            "fleet_market_fill_rate",
            "Last round's units awarded / min(free units, units demanded)",
            ["pool"],
            registry=registry,
        )
        self.fairness = Gauge(
            "fleet_market_jain_fairness",
            "Jain's index of units awarded per workflow over the last minute (1 = equal)",
            ["pool"],
            registry=registry,
        )
        self.settlement_lag = Histogram(
            "fleet_market_settlement_lag_seconds",
            "From an award to its settlement on the workflow's budget",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.budget_denials = Counter(
            "fleet_market_budget_denials",
            "Bids not made: the workflow's budget could not hold their price",
            registry=registry,
        )

    def record(self, effects: Effects, in_flight: int, active: int) -> None:
        for task in effects.tasks:
            self.dispatched.labels(task.capability).inc()
        for done in effects.finished:
            (self.completed if done.succeeded else self.failed).labels(done.capability).inc()
            self.task_latency.labels(done.capability).observe(done.latency_ms / 1000)
            if done.usage is not None:
                self._usage(done.capability, done.version or "", done.tenant or "", done.usage)
        for event in effects.events:
            if event.kind.terminal and event.submitted_at_ms is not None:
                self.workflow_latency.labels(event.kind.value.lower()).observe(
                    max(0, event.at_ms - event.submitted_at_ms) / 1000
                )
        self.dropped.inc(len(effects.dropped))
        self.budget_denials.inc(effects.budget_denials)
        for lag_ms in effects.settlement_lags_ms:
            self.settlement_lag.observe(lag_ms / 1000)
        self.in_flight.set(in_flight)
        self.workflows_active.set(active)

    def _usage(self, capability: str, version: str, tenant: str, lines: list[UsageLine]) -> None:
        whole = usage.total(lines)
        self.task_cost.labels(capability, version, tenant).observe(usage.cost_in_credits(whole))
        tokens = self.task_tokens
        tokens.labels(capability, version, tenant, "in").inc(whole.tokens_in)
        tokens.labels(capability, version, tenant, "out").inc(whole.tokens_out)

    def market_outcome(self, outcome: MarketOutcome) -> None:
        reason = outcome.reason or ""
        self.market_outcomes.labels(outcome.resource, outcome.kind.value, reason).inc()
        if outcome.kind is MarketOutcomeKind.GRANTED and outcome.lease is not None:
            self.clearing_price.labels(outcome.resource).set(outcome.lease.unit_price)

    def market_books(self, books: Iterable[Book]) -> None:
        for book in books:
            self.leased_units.labels(book.resource).set(book.leased_units())
            self.capacity.labels(book.resource).set(book.capacity)
            self.waiting_bids.labels(book.resource).set(len(book.waiting))

    def market_award(self, award: AwardStat, band: str) -> None:
        self.time_to_award.labels(award.pool, band).observe(award.wait_ms / 1000)
        self.rounds_waited.labels(award.pool).observe(award.rounds_waited)
