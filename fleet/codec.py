"""Avro on the wire, pydantic in process: the one conversion boundary.

Writers use Avro single-object encoding (``C3 01`` + the schema's 8-byte little-endian
CRC-64-AVRO fingerprint + the binary body). Readers look at the first bytes to tell the
framing apart, find the writer's schema by fingerprint among the bundled schemas (the
current ones and every kept previous version) and resolve it to the current schema, so
old and new processes can talk during a rolling upgrade.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, overload

import fastavro
from fastavro.schema import parse_schema, to_parsing_canonical_form
from fastavro.utils import generate_many
from pydantic import ValidationError

from fleet.errors import DecodeError, SchemaError
from fleet.json_codec import AVRO_MEDIA_TYPE, is_json, read_json
from fleet.messages import Message

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
CONTENT_TYPE = AVRO_MEDIA_TYPE

M = TypeVar("M", bound=Message)
N = TypeVar("N", bound=Message)
P = TypeVar("P", bound=Message)

_RABIN_EMPTY = 0xC15D213AA4D7A795


@cache
def _rabin_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_RABIN_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


def rabin_fingerprint(data: bytes) -> int:
    """CRC-64-AVRO, exactly as the Avro specification defines it."""
    table = _rabin_table()
    fp = _RABIN_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # full name, e.g. io.fleet.TaskResult
    version: int
    path: Path
    parsed: dict[str, Any]
    fingerprint: bytes  # 8 bytes, little-endian, as written after the magic


def load_schema(path: Path) -> SchemaVersion:
    try:
        raw = json.loads(path.read_text())
        parsed = parse_schema(raw)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"{path}: not a valid Avro schema: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(parsed, dict):
        raise SchemaError(f"{path}: a message schema must be a record")
    canonical = to_parsing_canonical_form(parsed).encode()
    return SchemaVersion(
        name=parsed["name"],
        version=int(raw.get("version", 1)),
        path=path,
        parsed=parsed,
        fingerprint=rabin_fingerprint(canonical).to_bytes(8, "little"),
    )


class SchemaStore:
    """The bundled schemas: ``<dir>/*.avsc`` are current, ``<dir>/previous/*.avsc`` kept."""

    def __init__(self, schemas_dir: Path) -> None:
        current = sorted(schemas_dir.glob("*.avsc"))
        if not current:
            raise SchemaError(f"no Avro schemas found in {schemas_dir} (set FLEET_SCHEMAS)")
        self.current: dict[str, SchemaVersion] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        for path in current:
            schema = load_schema(path)
            self.current[schema.name] = schema
            self.by_fingerprint[schema.fingerprint] = schema
        self.previous: list[SchemaVersion] = [
            load_schema(p) for p in sorted((schemas_dir / "previous").glob("*.avsc"))
        ]
        for schema in self.previous:
            self.by_fingerprint.setdefault(schema.fingerprint, schema)

    def schema_for(self, name: str) -> SchemaVersion:
        try:
            return self.current[name]
        except KeyError:
            raise SchemaError(f"no bundled schema named {name}") from None


def to_avro(message: Message) -> dict[str, Any]:
    record = message.model_dump(mode="python")
    for field in message.json_fields:
        value = record.pop(field)
        # Always JSON text, even for JSON null: "null" and a missing value decode the same.
        record[f"{field}_json"] = json.dumps(value)
    symbols: dict[str, Any] = _enums_to_symbols(record)
    return symbols


def _enums_to_symbols(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _enums_to_symbols(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_enums_to_symbols(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def from_avro(cls: type[M], record: dict[str, Any]) -> M:
    record = dict(record)
    for field in cls.json_fields:
        text = record.pop(f"{field}_json", None)
        record[field] = None if text is None else json.loads(text)
    return cls.model_validate(record)


class Codec:
    def __init__(self, store: SchemaStore) -> None:
        self.store = store

    def encode(self, message: Message) -> bytes:
        schema = self.store.schema_for(message.schema_name)
        buf = io.BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, to_avro(message))
        return buf.getvalue()

    def decode(self, data: bytes | None, cls: type[M], *, record: Any = None) -> M:
        """Decode ``data`` as ``cls`` or raise :class:`DecodeError` saying why."""
        return self.decode_any(data, (cls,), record=record)

    @overload
    def decode_any(
        self,
        data: bytes | None,
        classes: tuple[type[M]],
        *,
        record: Any = None,
        content_type: str | None = None,
        accept_json: bool = False,
    ) -> M: ...

    @overload
    def decode_any(
        self,
        data: bytes | None,
        classes: tuple[type[M], type[N]],
        *,
        record: Any = None,
        content_type: str | None = None,
        accept_json: bool = False,
    ) -> M | N: ...

    @overload
    def decode_any(
        self,
        data: bytes | None,
        classes: tuple[type[M], type[N], type[P]],
        *,
        record: Any = None,
        content_type: str | None = None,
        accept_json: bool = False,
    ) -> M | N | P: ...

    def decode_any(
        self,
        data: bytes | None,
        classes: tuple[type[Message], ...],
        *,
        record: Any = None,
        content_type: str | None = None,
        accept_json: bool = False,
    ) -> Message:
        """Decode ``data`` as whichever of ``classes`` its writer schema names.

        With ``accept_json``, a JSON request (by its ``content_type`` header or a leading
        ``{``) is read instead, checked against the same schemas (``fleet.json_codec``).
        """
        if not data:
            raise DecodeError("empty record value", record=record)
        if accept_json and is_json(data, content_type):
            return self._from_json(data, classes, content_type, record)
        writer = self._writer_schema(data, record)
        cls = next((c for c in classes if c.schema_name == writer.name), None)
        if cls is None:
            expected = " or ".join(c.schema_name for c in classes)
            raise DecodeError(
                f"expected {expected}, got {writer.name} v{writer.version}", record=record
            )
        reader = self.store.schema_for(cls.schema_name)
        body = io.BytesIO(data[10:])
        try:
            avro = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:
            raise DecodeError(
                f"Avro body does not match {writer.name} v{writer.version}: "
                f"{type(exc).__name__}: {exc}",
                record=record,
            ) from exc
        if body.tell() != len(data) - 10:
            raise DecodeError(
                f"{len(data) - 10 - body.tell()} trailing bytes after {writer.name}", record=record
            )
        if not isinstance(avro, dict):
            raise DecodeError(f"{writer.name} is not a record schema", record=record)
        return self._message(cls, avro, record)

    def _from_json(
        self,
        data: bytes,
        classes: tuple[type[Message], ...],
        content_type: str | None,
        record: Any,
    ) -> Message:
        schemas = {c.schema_name: self.store.schema_for(c.schema_name).parsed for c in classes}
        cls, avro = read_json(data, classes, schemas, content_type=content_type, record=record)
        return self._message(cls, avro, record)

    def _message(self, cls: type[M], avro: dict[str, Any], record: Any) -> M:
        try:
            return from_avro(cls, avro)
        except (ValidationError, ValueError) as exc:
            raise DecodeError(f"{cls.__name__} fields invalid: {exc}", record=record) from exc

    def _writer_schema(self, data: bytes, record: Any) -> SchemaVersion:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("truncated single-object header", record=record)
            fingerprint = data[2:10]
            writer = self.store.by_fingerprint.get(fingerprint)
            if writer is None:
                raise DecodeError(
                    f"schema fingerprint {fingerprint.hex()} unknown (not a bundled schema)",
                    record=record,
                )
            return writer
        if data[0] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = int.from_bytes(data[1:5], "big")
            raise DecodeError(
                f"Confluent Schema Registry framing (schema id {schema_id}) but no registry "
                "is configured",
                record=record,
            )
        hint = " (JSON? accepted for workflow requests only)" if is_json(data, None) else ""
        raise DecodeError(
            f"not Avro: unknown framing starting {data[:2].hex()}{hint}", record=record
        )


def compatibility_problems(old: SchemaVersion, new: SchemaVersion, samples: int = 50) -> list[str]:
    """Why records cannot travel between two versions of a schema, in either direction.

    Backward: the new reader reads what the old writer wrote. Forward: the old reader
    reads what the new writer writes. Checked on generated records, through fastavro's
    schema resolution (the same path the codec takes).
    """
    problems = []
    for writer, reader, direction in ((old, new, "backward"), (new, old, "forward")):
        for record in generate_many(writer.parsed, samples):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer.parsed, record)
            buf.seek(0)
            try:
                fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)
            except Exception as exc:  # noqa: BLE001 - any resolution failure is the answer
                problems.append(
                    f"{direction}: v{reader.version} cannot read v{writer.version}: "
                    f"{type(exc).__name__}: {exc}"
                )
                break
    return problems
