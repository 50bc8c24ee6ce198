"""Settings from the environment and the orchestrator's flags: bad values are one
ConfigError naming the variable or flag, never a pydantic traceback."""

from __future__ import annotations

import pytest

from fleet.errors import ConfigError
from fleet.settings import Settings
from fleetctl.cli import main

pytestmark = pytest.mark.unit


def test_the_orchestrator_defaults_to_exactly_once_with_a_commit_per_batch() -> None:
    settings = Settings.from_env({})
    assert settings.orchestrator_guarantee == "exactly_once"
    assert settings.orchestrator_commit_interval_ms == 0


def test_routing_only_to_live_agents_is_off_unless_switched_on() -> None:
    assert Settings.from_env({}).route_live_only is True
    assert Settings.from_env({"FLEET_ROUTE_LIVE_ONLY": "false"}).route_live_only is False
    with pytest.raises(ConfigError, match="FLEET_ROUTE_LIVE_ONLY"):
        Settings.from_env({"FLEET_ROUTE_LIVE_ONLY": "maybe"})


def test_guarantee_and_commit_interval_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "FLEET_ORCHESTRATOR_GUARANTEE": "at_least_once",
            "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "250",
        }
    )
    assert settings.orchestrator_guarantee == "at_least_once"
    assert settings.orchestrator_commit_interval_ms == 250


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_ORCHESTRATOR_GUARANTEE": "exactly-once"}, "FLEET_ORCHESTRATOR_GUARANTEE: Input"),
        ({"FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "-1"}, "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS"),
        ({"FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "1s"}, "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS"),
        ({"FLEET_CONNECT_TIMEOUT": "abc"}, "FLEET_CONNECT_TIMEOUT: Input should be a valid number"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_exactly_once_interval_must_leave_the_transaction_time_to_commit() -> None:
    # Half of librdkafka's 60 s transaction.timeout.ms is the longest interval allowed.
    assert Settings.from_env({"FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "30000"})
    with pytest.raises(ConfigError, match=r"at most half of transaction.timeout.ms \(60000 ms\)"):
        Settings.from_env({"FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "30001"})
    longer = Settings.from_env(
        {
            "FLEET_KAFKA_CLIENT_TRANSACTION_TIMEOUT_MS": "120000",
            "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "60000",
        }
    )
    assert longer.orchestrator_commit_interval_ms == 60_000
    # Without a transaction there is nothing to time out.
    assert Settings.from_env(
        {
            "FLEET_ORCHESTRATOR_GUARANTEE": "at_least_once",
            "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "90000",
        }
    )


def test_flags_override_the_environment_and_are_validated() -> None:
    env = Settings.from_env({"FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "100"})
    assert env.with_orchestrator().orchestrator_commit_interval_ms == 100
    flagged = env.with_orchestrator("at_least_once", 1000)
    assert (flagged.orchestrator_guarantee, flagged.orchestrator_commit_interval_ms) == (
        "at_least_once",
        1000,
    )
    assert flagged.topic_prefix == env.topic_prefix
    with pytest.raises(ConfigError, match="--commit-interval-ms: Input should be greater"):
        env.with_orchestrator(commit_interval_ms=-5)
    with pytest.raises(ConfigError, match="at most half"):
        flagged.with_orchestrator(guarantee="exactly_once", commit_interval_ms=40_000)


def test_a_stable_orchestrator_name_gives_its_member_and_transactional_id() -> None:
    """--instance-id (or FLEET_ORCHESTRATOR_INSTANCE_ID) names group.instance.id and the
    transactional id; without it there is none (a random id each start)."""
    assert Settings.from_env({}).orchestrator_member() is None
    env = Settings.from_env(
        {"FLEET_TOPIC_PREFIX": "prod.", "FLEET_ORCHESTRATOR_INSTANCE_ID": "orchestrator-0"}
    )
    assert env.orchestrator_member() == "prod.orchestrator-orchestrator-0"
    assert env.with_orchestrator(instance_id="pod-2").orchestrator_member() == (
        "prod.orchestrator-pod-2"
    )
    with pytest.raises(ConfigError, match="FLEET_ORCHESTRATOR_INSTANCE_ID: String should match"):
        Settings.from_env({"FLEET_ORCHESTRATOR_INSTANCE_ID": "two words"})
    with pytest.raises(ConfigError, match="--instance-id: String should match"):
        env.with_orchestrator(instance_id="a/b")


def test_a_bad_flag_is_one_line_and_exit_2_before_any_connection(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A closed port: reaching for the broker would fail differently (and slowly).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    assert main(["orchestrator", "--commit-interval-ms", "45000"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("fleet: error: the orchestrator's commit interval (45000 ms)")
    assert len(err.strip().splitlines()) == 1
