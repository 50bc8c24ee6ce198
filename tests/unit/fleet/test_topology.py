from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.errors import ConfigError
from fleet.kafka.topics import desired_topics
from fleet.settings import Settings
from fleet.topology import Topics, Topology, check_capability

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def test_the_bundled_topology_loads_and_co_partitions_requests_with_results() -> None:
    topology = Topology.load(ROOT / "topics.yaml")
    assert (
        topology.topics["workflow.requests"].partitions
        == topology.topics["task.results"].partitions
    )
    assert topology.topics["workflow.requests"].key == "workflow_id"
    assert topology.task_topics.key == "task_id"


def test_settings_find_the_bundled_topology_and_schemas() -> None:
    settings = Settings.from_env({})
    assert settings.topology_file == ROOT / "topics.yaml"
    assert settings.schemas_dir == ROOT / "schemas"


def test_topic_names_carry_the_prefix() -> None:
    topics = Topics("env1.")
    assert topics.requests == "env1.workflow.requests"
    assert topics.results == "env1.task.results"
    assert topics.events == "env1.workflow.events"
    assert topics.dead_letters == "env1.dead.letters"
    assert topics.tasks("text.wordcount") == "env1.tasks.text.wordcount"
    assert topics.capability_of("env1.tasks.text.wordcount") == "text.wordcount"
    assert topics.capability_of("env1.task.results") is None


def test_desired_topics_add_one_task_topic_per_capability() -> None:
    topology = Topology.load(ROOT / "topics.yaml")
    wanted = desired_topics(topology, Topics("p."), ["a", "b"])
    assert wanted["p.tasks.a"] == topology.task_topics
    assert {"p.workflow.requests", "p.task.results", "p.workflow.events", "p.dead.letters"} <= set(
        wanted
    )


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 201, "ünï"])
def test_bad_capability_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid name"):
        check_capability(name)


def test_unequal_co_partitioned_topics_are_a_config_error(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "topics.yaml").read_text())
    raw["topics"]["task.results"]["partitions"] = 3
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="equal partition counts"):
        Topology.load(path)


def test_a_topology_missing_a_core_topic_is_a_config_error(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "topics.yaml").read_text())
    del raw["topics"]["dead.letters"]
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"dead\.letters"):
        Topology.load(path)


def test_bad_topic_prefix_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FLEET_TOPIC_PREFIX"):
        Settings.from_env({"FLEET_TOPIC_PREFIX": "a b"})


def test_client_config_comes_from_prefixed_variables() -> None:
    settings = Settings.from_env(
        {
            "FLEET_KAFKA_CLIENT_SECURITY_PROTOCOL": "SASL_SSL",
            "FLEET_KAFKA_CLIENT_SASL_MECHANISM": "PLAIN",
        }
    )
    assert settings.client_config == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


def test_the_cancellations_topic_is_core_short_lived_and_named_with_the_prefix(
    tmp_path: Path,
) -> None:
    assert Topics("env1.").cancellations == "env1.task.cancellations"
    cancellations = Topology.load(ROOT / "topics.yaml").topics["task.cancellations"]
    assert cancellations.config["retention.ms"] == "3600000"
    raw = yaml.safe_load((ROOT / "topics.yaml").read_text())
    del raw["topics"]["task.cancellations"]
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"task\.cancellations"):
        Topology.load(path)
