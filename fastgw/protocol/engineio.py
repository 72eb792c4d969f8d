"""Engine.IO protocol v4 codec (server side): str/bytes in, packets out. No I/O.

Follows https://github.com/socketio/engine.io-protocol (v4) and the reference
``engine.io-parser`` (``encodePacket``/``decodePacket``/``encodePayload``/
``decodePayload``):

* a text packet is its type digit followed by its data (``"4hello"``, ``"2"``);
* over WebSocket a binary ``message`` is the raw bytes of the frame;
* an HTTP long-polling payload joins encoded packets with the record separator
  ``"\\x1e"``, a binary packet inside it being ``"b"`` + base64 of the bytes.

Differences from the reference parser, all on the side of strictness: anything
invalid raises :class:`EngineIOError` instead of yielding an ``error`` packet
(``decodePayload`` stops at the first bad record and returns what it has; here
the whole payload is refused), base64 is decoded strictly, and a text packet to
be put in a polling payload may not contain the separator.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import orjson

__all__ = [
    "PROTOCOL_VERSION",
    "SEPARATOR",
    "EngineIOError",
    "PacketType",
    "Packet",
    "encode_packet",
    "decode_packet",
    "encode_payload",
    "decode_payload",
    "open_packet",
]

#: The ``EIO`` query parameter value this codec speaks.
PROTOCOL_VERSION = 4
#: Joins packets in an HTTP long-polling payload (ASCII "record separator").
SEPARATOR = "\x1e"
#: Prefix of a base64-encoded binary packet (polling, or clients without binary support).
BINARY_PREFIX = "b"


class EngineIOError(ValueError):
    """The peer sent something that is not valid Engine.IO v4; the transport should be closed."""


class PacketType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


_TYPE_BY_CHAR = {str(int(t)): t for t in PacketType}


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet. ``data`` is text, bytes (``MESSAGE`` only) or absent.

    An empty text ``data`` is sent exactly like ``None`` (``"4"``) and comes
    back as ``None``, as in the reference parser.
    """

    type: PacketType
    data: str | bytes | None = None


def encode_packet(packet: Packet, supports_binary: bool = True) -> str | bytes:
    """Encode one packet for a WebSocket frame: text → ``str``, binary message → ``bytes``.

    With ``supports_binary=False`` a binary message is sent as ``"b"`` + base64
    text instead (what the reference does for clients without binary support).
    """
    packet_type = _packet_type(packet.type)
    data = packet.data
    if isinstance(data, (bytes, bytearray, memoryview)):
        if packet_type is not PacketType.MESSAGE:
            raise EngineIOError(f"binary data is only allowed in a message packet, not {packet_type.name}")
        if supports_binary:
            return bytes(data)
        return BINARY_PREFIX + base64.b64encode(data).decode("ascii")
    if data is not None and not isinstance(data, str):
        raise EngineIOError(f"packet data must be str, bytes or None, not {type(data).__name__}")
    return str(int(packet_type)) + (data or "")


def decode_packet(data: str | bytes) -> Packet:
    """Decode one WebSocket frame (or one polling record). Raises :class:`EngineIOError`."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Packet(PacketType.MESSAGE, bytes(data))
    if not isinstance(data, str):
        raise EngineIOError(f"expected str or bytes, not {type(data).__name__}")
    if not data:
        raise EngineIOError("empty packet")
    head = data[0]
    if head == BINARY_PREFIX:
        return Packet(PacketType.MESSAGE, _b64decode(data[1:]))
    packet_type = _TYPE_BY_CHAR.get(head)
    if packet_type is None:
        raise EngineIOError(f"unknown packet type {head!r}")
    return Packet(packet_type, data[1:] if len(data) > 1 else None)


def encode_payload(packets: Iterable[Packet]) -> str:
    """Encode packets as one HTTP long-polling body: records joined by ``"\\x1e"``, binary as base64."""
    records = []
    for packet in packets:
        record = encode_packet(packet, supports_binary=False)
        assert isinstance(record, str)
        if SEPARATOR in record:
            raise EngineIOError("a packet in a polling payload may not contain the record separator")
        records.append(record)
    if not records:
        raise EngineIOError("a payload holds at least one packet")
    return SEPARATOR.join(records)


def decode_payload(text: str | bytes, max_payload: int) -> list[Packet]:
    """Decode an HTTP long-polling request body of at most ``max_payload`` bytes (UTF-8).

    Raises :class:`EngineIOError` if the body is too large, is not UTF-8, is empty,
    or holds any invalid record (including an empty one, e.g. ``"4a\\x1e\\x1e2"``).
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        if len(text) > max_payload:
            raise EngineIOError(f"payload exceeds maxPayload ({max_payload} bytes)")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise EngineIOError("payload is not valid UTF-8") from None
    elif _utf8_length_exceeds(text, max_payload):
        raise EngineIOError(f"payload exceeds maxPayload ({max_payload} bytes)")
    return [decode_packet(record) for record in text.split(SEPARATOR)]


def open_packet(
    sid: str,
    upgrades: Iterable[str],
    ping_interval_ms: int,
    ping_timeout_ms: int,
    max_payload: int,
) -> str:
    """The handshake ``open`` packet, e.g. ``0{"sid":"…","upgrades":["websocket"],…}``."""
    handshake = {
        "sid": sid,
        "upgrades": list(upgrades),
        "pingInterval": int(ping_interval_ms),
        "pingTimeout": int(ping_timeout_ms),
        "maxPayload": int(max_payload),
    }
    return "0" + orjson.dumps(handshake).decode("utf-8")


def _packet_type(value: int) -> PacketType:
    try:
        return PacketType(value)
    except ValueError:
        raise EngineIOError(f"unknown packet type {value!r}") from None


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise EngineIOError("invalid base64 in binary packet") from None


def _utf8_length_exceeds(text: str, limit: int) -> bool:
    """``len(text.encode())`` > ``limit``, without encoding when the answer is obvious."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit
