"""The liveness view: stale past 3 missed heartbeats, dead past 10, judged by each agent's
own interval; rebuilt from the topic's records alone; heartbeats on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.agent_messages import AgentHeartbeat, CapabilityVersion
from fleet.codec import Codec, SchemaStore
from fleet.liveness import DEAD_AFTER, STALE_AFTER, AgentView, Liveness, liveness

pytestmark = pytest.mark.unit

CODEC = Codec(SchemaStore(Path(__file__).resolve().parents[3] / "schemas"))
ORDER = [Liveness.LIVE, Liveness.STALE, Liveness.DEAD]


def beat(agent_id: str = "a-0", at_ms: int = 0, **fields: object) -> AgentHeartbeat:
    values: dict[str, object] = {
        "agent_id": agent_id,
        "worker_id": "host-123",
        "status": "serving",
        "capabilities": [CapabilityVersion(capability="classify", version="2.1.0")],
        "in_flight": 1,
        "capacity": 8,
        "completed": 10,
        "failed": 1,
        "window_completed": 9,
        "window_failed": 1,
        "p50_ms": 12.0,
        "p95_ms": 40.0,
        "window_s": 60.0,
        "heartbeat_s": 2.0,
        "seq": 1,
        "started_at_ms": 0,
        "at_ms": at_ms,
    }
    values.update(fields)
    return AgentHeartbeat.model_validate(values)


def test_the_thresholds_at_two_seconds() -> None:
    assert liveness(0, 2) is Liveness.LIVE
    assert liveness(6.0, 2) is Liveness.LIVE  # 3 heartbeats missed exactly: not yet
    assert liveness(6.01, 2) is Liveness.STALE
    assert liveness(20.0, 2) is Liveness.STALE
    assert liveness(20.01, 2) is Liveness.DEAD


@given(
    heartbeat_s=st.floats(min_value=0.01, max_value=600),
    ages=st.lists(st.floats(min_value=0, max_value=1e5), min_size=2, max_size=20),
)
def test_liveness_only_gets_worse_as_the_silence_grows(
    heartbeat_s: float, ages: list[float]
) -> None:
    states = [liveness(age, heartbeat_s) for age in sorted(ages)]
    assert [ORDER.index(s) for s in states] == sorted(ORDER.index(s) for s in states)
    for age, state in zip(sorted(ages), states, strict=True):
        missed = age / heartbeat_s
        expected = (
            Liveness.DEAD if missed > DEAD_AFTER
            else Liveness.STALE if missed > STALE_AFTER
            else Liveness.LIVE
        )  # fmt: skip
        assert state is expected


@given(
    heartbeat_s=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    silence_ms=st.integers(min_value=0, max_value=200_000),
)
def test_a_row_says_stale_or_dead_instead_of_the_agents_own_status(
    heartbeat_s: float, silence_ms: int
) -> None:
    view = AgentView()
    view.apply(beat(at_ms=1_000_000, heartbeat_s=heartbeat_s, status="draining"))
    (row,) = view.rows(1_000_000 + silence_ms)
    assert row.liveness is liveness(silence_ms / 1000, heartbeat_s)
    assert row.status == ("draining" if row.liveness is Liveness.LIVE else row.liveness.value)
    assert row.heartbeat_age_s == round(silence_ms / 1000, 1)


def test_the_json_row_has_exactly_the_documented_fields() -> None:
    view = AgentView()
    view.apply(beat(at_ms=10_000))
    (row,) = view.rows(11_500)
    assert row.as_json() == {
        "agent_id": "a-0",
        "status": "serving",
        "capabilities": [{"capability": "classify", "version": "2.1.0"}],
        "in_flight": 1,
        "capacity": 8,
        "heartbeat_age_s": 1.5,
        "error_rate": 0.1,
        "p95_ms": 40.0,
    }


def test_no_finished_task_means_no_error_rate() -> None:
    view = AgentView()
    view.apply(beat(window_completed=0, window_failed=0, p50_ms=None, p95_ms=None))
    (row,) = view.rows(0)
    assert (row.error_rate, row.p95_ms) == (None, None)


def test_filter_by_capability_and_the_live_agents_of_a_version() -> None:
    view = AgentView()
    view.apply(beat("a-0", at_ms=100_000))
    lookup = CapabilityVersion(capability="lookup", version="1")
    three = [CapabilityVersion(capability="classify", version="3.0.0")]
    view.apply(beat("b-0", at_ms=100_000, capabilities=three))
    view.apply(beat("c-0", at_ms=100_000, capabilities=[lookup]))
    view.apply(beat("d-0", at_ms=0))  # silent for 100 s: dead
    view.apply(beat("e-0", at_ms=100_000, status="draining"))
    assert [r.agent_id for r in view.rows(100_000, "classify")] == ["a-0", "b-0", "d-0", "e-0"]
    assert [r.agent_id for r in view.live(100_000, "classify")] == ["a-0", "b-0"]
    assert [r.agent_id for r in view.live(100_000, "classify", "2.1.0")] == ["a-0"]


def test_a_tombstone_forgets_and_an_older_heartbeat_of_the_same_process_is_ignored() -> None:
    view = AgentView()
    view.apply(beat(seq=5, at_ms=5_000))
    view.apply(beat(seq=4, at_ms=4_000))  # reordered: stays at seq 5
    (row,) = view.rows(5_000)
    assert row.heartbeat_age_s == 0.0
    view.apply(beat(seq=1, at_ms=9_000, started_at_ms=8_000))  # restarted: a new process
    assert view.rows(9_000)[0].heartbeat_age_s == 0.0
    view.forget("a-0")
    assert view.rows(9_000) == [] and len(view) == 0


@given(
    records=st.lists(
        st.tuples(st.sampled_from(["a-0", "b-0", "c-0"]), st.integers(0, 50), st.booleans()),
        max_size=30,
    )
)
def test_the_view_is_rebuilt_from_the_latest_record_per_agent(
    records: list[tuple[str, int, bool]],
) -> None:
    """Replaying the whole topic and replaying what compaction leaves give one view."""
    stream = [
        (agent, None if tombstone else beat(agent, at_ms=seq * 1000, seq=seq))
        for agent, seq, tombstone in sorted(records, key=lambda r: r[1])
    ]
    whole = AgentView()
    whole.replay(stream)
    compacted = dict(stream)  # the last record per key, tombstones deleting
    rebuilt = AgentView()
    rebuilt.replay((k, v) for k, v in compacted.items() if v is not None)
    assert whole.rows(60_000) == rebuilt.rows(60_000)


def test_a_heartbeat_round_trips_through_the_codec() -> None:
    heartbeat = beat(p95_ms=None, region="eu-west-1")
    assert CODEC.decode(CODEC.encode(heartbeat), AgentHeartbeat) == heartbeat
