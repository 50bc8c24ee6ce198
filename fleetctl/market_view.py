"""What ``fleet market`` shows: each pool's book, read back from the market's topics.

The auctioneers own the books; this module only reads what they committed, as
read_committed, so a zombie's aborted rounds never show:

* ``market.state`` (compacted): the latest snapshot of each pool's book
  (``Book.to_json``), read to the high watermark like a new owner's restore;
* ``market.ledger``: the latest round that granted a lease, read backwards from the
  end, for the last clearing price (a book forgets a lease's price once it ends);
* ``market.bids``: the record of the oldest waiting bid, for its age (a book keeps a
  bid's offset and round, not its time).

A pool of the policy without a snapshot has never had an input: it shows its
configured capacity and nothing else. The pure half (:func:`view_of`, :func:`render`)
works on books, so it is tested without a broker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, Message
from pydantic import JsonValue

from fleet.codec import Codec, SchemaStore
from fleet.errors import BrokerError, FleetError
from fleet.kafka import KafkaClients
from fleet.kafka.readback import ReadBack, ReadIncomplete
from fleet.messages import MarketRound
from fleet.settings import Settings
from fleet.topology import Topics
from fleetctl.console import Column, Table, format_duration
from orchestrator.market.book import Book, Waiting
from orchestrator.market.policy import MarketPolicy, micro_to_credits

# Ledger records read back per partition at most, looking for a pool's last award. A
# pool whose recent rounds granted nothing falls back to its live leases' prices.
LEDGER_SCAN_MAX = 50_000
# The first look back from the ledger's end, in records per partition; each next window
# is 4 times larger, so a pool idle for long costs a few reads, not one per round.
LEDGER_FIRST_WINDOW = 256


@dataclass(frozen=True)
class PoolView:
    pool: str
    configured: bool  # in the market file this process read
    capacity: int
    leased: int  # units held by live leases
    free: int  # units below the capacity that no lease holds: what the next round sells
    leases: int
    queue: dict[str, int]  # waiting bids by band name, low -> high
    last_price: int | None  # micro-credits per unit of the last lease granted
    oldest_wait_rounds: int | None  # rounds closed since the oldest waiting bid arrived
    oldest_wait_ms: int | None  # its age now, if its record could be read
    epoch: int | None  # of the auctioneer that wrote the snapshot; None: no book yet
    round_no: int | None  # the number of the book's next round (= rounds closed so far)

    def to_json(self) -> dict[str, JsonValue]:
        doc: dict[str, JsonValue] = dict(asdict(self))
        # Credits as exact decimal text next to the integer: no float ever stands for money.
        doc["last_price_micro"] = self.last_price
        doc["last_price"] = None if self.last_price is None else micro_to_credits(self.last_price)
        return doc


@dataclass(frozen=True)
class MarketReport:
    views: list[PoolView]
    warnings: list[str] = field(default_factory=list)
    at_ms: int = 0

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "at_ms": self.at_ms,
            "pools": [v.to_json() for v in self.views],
            "warnings": list(self.warnings),
        }


def band_name(bands: tuple[str, ...], number: int) -> str:
    # A bid keeps the band number it was placed with; a market file since changed may
    # no longer have it, and the bid still waits.
    return bands[number] if 0 <= number < len(bands) else f"band{number}"


def oldest_waiting(book: Book) -> Waiting | None:
    """The bid waiting longest: the lowest offset (bids of a pool share a partition)."""
    return min(book.waiting.values(), key=lambda w: w.offset, default=None)


def last_grant_price(round_json: JsonValue) -> int | None:
    """Unit price of the last lease a ledger round granted (awards are in rank order), the
    same figure as the orchestrator's ``fleet_market_clearing_price_micro``."""
    if not isinstance(round_json, dict):
        return None
    outcome = round_json.get("outcome")
    awards = outcome.get("awards") if isinstance(outcome, dict) else None
    if not isinstance(awards, list) or not awards or not isinstance(awards[-1], dict):
        return None
    price = awards[-1].get("unit_price")
    return price if isinstance(price, int) else None


