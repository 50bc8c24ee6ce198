"""How ``fleet dlq show`` presents a dead letter's bytes, pure: decoded as whichever
bundled message it is, as text, or as a hex dump."""

from __future__ import annotations

from fleet.codec import SINGLE_OBJECT_MAGIC, Codec
from fleet.errors import DecodeError
from fleet.messages import Message as FleetMessage

# Every bundled message class (all are defined in fleet.messages, imported above).
KNOWN_MESSAGES: tuple[type[FleetMessage], ...] = tuple(FleetMessage.__subclasses__())


def decode_known(codec: Codec, value: bytes | None) -> FleetMessage | str:
    """The value as whichever bundled message it is, or the reason it is none of them."""
    by_name = {cls.schema_name: cls for cls in KNOWN_MESSAGES}
    writer = None
    if value and value[:2] == SINGLE_OBJECT_MAGIC:
        writer = codec.store.by_fingerprint.get(value[2:10])
    cls = by_name.get(writer.name) if writer is not None else None
    try:
        return codec.decode(value, cls or KNOWN_MESSAGES[0])
    except DecodeError as exc:
        return exc.reason


def hexdump(data: bytes, limit: int = 512) -> str:
    lines = []
    for start in range(0, min(len(data), limit), 16):
        chunk = data[start : start + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:08x}  {chunk.hex(' '):<47}  |{text}|")
    if len(data) > limit:
        lines.append(f"… {len(data) - limit} more bytes")
    return "\n".join(lines)


def printable(data: bytes | None) -> str | None:
    """Bytes as text when they are UTF-8, else as ``0x`` hex."""
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "0x" + data.hex()
