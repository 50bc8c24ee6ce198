"""The resource side's lease check: stale tokens and expired leases are refused, per unit,
all-or-nothing, from many threads at once; holders are counted per unit."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fleet.errors import MarketError
from fleet.messages import LeaseGrant
from workers.leases import LeaseExpired, LeaseGuard, LeaseMetrics, StaleLease

pytestmark = pytest.mark.unit

NOW = 1_000_000


def lease(
    seq: int,
    units: list[int],
    *,
    epoch: int = 1,
    expires_at_ms: int = NOW + 10_000,
    resource: str = "gpu",
    lease_id: str | None = None,
) -> LeaseGrant:
    return LeaseGrant(
        resource=resource,
        lease_id=lease_id or f"L{epoch}.{seq}",
        units=units,
        epoch=epoch,
        seq=seq,
        unit_price=5,
        expires_at_ms=expires_at_ms,
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def guard(registry: CollectorRegistry) -> LeaseGuard:
    return LeaseGuard("gpu", LeaseMetrics(registry))


def rejections(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "fleet_lease_rejections_total", {"resource": "gpu", "reason": reason}
    )
    return value or 0.0


def test_a_fresh_lease_is_admitted_and_its_token_recorded(guard: LeaseGuard) -> None:
    guard.admit(lease(3, [0, 2]), NOW)
    assert (guard.highest(0), guard.highest(1), guard.highest(2)) == ((1, 3), None, (1, 3))


def test_an_older_token_on_the_same_unit_is_refused_and_says_which(
    guard: LeaseGuard, registry: CollectorRegistry
) -> None:
    guard.admit(lease(5, [1]), NOW)
    with pytest.raises(StaleLease) as refused:
        guard.admit(lease(4, [1]), NOW)
    error = refused.value
    assert isinstance(error, MarketError) and not isinstance(error, LeaseExpired)
    assert (error.unit, error.token, error.newer) == (1, (1, 4), (1, 5))
    assert "unit 1" in str(error) and "(1, 5)" in str(error) and "(1, 4)" in str(error)
    assert guard.highest(1) == (1, 5)
    assert rejections(registry, "stale") == 1


def test_a_newer_token_and_the_same_lease_again_are_admitted(guard: LeaseGuard) -> None:
    guard.admit(lease(5, [1]), NOW)
    guard.admit(lease(5, [1]), NOW + 1)  # a holder checking again before its next use
    guard.admit(lease(6, [1]), NOW)
    guard.admit(lease(0, [1], epoch=2), NOW)  # a new epoch outranks every seq of the old
    assert guard.highest(1) == (2, 0)
    with pytest.raises(StaleLease):
        guard.admit(lease(99, [1], epoch=1), NOW)


def test_tokens_are_tracked_per_unit(guard: LeaseGuard) -> None:
    guard.admit(lease(9, [0]), NOW)
    guard.admit(lease(2, [1]), NOW)  # older than unit 0's token, but unit 1 never saw newer
    assert (guard.highest(0), guard.highest(1)) == ((1, 9), (1, 2))


def test_an_expired_lease_is_refused_and_leaves_no_trace(
    guard: LeaseGuard, registry: CollectorRegistry
) -> None:
    guard.admit(lease(1, [0], expires_at_ms=NOW + 1), NOW)  # 1 ms left: still good
    with pytest.raises(LeaseExpired) as refused:
        guard.admit(lease(2, [0], expires_at_ms=NOW), NOW)  # expiry is exclusive
    assert isinstance(refused.value, StaleLease)
    assert refused.value.unit is None and "expired" in str(refused.value)
    assert guard.highest(0) == (1, 1)
    assert rejections(registry, "expired") == 1
    assert rejections(registry, "stale") == 0


def test_a_multi_unit_lease_is_refused_whole_if_any_unit_saw_newer(guard: LeaseGuard) -> None:
    guard.admit(lease(7, [2]), NOW)
    with pytest.raises(StaleLease) as refused:
        guard.admit(lease(6, [0, 1, 2, 3]), NOW)
    assert (refused.value.unit, refused.value.newer) == (2, (1, 7))
    # Nothing recorded for the units that alone would have passed.
    assert [guard.highest(u) for u in (0, 1, 3)] == [None, None, None]
    guard.admit(lease(8, [0, 1, 2, 3]), NOW)
    assert [guard.highest(u) for u in range(4)] == [(1, 8)] * 4


def test_a_lease_on_another_resource_is_a_wiring_error(guard: LeaseGuard) -> None:
    with pytest.raises(MarketError, match="'licence'") as refused:
        guard.admit(lease(1, [0], resource="licence"), NOW)
    assert not isinstance(refused.value, StaleLease)
    assert guard.highest(0) is None


def test_guards_share_one_metrics_object_without_global_state() -> None:
    registry = CollectorRegistry()
    metrics = LeaseMetrics(registry)
    gpu, licence = LeaseGuard("gpu", metrics), LeaseGuard("licence", metrics)
    gpu.admit(lease(2, [0]), NOW)
    licence.admit(lease(2, [0], resource="licence"), NOW)
    for guard in (gpu, licence):
        with pytest.raises(StaleLease):
            guard.admit(lease(1, [0], resource=guard.resource), NOW)
    for resource in ("gpu", "licence"):
        labels = {"resource": resource, "reason": "stale"}
        assert registry.get_sample_value("fleet_lease_rejections_total", labels) == 1
    LeaseMetrics(CollectorRegistry())  # a second registry: no duplicate-metric error


# -- holding ---------------------------------------------------------------------------


def test_holding_counts_holders_per_unit_and_releases_them(guard: LeaseGuard) -> None:
    first, second = lease(1, [0, 1]), lease(2, [1, 2])
    with guard.holding(first, NOW) as held:
        assert held is first
        with guard.holding(first, NOW):  # the same lease again is the same holder
            assert guard.holders(0) == {"L1.1"} and guard.max_concurrent(0) == 1
        assert guard.holders(1) == {"L1.1"}
    assert guard.holders(0) == set() and guard.holders(1) == set()
    with guard.holding(second, NOW):
        assert guard.holders(1) == {"L1.2"} and guard.holders(2) == {"L1.2"}
    assert [guard.max_concurrent(u) for u in range(4)] == [1, 1, 1, 0]


def test_holding_records_an_overlap_and_refuses_the_displaced_lease(guard: LeaseGuard) -> None:
    old, new = lease(1, [0]), lease(2, [0])
    with guard.holding(old, NOW):
        # The old holder outlived its lease (a thread that cannot be killed) while the
        # auctioneer gave the unit to a newer lease: the overlap is on record.
        with guard.holding(new, NOW):
            assert guard.holders(0) == {"L1.1", "L1.2"}
        with pytest.raises(StaleLease):
            guard.admit(old, NOW)  # and the old holder's next check is refused
    assert guard.max_concurrent(0) == 2
    with pytest.raises(StaleLease), guard.holding(old, NOW):
        pass
    assert guard.holders(0) == set()


def test_a_refused_holding_holds_nothing(guard: LeaseGuard) -> None:
    guard.admit(lease(5, [0]), NOW)
    with pytest.raises(StaleLease), guard.holding(lease(4, [0, 1]), NOW):
        pytest.fail("a stale lease must not enter the block")
    with pytest.raises(LeaseExpired), guard.holding(lease(6, [1], expires_at_ms=NOW), NOW):
        pytest.fail("an expired lease must not enter the block")
    assert guard.holders(1) == set() and guard.max_concurrent(1) == 0


def test_a_block_that_raises_still_releases_its_units(guard: LeaseGuard) -> None:
    with pytest.raises(RuntimeError), guard.holding(lease(1, [0]), NOW):
        raise RuntimeError("the resource failed")
    assert guard.holders(0) == set()


# -- concurrency -----------------------------------------------------------------------


@pytest.fixture
def busy_switching() -> Iterator[None]:
    # Switch threads as often as CPython allows, so a lost update would show.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def use(guard: LeaseGuard, grant: LeaseGrant, how: str) -> None:
    if how == "admit":
        guard.admit(grant, NOW)
    else:
        with guard.holding(grant, NOW):
            pass


@pytest.mark.parametrize("how", ["admit", "holding"])
def test_a_units_check_and_its_record_are_one_step_across_threads(
    guard: LeaseGuard, how: str
) -> None:
    # One thread stops inside the guard, reading its older lease's token, while another
    # brings a newer lease for the same unit. The newer must wait for the older to be
    # done; if it got in meanwhile, the older's record would put unit 0 back to (1, 1).
    inside = threading.Event()

    class Paused(LeaseGrant):
        @property
        def token(self) -> tuple[int, int]:
            inside.set()
            time.sleep(0.3)  # with the guard's lock held, nobody else gets in meanwhile
            return (self.epoch, self.seq)

    older = Paused(**lease(1, [0]).model_dump())
    first = threading.Thread(target=use, args=(guard, older, how))
    first.start()
    assert inside.wait(5)
    use(guard, lease(2, [0]), how)
    first.join(5)
    assert guard.highest(0) == (1, 2)
    with pytest.raises(StaleLease):
        guard.admit(lease(1, [0]), NOW)


def test_concurrent_holders_are_counted_exactly(guard: LeaseGuard, busy_switching: None) -> None:
    # Six threads enter and leave blocks of one shared lease (unit 99) and of their own
    # (their own unit), thousands of times: every count must go back to zero (a lost
    # update would leave a phantom holder) and no unit ever saw two distinct leases.
    shared = lease(1, [99], lease_id="shared")
    barrier = threading.Barrier(6)

    def hold_many(unit: int) -> None:
        own = lease(1, [unit], lease_id=f"own-{unit}")
        barrier.wait()
        for _ in range(2000):
            with guard.holding(shared, NOW), guard.holding(own, NOW):
                pass

    threads = [threading.Thread(target=hold_many, args=(u,)) for u in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [guard.max_concurrent(u) for u in [*range(6), 99]] == [1] * 7
    assert all(guard.holders(u) == set() for u in [*range(6), 99])


# -- any interleaving --------------------------------------------------------------------

admits = st.lists(
    st.tuples(
        st.lists(st.integers(0, 3), min_size=1, max_size=4),  # units
        st.integers(0, 2),  # epoch
        st.integers(0, 6),  # seq
        st.booleans(),  # expired at the time of the admit
    ),
    max_size=40,
)


@given(admits)
def test_accepted_tokens_per_unit_never_decrease_and_refusals_were_below_the_max(
    steps: list[tuple[list[int], int, int, bool]],
) -> None:
    # The guard takes one admit at a time (the thread tests above), so an interleaving of
    # threads' admits is an order of admits: any order, any tokens, against a model.
    guard = LeaseGuard("gpu")
    max_seen: dict[int, tuple[int, int]] = {}
    accepted: dict[int, list[tuple[int, int]]] = {}
    for i, (units, epoch, seq, expired) in enumerate(steps):
        now = NOW + i
        grant = lease(seq, units, epoch=epoch, expires_at_ms=now if expired else now + 1)
        below = [u for u in units if u in max_seen and grant.token < max_seen[u]]
        try:
            guard.admit(grant, now)
        except LeaseExpired:
            assert expired
            continue
        except StaleLease as refused:
            assert not expired and below, "refused a lease no unit had seen newer than"
            assert refused.unit in below and refused.newer == max_seen[refused.unit]
            continue
        assert not expired and not below, "accepted an expired or a stale lease"
        for unit in units:
            max_seen[unit] = grant.token
            accepted.setdefault(unit, []).append(grant.token)
    for unit, tokens in accepted.items():
        assert tokens == sorted(tokens)
        assert guard.highest(unit) == max_seen[unit]