def view_of(
    pool: str,
    book: Book | None,
    policy: MarketPolicy,
    *,
    last_price: int | None = None,
    oldest_bid_at_ms: int | None = None,
    now_ms: int = 0,
) -> PoolView:
    """One pool's line: from its book, or from the policy alone if it has none yet."""
    queue = {band: 0 for band in policy.bands}
    configured = policy.pools.get(pool)
    if book is None:
        capacity = configured.capacity if configured is not None else 0
        return PoolView(
            pool=pool,
            configured=configured is not None,
            capacity=capacity,
            leased=0,
            free=capacity,
            leases=0,
            queue=queue,
            last_price=last_price,
            oldest_wait_rounds=None,
            oldest_wait_ms=None,
            epoch=None,
            round_no=None,
        )
    for waiting in book.waiting.values():
        name = band_name(policy.bands, waiting.request.band)
        queue[name] = queue.get(name, 0) + 1
    if last_price is None and book.leases:
        # The ledger had no award to show: the newest live lease (tokens only grow) says it.
        last_price = max(book.leases.values(), key=lambda lease: lease.token).unit_price
    oldest = oldest_waiting(book)
    age = None if oldest is None or oldest_bid_at_ms is None else now_ms - oldest_bid_at_ms
    return PoolView(
        pool=pool,
        configured=configured is not None,
        capacity=book.capacity,
        leased=book.leased_units(),
        free=len(book.free_units()),
        leases=len(book.leases),
        queue=queue,
        last_price=last_price,
        oldest_wait_rounds=None if oldest is None else book.round_no - oldest.first_round,
        oldest_wait_ms=None if age is None else max(0, age),
        epoch=book.epoch,
        round_no=book.round_no,
    )


def format_age(ms: int | None) -> str:
    return format_duration(ms)


def render(views: Iterable[PoolView], bands: tuple[str, ...]) -> str:
    """The table ``fleet market`` prints when piped: one line per pool."""
    return market_table(views, bands).plain()


def market_table(views: Iterable[PoolView], bands: tuple[str, ...]) -> Table:
    """One row per pool (a rich table on a terminal, :func:`render` on a pipe)."""
    table = Table(
        [
            Column("POOL", style="bold"),
            Column("CAPACITY", right=True),
            Column("LEASED", right=True),
            Column("QUEUE " + "/".join(bands)),
            Column("LAST PRICE", right=True),
            Column("OLDEST WAIT"),
            Column("EPOCH", right=True),
            Column("ROUND", right=True),
        ]
    )
    for v in views:
        extra = [b for b in v.queue if b not in bands]  # bands gone from the market file
        queue = "/".join(str(v.queue.get(b, 0)) for b in bands)
        queue += "".join(f" +{v.queue[b]} {b}" for b in extra)
        wait = "-"
        if v.oldest_wait_rounds is not None:
            rounds = v.oldest_wait_rounds
            wait = f"{format_age(v.oldest_wait_ms)} ({rounds} round{'' if rounds == 1 else 's'})"
        table.add(
            v.pool if v.configured else f"{v.pool} (not in the market file)",
            str(v.capacity),
            str(v.leased),
            queue,
            "-" if v.last_price is None else micro_to_credits(v.last_price),
            wait,
            "-" if v.epoch is None else str(v.epoch),
            "-" if v.round_no is None else str(v.round_no),
        )
    return table


# -- reading the topics ------------------------------------------------------------------
def read_market(settings: Settings, policy: MarketPolicy, timeout_s: float = 15.0) -> MarketReport:
    """Every pool of the policy, and every pool with a book, as the topics say now."""
    reader = _Reader(settings, timeout_s)
    warnings: list[str] = []
    try:
        books = reader.books(warnings)
        rounds_seen = {pool for pool, (_, book) in books.items() if book.round_no > 0}
        prices = reader.last_prices(rounds_seen, warnings)
        bid_times = reader.oldest_bid_times(books, warnings)
    finally:
        reader.close()
    now_ms = int(time.time() * 1000)
    names = list(policy.pools) + sorted(set(books) - set(policy.pools))
    views = [
        view_of(
            name,
            books[name][1] if name in books else None,
            policy,
            last_price=prices.get(name),
            oldest_bid_at_ms=bid_times.get(name),
            now_ms=now_ms,
        )
        for name in names
    ]
    warnings += [
        f"pool {v.pool!r} has a book but is not in {settings.market_file}"
        for v in views
        if not v.configured
    ]
    return MarketReport(views, warnings, now_ms)


