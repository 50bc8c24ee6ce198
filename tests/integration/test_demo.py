"""The demo: its sample mix plus the contended GPU burst, and the market summary.

The real-broker test runs the demo's own workload (a smaller mix, the full burst) and
checks the facts its market summary reads back from Kafka. Another runs ``fleet demo``
itself, as a user does, with its own throw-away broker: it must end by itself once its
summary is printed, with status 0, and leave no process behind. The unit tests feed the
summary made-up records, to show it would catch what it claims to check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.messages import (
    EventKind,
    LeaseGrant,
    MarketInput,
    MarketInputKind,
    MarketOutcome,
    MarketOutcomeKind,
    WorkflowEvent,
)
from fleet.settings import Settings
from fleetctl.demo import run_workload
from fleetctl.demo_market import (
    BURST_BANDS,
    CONTENDED,
    POOL,
    Contender,
    MarketSummary,
    build_burst,
    format_market_summary,
    max_concurrent,
    summarize_market,
)
from orchestrator.market.clearing import Bid
from orchestrator.market.ledger import GENESIS, RoundRecord, clear_round
from orchestrator.market.policy import MarketPolicy

CREDIT = 1_000_000
MARKET_YAML = Path(__file__).resolve().parents[2] / "market.yaml"
TEMPLATE = {
    "name": "gpu-render",
    "steps": [
        {"id": "render", "capability": "render", "resources": {"gpu": 1}, "input": {}},
    ],
}


@pytest.mark.kafka
def test_the_demo_serves_the_high_band_first_within_capacity(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLEET_TOPIC_PREFIX": f"demo-{uuid.uuid4().hex[:8]}.",
        }
    )
    run = run_workload(settings, 20, tmp_path / "logs")
    printed = capsys.readouterr().out
    assert run.exit_code == 0, printed
    assert len(run.outcomes) == 20 + CONTENDED
    market = run.market
    assert market is not None
    assert market.problems() == [], printed
    # Every contended render completed, each granted once.
    assert [(b.band, b.workflows, b.completed) for b in market.bands] == [
        ("high", 6, 6),
        ("low", 6, 6),
    ]
    assert all(len(b.waits_ms) == len(b.prices) == 6 for b in market.bands)
    # One holder per unit at a time, never more holders than the pool's 2 units.
    assert market.capacity == 2
    assert set(market.max_per_unit.values()) == {1}
    assert len(market.max_per_unit) <= 2
    assert 1 <= market.max_overall <= 2
    # The ledger replays, and it charged what the grants say.
    assert market.chain_error is None and market.rounds > 0
    assert market.spend == market.ledger_spend > 0
    high, low = market.bands
    assert statistics.median(high.waits_ms) < statistics.median(low.waits_ms), printed
    assert f"ledger replay: {market.rounds} rounds, hash chain OK" in printed
    assert "lower than the low band's" in printed and "NOT" not in printed


# Every process of the demo run below carries this in its environment (the broker too:
# it inherits the CLI's), so /proc tells which processes are left of it.
MARKER = "FLEET_TEST_DEMO_RUN"
DEMO_S = 300.0  # the whole run, broker start included (about 30 s when nothing is wrong)
EXIT_S = 90.0  # from "stopping the local broker" to the exit: the broker's stop takes
# up to 30 s of grace plus 10 s of SIGKILL; a client destroyed after it hung for minutes


@pytest.mark.kafka
@pytest.mark.timeout(DEMO_S + EXIT_S + 60)
def test_fleet_demo_ends_by_itself_and_leaves_no_process(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    # Its own run dir: the demo starts a broker there and must stop it (the jar cache,
    # FLEET_KAFKA_CACHE, stays shared).
    env |= {"FLEET_KAFKA_HOME": str(tmp_path / "kafka"), MARKER: marker}
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "fleetctl.cli", "demo", "--workflows", "4"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its children are in its session, for the clean-up
        )
    try:
        code = _wait_for_exit(demo, err)
        printed = out.read_text()
        assert code == 0, err.read_text()[-3000:]
        assert "outputs checked against expectations:" in printed
        assert "hash chain OK" in printed, printed
        # Its incident-response workflows end in summarize, which bills each call.
        assert "usage reported by the agents: " in printed and "(rules-summarizer)" in printed
        assert "stopping the local broker" in err.read_text()
        assert _left_of(demo.pid, marker) == {}
    finally:
        _kill_left(demo, marker)


def _wait_for_exit(demo: subprocess.Popen[bytes], err: Path) -> int:
    """The demo's exit status, once it has ended by itself; a failure with its stacks if it
    runs past DEMO_S, or is still alive EXIT_S after it said it stops the broker."""
    deadline = time.monotonic() + DEMO_S
    stopping_at: float | None = None
    while demo.poll() is None:
        now = time.monotonic()
        if stopping_at is None and "stopping the local broker" in err.read_text():
            stopping_at = now
        late = now > deadline or (stopping_at is not None and now - stopping_at > EXIT_S)
        if late:
            demo.send_signal(signal.SIGUSR1)  # `fleet` prints every thread's stack
            time.sleep(1)
            stacks = err.read_text()[-4000:]
            pytest.fail(
                "fleet demo did not end by itself "
                + ("after stopping the broker" if stopping_at else f"within {DEMO_S:.0f} s")
                + f"; its threads:\n{stacks}"
            )
        time.sleep(0.5)
    return demo.returncode


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""  # gone meanwhile, or not ours to read


def _left_of(session: int, marker: str) -> dict[int, str]:
    """Live processes of the demo run: in its session, or carrying its marker (a zombie has
    an empty environment and command line: it has ended)."""
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc to find the demo's processes")
    tag = f"{MARKER}={marker}".encode()
    found: dict[int, str] = {}
    deadline = time.monotonic() + 5  # a child that just exited may still await its reaper
    while True:
        found.clear()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            cmdline = _read_proc(pid, "cmdline")
            if not cmdline:
                continue
            try:
                in_session = os.getsid(pid) == session
            except OSError:
                continue
            if in_session or tag in _read_proc(pid, "environ").split(b"\0"):
                found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _kill_left(demo: subprocess.Popen[bytes], marker: str) -> None:
    """Whatever happened, nothing of the run outlives the test."""
    if demo.poll() is None:
        demo.kill()
        demo.wait(10)
    if Path("/proc/self").exists():
        for pid in _left_of(demo.pid, marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.unit
def test_max_concurrent_counts_overlaps_not_handovers() -> None:
    assert max_concurrent([]) == 0
    assert max_concurrent([(0, 10), (10, 20), (20, 30)]) == 1  # back to back
    assert max_concurrent([(0, 10), (5, 20), (9, 12), (19, 25)]) == 3


@pytest.mark.unit
def test_the_burst_splits_into_the_two_bands_low_first() -> None:
    policy = MarketPolicy.load(MARKET_YAML)
    burst = build_burst(TEMPLATE, policy, MARKET_YAML)
    assert [(c.band, c.tenant) for c in burst] == [BURST_BANDS[0]] * 6 + [BURST_BANDS[1]] * 6
    assert all(c.spec["priority"] == c.band and c.spec["tenant"] == c.tenant for c in burst)
    assert "tenant" not in TEMPLATE  # copies, not the template itself


@pytest.mark.unit
def test_a_market_file_the_burst_cannot_use_stops_the_demo(tmp_path: Path) -> None:
    market_file = tmp_path / "market.yaml"
    market_file.write_text(
        "pools: {gpu: {capacity: 2, reserve: 1, lease_ttl_ms: 1000}}\n"
        "bands: [low, high]\n"
        "tenants: {default: {bands: [low], default_max_price: 2, budget_default: 9}}\n"
    )
    with pytest.raises(ConfigError, match=r"market\.yaml.*prod"):
        build_burst(TEMPLATE, MarketPolicy.load(market_file), market_file)


def _made_up_run(
    overlap: bool,
) -> tuple[dict[str, Contender], dict[str, WorkflowEvent], list[MarketOutcome], list[RoundRecord]]:
    """Four renders on units 0 and 1 in turn, 100 ms each; ``overlap`` moves one early."""
    burst, events, outcomes = {}, {}, []
    for i, (band, tenant) in enumerate([BURST_BANDS[1]] * 2 + [BURST_BANDS[0]] * 2):
        workflow_id = f"wf-{i}"
        burst[workflow_id] = Contender(band, tenant, TEMPLATE)
        start = 1_000 + 100 * (i // 2) - (50 if overlap and i == 2 else 0)
        lease = LeaseGrant(
            resource=POOL,
            lease_id=f"l{i}",
            units=[i % 2],
            epoch=1,
            seq=i,
            unit_price=CREDIT,
            expires_at_ms=9_999,
        )
        outcomes.append(
            MarketOutcome(
                kind=MarketOutcomeKind.GRANTED,
                resource=POOL,
                bid_id=f"b{i}",
                workflow_id=workflow_id,
                task_id=f"t{i}",
                lease=lease,
                at_ms=start,
            )
        )
        events[workflow_id] = WorkflowEvent(
            workflow_id=workflow_id,
            kind=EventKind.COMPLETED,
            output={"units": [i % 2], "held_ms": [start, start + 100]},
            submitted_at_ms=900,
            at_ms=start + 150,
        )
    rounds, prev = [], GENESIS
    for n in range(2):
        bids = [
            Bid(f"b{2 * n + k}", offset=2 * n + k, band=2 - 2 * n, price=CREDIT) for k in (0, 1)
        ]
        record = clear_round(
            resource=POOL,
            round_no=n,
            epoch=1,
            offsets=(2 * n, 2 * n + 1),
            closed_at_ms=1_000 + 100 * n,
            free=2,
            pricing=MarketPolicy.load(MARKET_YAML).pools[POOL].pricing,
            bids=bids,
            prev_hash=prev,
        )
        rounds.append(record)
        prev = record.hash
    return burst, events, outcomes, rounds


def _summary(overlap: bool = False, rounds: list[RoundRecord] | None = None) -> MarketSummary:
    burst, events, outcomes, made_up = _made_up_run(overlap)
    bids = [
        MarketInput(kind=MarketInputKind.BID, resource=POOL, workflow_id=w, at_ms=950)
        for w in burst
    ]
    return summarize_market(
        burst=burst,
        events=events,
        bids=bids,
        outcomes=outcomes,
        rounds=made_up if rounds is None else rounds,
        policy=MarketPolicy.load(MARKET_YAML),
    )


@pytest.mark.unit
def test_the_summary_reports_waits_prices_and_a_clean_run() -> None:
    summary = _summary()
    assert summary.problems() == []
    high, low = summary.bands
    assert (high.band, high.waits_ms, high.bid_waits_ms) == ("high", (100, 100), (50, 50))
    assert low.waits_ms == (200, 200) and low.prices == (CREDIT, CREDIT)
    assert summary.max_per_unit == {0: 1, 1: 1} and summary.max_overall == 2
    assert (summary.held_ms, summary.span_ms) == (400, 250)  # bids at 950, last end 1200
    assert summary.rounds == 2 and summary.spend == summary.ledger_spend == 4 * CREDIT
    lines = format_market_summary(summary)
    assert "ledger replay: 2 rounds, hash chain OK" in lines
    assert (
        lines[-1] == "median wait of the high band (100 ms) is lower than the low band's (200 ms)"
    )


@pytest.mark.unit
def test_the_summary_catches_a_unit_held_twice_and_a_broken_chain() -> None:
    overlapping = _summary(overlap=True)
    assert overlapping.max_per_unit[0] == 2 and overlapping.max_overall == 3
    assert overlapping.problems() == [
        "unit 0 had 2 holders at once",
        "3 holders at once, capacity 2",
    ]
    _, _, _, rounds = _made_up_run(overlap=False)
    tampered = [rounds[0], dataclasses.replace(rounds[1], free=1)]  # a unit taken away
    broken = _summary(rounds=tampered)
    assert broken.chain_error is not None and "round 1 of gpu" in broken.chain_error
    assert f"ledger replay: 2 rounds, {broken.chain_error}" in format_market_summary(broken)
