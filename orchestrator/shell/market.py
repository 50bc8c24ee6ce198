"""The auctioneer's Kafka side, inside the orchestrator's transaction.

The orchestrator consumes ``market.bids`` in the same group as its workflow topics (the
range assignor gives one instance partition p of all of them), so the instance owning
partition p of ``market.bids`` is the auctioneer of every pool hashed there. Everything
an input causes (outcomes, ledger rounds, the book's snapshot) is produced by the
orchestrator's transactional producer with the input's offset: a zombie's rounds are
aborted, and the next owner restores the books from ``market.state`` (co-partitioned)
and begins a new epoch.
"""

from __future__ import annotations

import structlog
from confluent_kafka import Message, Producer

from fleet.codec import Codec
from fleet.kafka import KafkaClients, headers_for, produce
from fleet.messages import MarketInput
from fleet.topology import Topics
from orchestrator.market.auctioneer import Auctioneer, Output
from orchestrator.market.policy import MarketPolicy
from orchestrator.market.stats import FairnessWindow, fill_rate
from orchestrator.shell import changelog
from orchestrator.shell.metrics import OrchestratorMetrics

log = structlog.get_logger()


class MarketShell:
    def __init__(
        self,
        policy: MarketPolicy,
        *,
        clients: KafkaClients,
        producer: Producer,
        codec: Codec,
        topics: Topics,
        metrics: OrchestratorMetrics,
    ) -> None:
        self.auctioneer = Auctioneer(policy)
        self.clients = clients
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.metrics = metrics
        self.partition_of: dict[str, int] = {}  # pool -> its market.bids partition
        self.bands = policy.bands
        self.fairness: dict[str, FairnessWindow] = {}

    def handle(self, record: Message, now_ms: int) -> None:
        """One market input (decoding errors go to the caller's dead-letter path)."""
        message = self.codec.decode(record.value(), MarketInput, record=record)
        self.partition_of[message.resource] = record.partition() or 0
        self.publish(self.auctioneer.on_input(message, record.offset() or 0, now_ms), now_ms)

    def tick(self, now_ms: int) -> None:
        self.publish(self.auctioneer.tick(now_ms), now_ms)

    def next_due_ms(self) -> int | None:
        return self.auctioneer.next_due_ms()

    def publish(self, out: Output, now_ms: int) -> None:
        for outcome in out.outcomes:
            produce(
                self.producer,
                self.topics.market_outcomes,
                self.codec.encode(outcome),
                key=outcome.workflow_id,
                headers=headers_for(outcome, None),
            )
            self.metrics.market_outcome(outcome)
        for round_record, cleared in zip(out.rounds, out.records, strict=True):
            rate = fill_rate(
                cleared.free, sum(b.units for b in cleared.bids), cleared.outcome.units
            )
            if rate is not None:
                self.metrics.fill_rate.labels(cleared.resource).set(rate)
            produce(
                self.producer,
                self.topics.market_ledger,
                self.codec.encode(round_record),
                key=round_record.resource,
                headers=headers_for(round_record, None),
            )
        for award in out.awards:
            band = self.bands[award.band] if award.band < len(self.bands) else str(award.band)
            self.metrics.market_award(award, band)
            window = self.fairness.setdefault(award.pool, FairnessWindow())
            window.add(now_ms, award.workflow_id, award.units)
            if (index := window.index(now_ms)) is not None:
                self.metrics.fairness.labels(award.pool).set(index)
        for reason in out.dropped:
            log.info("market input dropped", reason=reason)
        self.metrics.market_books(self.auctioneer.books())

    def write_changes(self) -> None:
        """The changed books, to their pool's partition of the market changelog."""
        for resource, snapshot in self.auctioneer.take_changes().items():
            self.producer.produce(
                self.topics.market_state,
                key=resource,
                value=changelog.encode(snapshot),
                partition=self.partition_of[resource],
            )

    def restore(self, partitions: set[int]) -> None:
        """Take over the pools of ``partitions``: each book from its snapshot."""
        restored = changelog.read_partitions(self.clients, self.topics.market_state, partitions)
        for resource, (partition, snapshot) in sorted(restored.items()):
            if self.auctioneer.restore(resource, snapshot) is not None:
                self.partition_of[resource] = partition

    def forget(self, owned: set[int]) -> None:
        keep = {r for r, p in self.partition_of.items() if p in owned}
        self.auctioneer.forget(keep)
        self.partition_of = {r: p for r, p in self.partition_of.items() if r in keep}
