"""deploy/ (Kubernetes manifests, the production topology) and docs/deploy.md must only
run commands the CLI has, set only variables the product reads, and scale workers on the
consumer group and topic the workers really use."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.settings import Settings
from fleet.topology import Topics, Topology
from fleetctl.cli import resolve

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PRODUCTION = DEPLOY / "topics.production.yaml"
DOC = ROOT / "docs" / "deploy.md"

# kind -> apiVersion of every manifest deploy/ may hold.
KINDS = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Job": "batch/v1",
    "StatefulSet": "apps/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
# Variables Settings.from_env reads besides the FLEET_KAFKA_CLIENT_* pass-through, read
# from its source so that a variable renamed there fails here.
SETTINGS_VARS = set(
    re.findall(r'"((?:FLEET|KAFKA)_[A-Z_]+)"', (ROOT / "fleet" / "settings.py").read_text())
)
CLIENT_PREFIX = "FLEET_KAFKA_CLIENT_"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path == PRODUCTION:
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == kind]


def _pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every workload that runs containers."""
    for doc in _documents():
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield doc, doc["spec"]["template"]["spec"]


def _env() -> dict[str, str]:
    """What the ConfigMap and the Secrets hand every fleet process (envFrom)."""
    env: dict[str, str] = {}
    for doc in _of_kind("ConfigMap"):
        env.update(doc.get("data", {}))
    for doc in _of_kind("Secret"):
        env.update({k: v for k, v in doc.get("stringData", {}).items() if k.isupper()})
    return env


def _settings() -> Settings:
    return Settings.from_env(_env())


def test_every_manifest_has_a_known_kind_and_api_version() -> None:
    docs = _documents()
    assert docs
    for doc in docs:
        assert KINDS.get(doc["kind"]) == doc["apiVersion"], doc.get("metadata")


def test_kustomization_lists_every_manifest_and_the_topology() -> None:
    (kustomization,) = _of_kind("Kustomization")
    listed = {(DEPLOY / r).resolve() for r in kustomization["resources"]}
    assert listed == {p.resolve() for p in (DEPLOY / "kubernetes").glob("*.yaml")}
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["topics.yaml=topics.production.yaml"]
    mounted = {
        volume["configMap"]["name"]
        for _, pod in _pod_specs()
        for volume in pod.get("volumes", [])
        if "configMap" in volume
    }
    assert mounted == {generator["name"]}
    assert _settings().topology_file == Path("/etc/fleet/topics.yaml")


def test_every_container_runs_a_fleet_command_the_cli_has() -> None:
    paths = set()
    for _, pod in _pod_specs():
        for container in pod["containers"]:
            command = [*container["command"], *container.get("args", [])]
            assert command[0] == "fleet", command
            assert all(isinstance(arg, str) for arg in command), command
            paths.add(resolve(command[1:]).path)
    assert paths == {("topics", "apply"), ("orchestrator",), ("worker",)}


def test_every_variable_is_one_the_product_reads() -> None:
    names = set(_env())
    for _, pod in _pod_specs():
        for container in pod["containers"]:
            names |= {var["name"] for var in container.get("env", [])}
            refs = {
                ref.get("configMapRef", ref.get("secretRef"))["name"]
                for ref in container["envFrom"]
            }
            assert refs == {"fleet-env", "fleet-kafka-credentials"}
    assert "KAFKA_BOOTSTRAP_SERVERS" in SETTINGS_VARS
    unknown = {n for n in names if n not in SETTINGS_VARS and not n.startswith(CLIENT_PREFIX)}
    assert not unknown


def test_production_topology_has_the_shipped_topics_replicated() -> None:
    shipped = Topology.load(ROOT / "topics.yaml")
    production = Topology.load(PRODUCTION)
    assert production.topics.keys() == shipped.topics.keys()
    assert production.co_partitioned == shipped.co_partitioned
    assert production.replication_factor == 3
    for name, spec in [*production.topics.items(), ("task_topics", production.task_topics)]:
        assert spec.config.get("min.insync.replicas") == "2", name
        shipped_spec = shipped.topics.get(name, shipped.task_topics)
        assert spec.key == shipped_spec.key, name
        rest = {k: v for k, v in spec.config.items() if k != "min.insync.replicas"}
        assert rest == shipped_spec.config, name


def test_orchestrators_fit_the_co_partitioned_partitions() -> None:
    production = Topology.load(PRODUCTION)
    partitions = production.topics[production.co_partitioned[0]].partitions
    (statefulset,) = _of_kind("StatefulSet")
    assert 1 <= statefulset["spec"]["replicas"] <= partitions
    (budget,) = _of_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"] == statefulset["spec"]["selector"]


def test_keda_scales_each_pool_on_its_group_and_task_topic() -> None:
    settings = _settings()
    topics = Topics(settings.topic_prefix)
    production = Topology.load(PRODUCTION)
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    scaled = _of_kind("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == deployments.keys()
    auths = {a["metadata"]["name"] for a in _of_kind("TriggerAuthentication")}
    for scaled_object in scaled:
        spec = scaled_object["spec"]
        assert spec["maxReplicaCount"] <= production.task_topics.partitions
        for trigger in spec["triggers"]:
            assert trigger["type"] == "kafka"
            assert trigger["authenticationRef"]["name"] in auths
            meta = trigger["metadata"]
            capability = topics.capability_of(meta["topic"])
            assert capability is not None, meta["topic"]
            # The group a worker joins for a capability (workers.shell.worker).
            assert meta["consumerGroup"] == f"{settings.topic_prefix}workers.{capability}"
            assert meta["bootstrapServers"] == settings.bootstrap_servers
            assert all(isinstance(v, str) for v in meta.values()), meta


def _doc_commands() -> list[list[str]]:
    """Every `fleet ...` line of docs/deploy.md's shell code blocks, variables and
    continuation lines joined."""
    blocks = re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", DOC.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words.pop(0)
            if words and words[0] == "fleet":
                commands.append(words)
    return commands


def test_every_fleet_command_in_the_deploy_doc_exists() -> None:
    commands = _doc_commands()
    assert len(commands) >= 3
    for command in commands:
        resolve(command[1:])


def test_the_deploy_doc_names_the_facts_the_manifests_rely_on() -> None:
    text = DOC.read_text()
    for fact in (
        "transaction.timeout.ms",
        "session.timeout.ms",
        "workers.<capability>",
        "orchestrator",
        "range",
        "min.insync.replicas",
        "deploy/",
    ):
        assert fact in text, fact
