"""`fleet budget top-up` and `fleet market` without a broker: argument parsing, the
refusals that need no broker, and the pool table rendered from books built with the
market's own pure classes (through their snapshot JSON, as the CLI reads them)."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest
from pydantic import JsonValue

from fleet.kafka.client import FleetClient
from fleetctl.cli import EXIT_ERROR, main, parse_top_up, parse_units
from fleetctl.market_view import PoolView, format_age, last_grant_price, render, view_of
from orchestrator.market.book import BidRequest, Book
from orchestrator.market.policy import MarketPolicy, Pool, Tenant
from tests.fleet_cli import free_port

pytestmark = pytest.mark.unit

CREDIT = 1_000_000
POLICY = MarketPolicy(
    pools=MappingProxyType(
        {
            "gpu": Pool("gpu", 2, reserve=CREDIT, lease_ttl_ms=60_000),
            "license": Pool("license", 1, reserve=CREDIT // 2, lease_ttl_ms=60_000),
        }
    ),
    bands=("low", "high"),
    tenants=MappingProxyType(
        {"default": Tenant("default", ("low", "high"), "low", default_max_price=3 * CREDIT)}
    ),
    default_tenant="default",
)
MARKET_YAML = """
pools:
  gpu: {capacity: 2, reserve: 1, lease_ttl_ms: 60000}
bands: [low, high]
tenants:
  default: {bands: [low, high], default_max_price: 3, budget_default: 10}
"""


def _bid(bid_id: str, band: int, price_credits: int, units: int = 1) -> BidRequest:
    return BidRequest(
        bid_id=bid_id,
        workflow_id=f"wf-{bid_id}",
        task_id=f"task-{bid_id}",
        band=band,
        price=price_credits * CREDIT,
        units=units,
        lease_ttl_ms=60_000,
        valid_rounds=100,
    )


def _snapshot(book: Book) -> Book:
    """The book as `fleet market` sees it: through the changelog's JSON."""
    return Book.from_json(json.loads(json.dumps(book.to_json())))


def _contended_gpu() -> tuple[Book, JsonValue]:
    """Round 0: a alone, at the reserve. Round 1, one unit free: f (high, 4) beats d (high,
    3) and pays d's 3; d and the two low bids c and e wait. Returns the book and round 1."""
    book = Book("gpu", 2, POLICY.pools["gpu"].pricing, epoch=3)
    book.bid(_bid("a", 1, 3), offset=0)
    book.close_round(1_000, (0, 0))
    for offset, request in enumerate(
        [_bid("c", 0, 2), _bid("d", 1, 3), _bid("e", 0, 2), _bid("f", 1, 4)], start=1
    ):
        book.bid(request, offset)
    second = book.close_round(1_200, (1, 4)).record
    return book, json.loads(json.dumps(second.to_json()))


# -- parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "micro"),
    [("5", 5 * CREDIT), ("0.25", 250_000), ("0.1", 100_000), ("0.000001", 1), ("12.5", 12_500_000)],
)
def test_top_up_amounts_are_exact_micro_credits(text: str, micro: int) -> None:
    assert parse_top_up(text) == micro


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0", "above 0"),
        ("0.000", "above 0"),
        ("-1", "must not be negative"),
        ("1.0000001", "at most 6 decimals"),
        ("1e3", "expected credits as a decimal"),
        ("nan", "expected credits as a decimal"),
        ("1,5", "expected credits as a decimal"),
        ("", "expected credits as a decimal"),
    ],
)
def test_bad_top_up_amounts_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_top_up(text)


@pytest.mark.parametrize(("text", "units"), [("0", 0), ("3", 3), ("2147483647", 2**31 - 1)])
def test_capacity_units(text: str, units: int) -> None:
    assert parse_units(text) == units


@pytest.mark.parametrize("text", ["-1", "3.0", "+3", " 3", "3_0", "x", "", "٣", "2147483648"])
def test_bad_capacity_units_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"whole number of units|at most"):
        parse_units(text)


