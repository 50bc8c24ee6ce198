"""Agent cards: every card the SDK builds is an A2A v1.0 AgentCard (checked against the
a2a-sdk's types), declared metadata reaches it, and existing code gets sensible defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet import App
from fleet.agent_messages import AgentCard, registry_key
from fleet.app import UNVERSIONED, Capability
from fleet.cards import FLEET_EXTENSION, KAFKA_BINDING, AgentPlace, agent_card, extension_params
from fleet.codec import Codec, SchemaStore
from fleet.errors import ConfigError
from fleet.topology import Topics
from tests.a2a_cards import a2a_card
from tests.apps import app as test_app
from workers.examples import app as example_app

pytestmark = pytest.mark.unit

CODEC = Codec(SchemaStore(Path(__file__).resolve().parents[3] / "schemas"))
PLACE = AgentPlace("host-1-myagents-0", "eu-west-1", 8, "localhost:9092")
TOPICS = Topics("fleet.")


def card_of(*capabilities: Capability, place: AgentPlace = PLACE) -> dict[str, Any]:
    return agent_card([(c, TOPICS.tasks(c.name)) for c in capabilities], place)


def classify_app() -> App:
    app = App()

    @app.capability(
        "classify",
        version="2.1.0",
        description="Sorts a text into one of the given labels.",
        tags=["nlp", "classification"],
        examples=['{"text": "refund please", "labels": ["billing", "tech"]}'],
        input_schema={"type": "object", "required": ["text"]},
        output_schema={"type": "object", "properties": {"label": {"type": "string"}}},
        cost_model={"unit": "task", "credits": "0.002"},
    )
    def classify(payload: dict[str, Any]) -> dict[str, Any]:
        return {"label": "billing"}

    return app


@pytest.mark.parametrize("app", [example_app, test_app], ids=["examples", "tests.apps"])
def test_every_capability_card_is_an_a2a_agent_card(app: App) -> None:
    for name in app.capabilities:
        card = a2a_card(card_of(app.get(name)))
        assert card.name == name and card.version == app.get(name).info.version
        # Declared where declared (summarize bills usage since 1.1.0), else the default.
        declared = {"summarize": "1.1.0"} if app is example_app else {"t.fragile": "1.0.0"}
        assert card.version == declared.get(name, UNVERSIONED)
        assert [s.id for s in card.skills] == [name]
    whole = a2a_card(card_of(*(app.get(n) for n in app.capabilities)))  # the well-known one
    assert [s.id for s in whole.skills] == app.capabilities
    assert whole.name == PLACE.agent_id


def test_declared_metadata_reaches_the_card_and_its_extension() -> None:
    capability = classify_app().get("classify")
    card = card_of(capability)
    parsed = a2a_card(card)
    assert (parsed.name, parsed.version) == ("classify", "2.1.0")
    assert parsed.description == "Sorts a text into one of the given labels."
    (skill,) = parsed.skills
    assert list(skill.tags) == ["nlp", "classification"]
    assert list(skill.examples) == ['{"text": "refund please", "labels": ["billing", "tech"]}']
    (interface,) = parsed.supported_interfaces
    assert interface.protocol_binding == KAFKA_BINDING
    assert interface.url == "kafka://localhost:9092/fleet.tasks.classify"
    (extension,) = parsed.capabilities.extensions
    assert extension.uri == FLEET_EXTENSION
    (params,) = extension_params(card)
    assert params == {
        "agent_id": "host-1-myagents-0",
        "capability": "classify",
        "version": "2.1.0",
        "task_topic": "fleet.tasks.classify",
        "max_concurrency": 8,
        "region": "eu-west-1",
        "input_schema": {"type": "object", "required": ["text"]},
        "output_schema": {"type": "object", "properties": {"label": {"type": "string"}}},
        "cost_model": {"unit": "task", "credits": "0.002"},
    }


def test_existing_code_gets_defaults() -> None:
    app = App()

    @app.capability("summarize")
    def summarize(payload: str) -> str:
        """Shortens a text to one sentence.

        More detail that the card leaves out."""
        return payload

    @app.capability("bare")
    def bare(payload: str) -> str:
        return payload

    info = app.get("summarize").info
    assert info.version == "0.0.0"
    assert info.description == "Shortens a text to one sentence."
    assert info.tags == ("summarize",)
    assert (info.input_schema, info.output_schema, info.cost_model) == (None, None, None)
    assert app.get("bare").info.description == "The bare capability."
    params = extension_params(card_of(app.get("bare")))[0]
    assert "input_schema" not in params and "cost_model" not in params
    assert summarize("x") == "x"  # the decorator still returns the handler itself


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": ""}, "version"),
        ({"version": "2 .1"}, "version"),
        ({"version": "v/2"}, "version"),
        ({"output_schema": ["not", "an", "object"]}, "output_schema must be a JSON object"),
        ({"input_schema": {"default": object()}}, "input_schema is not JSON"),
        ({"cost_model": "cheap"}, "cost_model must be a JSON object"),
    ],
)
def test_bad_declarations_are_refused_at_registration(kwargs: dict[str, Any], message: str) -> None:
    app = App()
    with pytest.raises(ConfigError, match=message):

        @app.capability("x", **kwargs)
        def handler(payload: Any) -> Any:
            return payload


@given(
    version=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,20}\Z"),
    tags=st.lists(st.text(min_size=1, max_size=10), max_size=3),
    description=st.text(max_size=40),
    region=st.text(max_size=10),
    concurrency=st.integers(min_value=1, max_value=1000),
)
def test_any_declaration_makes_a_valid_card_that_survives_the_registry(
    version: str, tags: list[str], description: str, region: str, concurrency: int
) -> None:
    app = App()

    @app.capability("cap", version=version, tags=tags, description=description)
    def handler(payload: Any) -> Any:
        return payload

    card = card_of(app.get("cap"), place=AgentPlace("a-0", region, concurrency))
    a2a_card(card)
    record = AgentCard(
        agent_id="a-0", capability="cap", version=version, region=region, card=card,
        published_at_ms=1,
    )  # fmt: skip
    assert record.key == registry_key("a-0", "cap") == "a-0/cap"
    decoded = CODEC.decode(CODEC.encode(record), AgentCard)
    assert decoded == record
    assert json.loads(json.dumps(decoded.card)) == card
