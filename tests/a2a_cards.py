"""Checking an agent card against the A2A v1.0 types of the ``a2a-sdk`` (a dev dependency)."""

from __future__ import annotations

from typing import Any

from a2a.types import AgentCard
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf.json_format import MessageToDict, ParseDict


def a2a_card(card: dict[str, Any]) -> AgentCard:
    """``card`` parsed as the SDK's AgentCard: a field the type lacks is an error (no
    ``ignore_unknown_fields``), and so is a REQUIRED field missing or empty."""
    parsed = ParseDict(card, AgentCard())
    validate_proto_required_fields(parsed)
    # Nothing dropped or renamed on the way: the SDK's JSON of it is the card itself.
    assert MessageToDict(parsed) == card
    return parsed
