"""JSON requests: what a producer without our Avro schemas may send, checked against them.

A service in another language (or ``kcat``) can put a plain JSON object on the requests
topic instead of an Avro record. Its fields are the Avro schema's, by name, with plain
JSON values (no Avro union wrappers: ``"submitted_by": "billing"``, not
``{"string": "billing"}``). A field the schema carries as JSON text (``spec_json``) may
instead be given as the JSON itself under the name without ``_json`` (``"spec": {...}``):
a hand-written request then needs no escaped JSON inside a string, and a producer that
already holds the text sends it as it is. The object is checked field by field against
the same Avro schema the binary form is written with (missing, unknown and mistyped
fields, each named), and becomes the same message the Avro path yields.

Which message it is comes from the ``content-type`` header's ``schema`` parameter
(``application/json; schema=io.fleet.WorkflowSubmitted``, as ``headers_for`` writes it
for Avro), or without one from its fields: the one type the topic carries whose schema
the object fits. Unknown fields are refused rather than ignored: a misspelt optional
field would otherwise vanish without a word.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastavro.validation import validate

from fleet.errors import DecodeError
from fleet.messages import Message

JSON_MEDIA_TYPE = "application/json"
AVRO_MEDIA_TYPE = "application/vnd.apache.avro+binary"
_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``"application/json; schema=X"`` -> ``("application/json", {"schema": "X"})``."""
    if not content_type:
        return "", {}
    kind, *params = content_type.split(";")
    parsed = {}
    for param in params:
        name, _, value = param.partition("=")
        parsed[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), parsed


def is_json(data: bytes, content_type: str | None) -> bool:
    """JSON by its content type, or whatever the header says, by a leading ``{``.

    Avro framing never starts with ``{`` (single-object encoding starts ``C3 01``, the
    Confluent wire format with a zero byte), so the first byte cannot mislead, while a
    header copied from one of our records onto a JSON value would."""
    kind, _ = media_type(content_type)
    if kind == JSON_MEDIA_TYPE or kind.endswith("+json"):
        return True
    return data.removeprefix(_BOM).lstrip(_WHITESPACE)[:1] == b"{"


def read_json(
    data: bytes,
    classes: Sequence[type[Message]],
    schemas: dict[str, dict[str, Any]],
    *,
    content_type: str | None = None,
    record: Any = None,
) -> tuple[type[Message], dict[str, Any]]:
    """Which of ``classes`` a JSON request is, and the Avro record it stands for (checked
    against their parsed schemas in ``schemas``, by full name); or :class:`DecodeError`
    saying what is wrong. The codec makes the message, as it does from Avro."""
    candidates = _named(classes, content_type, record)
    try:
        doc = json.loads(data, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not valid JSON: {exc}", record=record) from exc
    if not isinstance(doc, dict):
        raise DecodeError(
            f"a JSON request is an object with the schema's fields, got {_kind(doc)}",
            record=record,
        )
    found: list[tuple[type[Message], list[str]]] = []
    for cls in candidates:
        avro, problems = _to_avro(doc, cls, schemas[cls.schema_name])
        if not problems:
            return cls, avro
        found.append((cls, problems))
    # The type it comes closest to is the one its author most likely meant.
    cls, problems = min(found, key=lambda f: len(f[1]))
    others = [c.__name__ for c in candidates if c is not cls]
    nor = f" (nor a valid {' or '.join(others)})" if others else ""
    raise DecodeError(
        f"JSON request is not a valid {cls.__name__}{nor}: {'; '.join(problems)}",
        record=record,
    )


def _named(
    classes: Sequence[type[Message]], content_type: str | None, record: Any
) -> Sequence[type[Message]]:
    """The class the content type's ``schema`` parameter names, or every candidate."""
    _, params = media_type(content_type)
    name = params.get("schema")
    if not name:
        return classes
    for cls in classes:
        if name in (cls.schema_name, cls.schema_name.rsplit(".", 1)[-1]):
            return (cls,)
    expected = " or ".join(c.schema_name for c in classes)
    raise DecodeError(
        f"content-type names schema {name}; this topic takes {expected}", record=record
    )


def _to_avro(
    doc: dict[str, Any], cls: type[Message], schema: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The Avro record ``doc`` stands for, defaults filled in, and what is wrong with it."""
    doc = dict(doc)
    problems: list[str] = []
    for field in cls.json_fields:
        text_name = f"{field}_json"
        if field in doc:
            if text_name in doc:
                problems.append(f"{field}: give {field} (JSON) or {text_name} (text), not both")
                del doc[field]
                continue
            doc[text_name] = json.dumps(doc.pop(field))
        elif isinstance(doc.get(text_name), str):
            try:
                json.loads(doc[text_name], parse_constant=_no_constant)
            except ValueError as exc:
                problems.append(f"{text_name}: not JSON text ({exc})")
    fields = schema["fields"]
    names = [f["name"] for f in fields]
    for unknown in sorted(set(doc) - set(names)):
        problems.append(f"{unknown}: unknown field (fields: {_field_list(cls, names)})")
    avro: dict[str, Any] = {}
    for field in fields:
        name, kind = field["name"], field["type"]
        if name not in doc:
            if "default" in field:
                avro[name] = field["default"]
            else:
                problems.append(f"{_given_as(cls, name)}: missing ({_type(kind)})")
            continue
        value = doc[name]
        if not validate(value, kind, field=name, raise_errors=False):
            problems.append(f"{name}: expected {_type(kind)}, got {_described(value)}")
        avro[name] = value
    if not problems and not validate(avro, schema, raise_errors=False):
        problems.append(f"does not match the Avro schema {cls.schema_name}")  # a safety net
    return avro, problems


def _given_as(cls: type[Message], name: str) -> str:
    """``spec or spec_json`` for a field carried as JSON text, else the field's name."""
    plain = name.removesuffix("_json")
    return f"{plain} or {name}" if plain != name and plain in cls.json_fields else name


def _field_list(cls: type[Message], names: list[str]) -> str:
    """``workflow_id, spec or spec_json, ...``: the fields as a request may give them."""
    return ", ".join(_given_as(cls, name) for name in names)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _type(kind: Any) -> str:
    """An Avro type as a person reads it: ``long``, ``null or string``, ``enum``."""
    if isinstance(kind, list):
        return " or ".join(_type(k) for k in kind)
    if isinstance(kind, dict):
        return str(kind.get("type"))
    return str(kind)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _described(value: Any, limit: int = 60) -> str:
    """``a string "1"``, ``null``: what was given, in JSON, cut short."""
    if value is None:
        return "null"
    text = json.dumps(value)
    return f"{_kind(value)} {text if len(text) <= limit else text[: limit - 3] + '...'}"


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),  # before int: bool is an int subclass
    ((int, float), "a number"),
    (str, "a string"),
    (dict, "an object"),
)


def json_kind(value: object) -> str:
    """A short phrase for error messages: 'a string', 'a list (length 2)', 'null'."""
    if isinstance(value, list):
        return f"a list (length {len(value)})"
    for types, phrase in _KINDS:
        if isinstance(value, types):
            return phrase
    return f"a {type(value).__name__}"
