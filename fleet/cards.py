"""Agent cards: what an agent publishes about each capability it serves, as an A2A v1.0
Agent Card (its JSON form, the protobuf JSON mapping with camelCase names, as
``/.well-known/agent-card.json`` serves it) plus the fleet's extension.

Why A2A: a platform that already speaks it can discover the fleet's agents with no
adapter, and the card's own fields (name, description, version, skills with tags and
examples, input and output modes) say most of what an operator asks. What A2A has no
field for goes into one extension in ``capabilities.extensions``, the place the spec
gives extensions: the capability, its version, the task topic that reaches it, the
process's concurrency, its region, the optional JSON Schemas and the cost model.

Our agents are reached through Kafka, not HTTP, so the one supported interface is a
custom protocol binding (the spec asks for a URI naming it): the task topic, on the
cluster the worker uses. Pure: built from an App's declarations, checked against the
``a2a-sdk`` types by the unit tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet.app import Capability

A2A_PROTOCOL_VERSION = "1.0"
KAFKA_BINDING = "urn:fleet:a2a:binding:kafka:v1"
FLEET_EXTENSION = "urn:fleet:a2a:extension:capability:v1"
JSON_MODE = "application/json"  # payloads and outputs are JSON values


@dataclass(frozen=True)
class AgentPlace:
    """Where and how one agent process runs: the same for every capability it serves."""

    agent_id: str
    region: str
    max_concurrency: int
    bootstrap: str | None = None  # the cluster, for the interface URL (None: not named)


def interface_url(task_topic: str, bootstrap: str | None) -> str:
    return f"kafka://{bootstrap}/{task_topic}" if bootstrap else f"kafka:{task_topic}"


def fleet_extension(capability: Capability, task_topic: str, place: AgentPlace) -> dict[str, Any]:
    """The fleet's extension of one capability's card: its ``params`` say what the
    platform routes on (capability, version, topic, concurrency, region)."""
    info = capability.info
    params: dict[str, Any] = {
        "agent_id": place.agent_id,
        "capability": capability.name,
        "version": info.version,
        "task_topic": task_topic,
        "max_concurrency": place.max_concurrency,
        "region": place.region,
    }
    optional = {
        "input_schema": info.input_schema,
        "output_schema": info.output_schema,
        "cost_model": info.cost_model,
    }
    params.update({k: dict(v) for k, v in optional.items() if v is not None})
    return {
        "uri": FLEET_EXTENSION,
        "description": "Fleet capability: how the control plane routes tasks to this agent.",
        "params": params,  # not "required": a client need not know it to call the agent
    }


def skill(capability: Capability) -> dict[str, Any]:
    info = capability.info
    declared = {
        "id": capability.name,
        "name": capability.name,
        "description": info.description,
        "tags": list(info.tags),
        "examples": list(info.examples),
        "inputModes": [JSON_MODE],
        "outputModes": [JSON_MODE],
    }
    # As the protobuf JSON mapping writes it: an empty list is left out.
    return {k: v for k, v in declared.items() if v != []}


def agent_card(capabilities: Sequence[tuple[Capability, str]], place: AgentPlace) -> dict[str, Any]:
    """The A2A card of ``capabilities`` (each with its task topic) served by ``place``.

    One capability: the card the registry holds for it (``fleet agents card``). Several:
    the card of the whole agent process, one skill and one extension entry per
    capability (``/.well-known/agent-card.json`` of a worker serving them all)."""
    if not capabilities:
        raise ValueError("an agent card needs at least one capability")
    first, _ = capabilities[0]
    single = len(capabilities) == 1
    return {
        "name": first.name if single else place.agent_id,
        "description": (
            first.info.description
            if single
            else "Fleet agent serving " + ", ".join(c.name for c, _ in capabilities) + "."
        ),
        "version": (
            first.info.version
            if single
            else ",".join(f"{c.name}@{c.info.version}" for c, _ in capabilities)
        ),
        "supportedInterfaces": [
            {
                "url": interface_url(topic, place.bootstrap),
                "protocolBinding": KAFKA_BINDING,
                "protocolVersion": A2A_PROTOCOL_VERSION,
            }
            for _, topic in capabilities
        ],
        "capabilities": {
            "streaming": False,
            "pushNotifications": False,
            "extensions": [fleet_extension(c, topic, place) for c, topic in capabilities],
        },
        "defaultInputModes": [JSON_MODE],
        "defaultOutputModes": [JSON_MODE],
        "skills": [skill(c) for c, _ in capabilities],
    }


def extension_params(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The fleet extension's params of each capability in ``card`` (a card read back)."""
    extensions = card.get("capabilities", {}).get("extensions", [])
    return [e.get("params", {}) for e in extensions if e.get("uri") == FLEET_EXTENSION]