class _Reader:
    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.topics = Topics(settings.topic_prefix)
        self.codec = Codec(SchemaStore(settings.schemas_dir))
        self.clients = KafkaClients(settings, settings.require_bootstrap(), role="market")
        self.admin = self.clients.ready_admin()
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        # read_committed (the product's default): aborted rounds and snapshots never show.
        self.reader = ReadBack(self.clients, "fleet-market", strict=True)

    def close(self) -> None:
        self.reader.close()

    def books(self, warnings: list[str]) -> dict[str, tuple[int, Book]]:
        """{pool: (partition, book)} from the latest snapshot of each pool (a tombstone
        drops the pool's book)."""
        topic = self.topics.market_state
        latest = self.reader.latest(
            topic,
            self._partitions(topic),
            self.deadline,
            on_incomplete=lambda exc: warnings.append(self._stale(exc)),
        )
        books: dict[str, tuple[int, Book]] = {}
        for key, found in sorted(latest.items()):
            pool = key.decode(errors="replace")
            try:
                books[pool] = (found.partition, Book.from_json(json.loads(found.value)))
            except (ValueError, TypeError, KeyError, FleetError) as exc:
                warnings.append(f"pool {pool!r}: snapshot not readable ({exc!r}); not shown")
        return books

    def last_prices(self, pools: set[str], warnings: list[str]) -> dict[str, int]:
        """{pool: unit price of its last lease granted}, reading the ledger backwards in
        growing windows until every pool has one, or the start, the scan limit or the
        deadline is reached. Records are filtered by key before anything is decoded."""
        topic = self.topics.market_ledger
        pending = {pool.encode() for pool in pools}
        found: dict[str, int] = {}
        floors: dict[int, int] = {}  # partition -> lowest offset to read
        uppers: dict[int, int] = {}  # partition -> end of what is still unread
        for p in self._partitions(topic):
            low, high = self.reader.bounds(topic, p)
            floors[p], uppers[p] = max(low, high - LEDGER_SCAN_MAX), high
        window = LEDGER_FIRST_WINDOW
        while pending and time.monotonic() < self.deadline:
            ranges = {
                p: (max(floors[p], upper - window), upper)
                for p, upper in uppers.items()
                if upper > floors[p]
            }
            if not ranges:
                break
            newest: dict[bytes, tuple[int, int]] = {}  # key -> (offset, price) in this window
            for record in self._read(topic, ranges, warnings):
                key = record.key()
                if not isinstance(key, bytes) or key not in pending:
                    continue  # another pool's rounds, or one already found later on
                try:
                    price = last_grant_price(self.codec.decode(record.value(), MarketRound).record)
                except FleetError:
                    continue  # not a round this reader understands; an older one may be
                offset = record.offset() or 0
                if price is not None and offset >= newest.get(key, (-1, 0))[0]:
                    newest[key] = (offset, price)
            for key, (_, price) in newest.items():
                found[key.decode()] = price
                pending.discard(key)
            uppers.update({p: start for p, (start, _) in ranges.items()})
            window *= 4
        return found

    def oldest_bid_times(
        self, books: Mapping[str, tuple[int, Book]], warnings: list[str]
    ) -> dict[str, int]:
        """{pool: time its oldest waiting bid was produced}: the bid's own record, in the
        bids partition the snapshot was written to (the auctioneer writes each book to
        its pool's bids partition)."""
        topic = self.topics.market_bids
        times: dict[str, int] = {}
        for pool, (partition, book) in books.items():
            oldest = oldest_waiting(book)
            if oldest is None or time.monotonic() > self.deadline:
                continue
            span = {partition: (oldest.offset, oldest.offset + 1)}
            for record in self._read(topic, span, warnings):
                kind, at_ms = record.timestamp()
                if record.offset() == oldest.offset and kind != TIMESTAMP_NOT_AVAILABLE:
                    times[pool] = at_ms
        return times

    def _partitions(self, topic: str) -> list[int]:
        try:
            return sorted(self.admin.list_topics(topic=topic, timeout=10).topics[topic].partitions)
        except (KafkaException, KeyError) as exc:
            raise BrokerError(f"cannot read {topic}: {exc}; run `fleet topics apply`") from exc

    def _read(
        self, topic: str, ranges: Mapping[int, tuple[int, int]], warnings: list[str]
    ) -> list[Message]:
        """The committed records of ``[start, end)`` in each partition (fleet.kafka.readback).

        An open transaction holds a read_committed reader back until it ends, at worst
        transaction.timeout.ms after its writer died: past the deadline this returns what
        it has, with a warning."""
        records: list[Message] = []
        try:
            records.extend(self.reader.in_range(topic, ranges, self.deadline))
        except ReadIncomplete as exc:
            warnings.append(self._stale(exc))
        return records

    def _stale(self, incomplete: ReadIncomplete) -> str:
        return (
            f"{incomplete.topic} partitions {incomplete.partitions} not read to their end "
            f"within {self.timeout_s:g} s (an open transaction, e.g. of a killed "
            "orchestrator, holds them back until it times out): figures may be stale"
        )