def _closed_port() -> int:
    return free_port()  # closed once it returns: nothing listens there


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A market file and a broker address where nothing listens: any attempt to reach
    Kafka would fail the test with a connection error instead of the expected refusal."""
    market = tmp_path / "market.yaml"
    market.write_text(MARKET_YAML)
    monkeypatch.setenv("FLEET_MARKET_FILE", str(market))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("FLEET_CONNECT_TIMEOUT", "1")
    return market


def test_a_bad_amount_is_a_usage_error_before_any_broker(
    offline: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["budget", "top-up", "wf-1", "1.0000001"]) == 2
    err = capfd.readouterr().err
    assert "Invalid value for 'AMOUNT': at most 6 decimals" in err and "Traceback" not in err


def test_bad_units_are_a_usage_error(offline: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["market", "capacity", "gpu", "two"]) == 2
    assert "Invalid value for 'UNITS': expected a whole number of units" in capfd.readouterr().err


@pytest.mark.parametrize("argv", [["capacity", "tpu", "3"], ["revoke", "tpu"]])
def test_an_unknown_pool_is_refused_before_anything_is_sent(
    offline: Path, argv: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["market", *argv]) == EXIT_ERROR
    err = capfd.readouterr().err
    assert err.strip() == f"fleet: error: unknown pool 'tpu' in {offline} (pools: gpu)"


def test_an_invalid_market_file_is_one_error_line(
    offline: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    offline.write_text("pools: {gpu: {capacity: 0}}\n")
    assert main(["market"]) == EXIT_ERROR
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fleet: error: market file {offline}")


@pytest.mark.parametrize("amount", [0, -1, 1.5, True])
def test_the_client_refuses_a_top_up_that_is_not_positive_micro_credits(amount: object) -> None:
    client = FleetClient.__new__(FleetClient)  # no broker: the check comes before any use
    with pytest.raises(ValueError, match="whole number of micro-credits above 0"):
        client.top_up("wf-1", amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("units", [-1, 2.0, 2**31])
def test_the_client_refuses_a_capacity_that_is_not_whole_units(units: object) -> None:
    client = FleetClient.__new__(FleetClient)
    with pytest.raises(ValueError, match="whole number of units"):
        client.set_capacity("gpu", units)  # type: ignore[arg-type]


# -- the view and the table ----------------------------------------------------------------
def test_a_contended_book_becomes_one_line_per_pool() -> None:
    book, _ = _contended_gpu()
    view = view_of(
        "gpu", _snapshot(book), POLICY, oldest_bid_at_ms=10_000, now_ms=11_500, last_price=None
    )
    assert view == PoolView(
        pool="gpu",
        configured=True,
        capacity=2,
        leased=2,
        free=0,
        leases=2,
        queue={"low": 2, "high": 1},
        # No ledger price given: the newest live lease's (f paid d's 3 credits).
        last_price=3 * CREDIT,
        oldest_wait_rounds=1,  # c arrived before round 1 and lost it
        oldest_wait_ms=1_500,
        epoch=3,
        round_no=2,
    )
    doc = view.to_json()
    assert doc["last_price"] == "3" and doc["last_price_micro"] == 3 * CREDIT
    assert doc["queue"] == {"low": 2, "high": 1}


def test_the_ledger_price_wins_over_the_leases() -> None:
    book, _ = _contended_gpu()
    view = view_of("gpu", _snapshot(book), POLICY, last_price=2_500_000)
    assert view.last_price == 2_500_000
    assert view.oldest_wait_ms is None  # the bid's record could not be read: no age
    assert view.oldest_wait_rounds == 1


def test_last_grant_price_is_the_last_award_of_a_ledger_round() -> None:
    _, second = _contended_gpu()
    assert last_grant_price(second) == 3 * CREDIT
    first_only = Book("gpu", 1, POLICY.pools["gpu"].pricing, epoch=1)
    first_only.bid(_bid("x", 0, 2), offset=0)
    record = first_only.close_round(0, (0, 0)).record
    assert last_grant_price(json.loads(json.dumps(record.to_json()))) == CREDIT  # alone: reserve
    empty = Book("gpu", 0, POLICY.pools["gpu"].pricing, epoch=1)
    empty.bid(_bid("y", 0, 2), offset=0)
    waiting = empty.close_round(0, (0, 0)).record  # no units at all: nothing granted
    assert last_grant_price(json.loads(json.dumps(waiting.to_json()))) is None
    assert last_grant_price("garbage") is None


def test_a_pool_without_a_book_shows_its_configured_capacity() -> None:
    view = view_of("license", None, POLICY)
    assert (view.capacity, view.leased, view.free, view.epoch, view.round_no) == (
        1,
        0,
        1,
        None,
        None,
    )
    assert view.queue == {"low": 0, "high": 0}


def test_a_capacity_record_shows_before_any_round() -> None:
    book, _ = _contended_gpu()
    book.set_capacity(3)  # what a CAPACITY input does; the next round sells the third unit
    view = view_of("gpu", _snapshot(book), POLICY)
    assert (view.capacity, view.leased, view.free) == (3, 2, 1)


def test_a_band_no_longer_in_the_policy_is_still_counted() -> None:
    book = Book("gpu", 0, POLICY.pools["gpu"].pricing, epoch=1)
    book.bid(_bid("old", 5, 2), offset=7)
    view = view_of("gpu", _snapshot(book), POLICY)
    assert view.queue == {"low": 0, "high": 0, "band5": 1}
    assert "0/0 +1 band5" in render([view], POLICY.bands)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("  ") if cell.strip()]


def test_the_table() -> None:
    book, _ = _contended_gpu()
    views = [
        view_of("gpu", _snapshot(book), POLICY, oldest_bid_at_ms=0, now_ms=1_500),
        view_of("license", None, POLICY),
        view_of("tpu", Book("tpu", 4, POLICY.pools["gpu"].pricing, epoch=2), POLICY),
    ]
    header, gpu, lic, tpu = render(views, POLICY.bands).splitlines()
    assert _cells(header) == [
        "POOL", "CAPACITY", "LEASED", "QUEUE low/high", "LAST PRICE", "OLDEST WAIT", "EPOCH",
        "ROUND",
    ]  # fmt: skip
    assert _cells(gpu) == ["gpu", "2", "2", "2/1", "3", "1.5 s (1 round)", "3", "2"]
    assert _cells(lic) == ["license", "1", "0", "0/0", "-", "-", "-", "-"]
    assert _cells(tpu) == ["tpu (not in the market file)", "4", "0", "0/0", "-", "-", "2", "0"]
    # Columns line up: every line puts ROUND's last character in the same place.
    assert len({len(line) for line in (header, gpu, lic, tpu)}) == 1


def test_fractional_prices_are_exact_credits() -> None:
    view = view_of("gpu", None, POLICY, last_price=1_500_001)
    assert _cells(render([view], POLICY.bands).splitlines()[1])[4] == "1.500001"
    assert view.to_json()["last_price"] == "1.500001"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "-"),
        (0, "0 ms"),
        (999, "999 ms"),
        (1_000, "1.0 s"),
        (59_949, "59.9 s"),
        (61_000, "1 m 01 s"),
        (3_600_000, "1 h 00 m"),
        (7_380_000, "2 h 03 m"),
    ],
)
def test_ages(ms: int | None, text: str) -> None:
    assert format_age(ms) == text
