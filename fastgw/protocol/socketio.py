"""Socket.IO protocol v5 codec (default parser, server side): str/bytes in, packets out. No I/O.

Follows https://github.com/socketio/socket.io-protocol (v5) and the reference
``socket.io-parser`` (``lib/index.ts``, ``lib/binary.ts``). A packet is encoded as::

    <type>[<attachments>-][<namespace>,][<ack id>][JSON data]

the namespace being left out when it is ``"/"``; binary values (``bytes``) are
taken out of the data, replaced by ``{"_placeholder":true,"num":N}`` and sent as
separate binary frames after the text one. Each encoded Socket.IO packet travels
as the data of an Engine.IO ``message`` packet (``"4"`` + text, see :func:`frame`).

JSON is written with orjson, which matches ``JSON.stringify`` for what the server
sends (compact separators, insertion key order, non-ASCII written raw, U+2028/9
raw, NaN/±Infinity → ``null``) with these differences: a float with no fraction
keeps it (``1.0`` not ``1``; ``-0.0`` not ``0``) — the same number once parsed
except for the sign of zero; ints beyond 64 bits and strings with lone surrogates
are refused (:class:`SocketIOError`) instead of being rounded/escaped. On input,
a number that overflows a double (``1e400``) is refused, where ``JSON.parse``
gives ``Infinity``.

Decoding follows the reference rules, more strictly where it is lax (see
:func:`decode_string`); every violation raises :class:`SocketIOError`, after
which the server closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import orjson

__all__ = [
    "PROTOCOL_VERSION",
    "RESERVED_EVENTS",
    "SocketIOError",
    "PacketType",
    "Packet",
    "encode",
    "frame",
    "decode_string",
    "Decoder",
    "event",
    "ack",
    "connect_reply",
    "connect_error",
    "encode_event_once",
    "native_as_event",
]

PROTOCOL_VERSION = 5

#: Event names with a special meaning; never sent nor accepted as events.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

#: Largest acknowledgement id (``Number.MAX_SAFE_INTEGER``: ids are JS numbers).
MAX_ACK_ID = 2**53 - 1
#: Default cap on the binary attachments one packet may announce.
DEFAULT_MAX_ATTACHMENTS = 10

_DIGITS = frozenset("0123456789")
_NO_DATA: Any = object()


class SocketIOError(ValueError):
    """Invalid Socket.IO packet (the reference parser would throw); close the connection."""


class PacketType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_BINARY_TYPES = (PacketType.BINARY_EVENT, PacketType.BINARY_ACK)
_TYPE_BY_CHAR = {str(int(t)): t for t in PacketType}


@dataclass(frozen=True, slots=True)
class Packet:
    """One Socket.IO packet. ``data`` is a JSON-able value (``bytes`` allowed inside
    ``EVENT``/``ACK`` data), ``id`` the acknowledgement id, ``attachments`` the
    number of binary frames that follow a ``BINARY_*`` packet's text."""

    type: PacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0


# --------------------------------------------------------------------------- encoding


def encode(packet: Packet) -> list[str | bytes]:
    """Encode a packet: ``[text]``, or ``[text, attachment, …]`` for binary data.

    An ``EVENT``/``ACK`` whose data holds ``bytes`` becomes ``BINARY_EVENT``/
    ``BINARY_ACK`` (as in the reference encoder); the attachment count is always
    computed from the data. Raises :class:`SocketIOError` on an invalid namespace
    or ack id, or data that cannot be written as JSON.
    """
    packet_type = PacketType(packet.type)
    _check_namespace(packet.namespace)
    _check_ack_id(packet.id)
    buffers: list[bytes] = []
    data = packet.data
    if packet_type in (PacketType.EVENT, PacketType.ACK, *_BINARY_TYPES):
        data = _deconstruct(data, buffers)
        if buffers and packet_type is PacketType.EVENT:
            packet_type = PacketType.BINARY_EVENT
        elif buffers and packet_type is PacketType.ACK:
            packet_type = PacketType.BINARY_ACK
    parts = [str(int(packet_type))]
    if packet_type in _BINARY_TYPES:
        parts.append(f"{len(buffers)}-")
    if packet.namespace != "/":
        parts.append(packet.namespace + ",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if data is not None:
        parts.append(_dumps(data).decode("utf-8"))
    return ["".join(parts), *buffers]


def frame(packet: Packet) -> list[str | bytes]:
    """:func:`encode` wrapped for Engine.IO: the text as a ``message`` (``"4"`` + text),
    attachments as binary messages (raw bytes over WebSocket)."""
    text, *buffers = encode(packet)
    return ["4" + text, *buffers]


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise SocketIOError(f"data cannot be encoded as JSON: {exc}") from None


def _deconstruct(data: Any, buffers: list[bytes]) -> Any:
    """Copy of ``data`` with every bytes-like value replaced by a numbered placeholder."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        buffers.append(bytes(data))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, buffers) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, buffers) for key, value in data.items()}
    return data


def _check_namespace(namespace: Any) -> None:
    if not isinstance(namespace, str) or not namespace.startswith("/") or "," in namespace:
        raise SocketIOError(f"invalid namespace {namespace!r}: must start with '/' and hold no ','")


def _check_ack_id(ack_id: Any) -> None:
    if ack_id is None:
        return
    if not isinstance(ack_id, int) or isinstance(ack_id, bool) or not 0 <= ack_id <= MAX_ACK_ID:
        raise SocketIOError(f"invalid ack id {ack_id!r}")


# --------------------------------------------------------------------------- decoding


def decode_string(text: str) -> Packet:
    """Decode one text packet (without its Engine.IO ``"4"``), placeholders left in place.

    Same rules as the reference ``Decoder.decodeString``/``isPayloadValid``:

    * the type is one digit ``0``–``6``;
    * ``BINARY_*`` types carry ``<digits>-`` (the attachment count);
    * a namespace starts with ``/`` and runs to the next ``,`` (or the end);
    * an ack id is a run of ASCII digits (at most ``2**53 - 1``);
    * the rest is JSON, valid for the type: ``CONNECT`` an object; ``DISCONNECT``
      nothing; ``CONNECT_ERROR`` a string or an object; ``EVENT`` a non-empty array
      whose first element is a string that is not in :data:`RESERVED_EVENTS`;
      ``ACK`` an array.

    Stricter than the reference: an ``EVENT``/``ACK`` (binary or not) must have data
    (the spec makes it mandatory; the reference only checks data that is present),
    a numeric event name is refused, the attachment count may not be empty, and
    only ASCII digits count as digits.
    """
    if not isinstance(text, str) or not text:
        raise SocketIOError("empty packet")
    packet_type = _TYPE_BY_CHAR.get(text[0])
    if packet_type is None:
        raise SocketIOError(f"unknown packet type {text[0]!r}")
    pos = 1
    attachments = 0
    if packet_type in _BINARY_TYPES:
        attachments, pos = _read_attachments(text, pos)
    namespace, pos = _read_namespace(text, pos)
    ack_id, pos = _read_ack_id(text, pos)
    data = _read_data(text, pos, packet_type)
    return Packet(packet_type, namespace, None if data is _NO_DATA else data, ack_id, attachments)


def _read_attachments(text: str, pos: int) -> tuple[int, int]:
    dash = text.find("-", pos)
    digits = text[pos:dash] if dash != -1 else ""
    if not digits or len(digits) > 6 or not _DIGITS.issuperset(digits):
        raise SocketIOError("illegal attachments")
    return int(digits), dash + 1


def _read_namespace(text: str, pos: int) -> tuple[str, int]:
    if not text.startswith("/", pos):
        return "/", pos
    comma = text.find(",", pos)
    if comma == -1:
        return text[pos:], len(text)
    return text[pos:comma], comma + 1


def _read_ack_id(text: str, pos: int) -> tuple[int | None, int]:
    end = pos
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    if end == pos:
        return None, pos
    if end - pos > 16 or int(text[pos:end]) > MAX_ACK_ID:
        raise SocketIOError("ack id out of range")
    return int(text[pos:end]), end


def _read_data(text: str, pos: int, packet_type: PacketType) -> Any:
    if pos >= len(text):
        if packet_type in (PacketType.EVENT, PacketType.ACK, *_BINARY_TYPES):
            raise SocketIOError("invalid payload: missing data")
        return _NO_DATA
    try:
        data = orjson.loads(text[pos:])
    except orjson.JSONDecodeError:
        raise SocketIOError("invalid payload: not JSON") from None
    if not _is_payload_valid(packet_type, data):
        raise SocketIOError(f"invalid payload for {packet_type.name}")
    return data


def _is_payload_valid(packet_type: PacketType, data: Any) -> bool:
    if packet_type is PacketType.CONNECT:
        return isinstance(data, dict)
    if packet_type is PacketType.DISCONNECT:
        return False  # a DISCONNECT carries no data at all
    if packet_type is PacketType.CONNECT_ERROR:
        return isinstance(data, (str, dict))
    if packet_type in (PacketType.EVENT, PacketType.BINARY_EVENT):
        return (
            isinstance(data, list)
            and bool(data)
            and isinstance(data[0], str)
            and data[0] not in RESERVED_EVENTS
        )
    return isinstance(data, list)  # ACK, BINARY_ACK


def _reconstruct(data: Any, buffers: list[bytes]) -> Any:
    """Copy of ``data`` with each placeholder replaced by its attachment."""
    if isinstance(data, list):
        return [_reconstruct(item, buffers) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True:
            num = data.get("num")
            if isinstance(num, int) and not isinstance(num, bool) and 0 <= num < len(buffers):
                return buffers[num]
            raise SocketIOError("illegal attachments: bad placeholder")
        return {key: _reconstruct(value, buffers) for key, value in data.items()}
    return data


class Decoder:
    """Reassembles packets from one connection's Socket.IO frames, in order.

    Feed each Engine.IO ``message`` data to :meth:`add`: a text packet, then as
    many ``bytes`` frames as a ``BINARY_*`` packet announced. :meth:`add` returns
    the complete packet, or ``None`` while attachments are still expected.
    Complete binary packets come back as ``EVENT``/``ACK`` with ``bytes`` in place
    of the placeholders and ``attachments == 0`` (as the reference decoder does).
    """

    __slots__ = ("max_attachments", "_pending", "_buffers")

    def __init__(self, max_attachments: int = DEFAULT_MAX_ATTACHMENTS) -> None:
        self.max_attachments = max_attachments
        self._pending: Packet | None = None
        self._buffers: list[bytes] = []

    @property
    def awaiting_attachments(self) -> int:
        """How many binary frames the packet being reassembled still needs."""
        return 0 if self._pending is None else self._pending.attachments - len(self._buffers)

    def add(self, data: str | bytes) -> Packet | None:
        """Take one frame. Raises :class:`SocketIOError` on invalid or out-of-order input."""
        if isinstance(data, str):
            return self._add_text(data)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self._add_binary(bytes(data))
        raise SocketIOError(f"unknown frame type {type(data).__name__}")

    def reset(self) -> None:
        """Drop a partly received binary packet."""
        self._pending = None
        self._buffers = []

    def _add_text(self, text: str) -> Packet | None:
        if self._pending is not None:
            raise SocketIOError("got plaintext data when reconstructing a packet")
        packet = decode_string(text)
        if packet.type not in _BINARY_TYPES:
            return packet
        if packet.attachments > self.max_attachments:
            raise SocketIOError(f"too many attachments ({packet.attachments} > {self.max_attachments})")
        self._pending = packet
        return self._finish() if packet.attachments == 0 else None

    def _add_binary(self, data: bytes) -> Packet | None:
        if self._pending is None:
            raise SocketIOError("got binary data when not reconstructing a packet")
        self._buffers.append(data)
        return self._finish() if len(self._buffers) == self._pending.attachments else None

    def _finish(self) -> Packet:
        packet, buffers = self._pending, self._buffers
        assert packet is not None
        self.reset()
        plain = PacketType.EVENT if packet.type is PacketType.BINARY_EVENT else PacketType.ACK
        return replace(packet, type=plain, data=_reconstruct(packet.data, buffers), attachments=0)


# --------------------------------------------------------------------------- server helpers


def event(namespace: str, name: str, *args: Any, ack_id: int | None = None) -> Packet:
    """``EVENT`` packet ``[name, *args]`` (sent as ``BINARY_EVENT`` if args hold bytes)."""
    if not isinstance(name, str) or name in RESERVED_EVENTS:
        raise SocketIOError(f"{name!r} is not a valid event name")
    return Packet(PacketType.EVENT, namespace, [name, *args], ack_id)


def ack(namespace: str, ack_id: int, *args: Any) -> Packet:
    """``ACK`` packet answering event ``ack_id`` with ``args`` (possibly none)."""
    if ack_id is None:
        raise SocketIOError("an ACK needs the id of the event it answers")
    return Packet(PacketType.ACK, namespace, list(args), ack_id)


def connect_reply(namespace: str, sid: str, pid: str | None = None) -> Packet:
    """``CONNECT`` reply granting the namespace: ``{"sid":…}`` plus ``"pid"`` when given
    (the private session id of connection state recovery)."""
    data = {"sid": sid} if pid is None else {"sid": sid, "pid": pid}
    return Packet(PacketType.CONNECT, namespace, data)


def connect_error(namespace: str, message: str, data: Any = None) -> Packet:
    """``CONNECT_ERROR`` refusing the namespace: ``{"message":…}`` plus ``"data"`` when given."""
    payload: dict[str, Any] = {"message": message}
    if data is not None:
        payload["data"] = data
    return Packet(PacketType.CONNECT_ERROR, namespace, payload)


def encode_event_once(name: str, payload_json: bytes, namespace: str = "/", offset: str | None = None) -> bytes:
    """Engine.IO-framed ``42[<name>,<payload>]`` from already-encoded JSON, by concatenation.

    For frame-once fan-out: the same bytes as ``frame(event(namespace, name,
    orjson.loads(payload_json)))[0].encode()`` without re-encoding the payload.
    ``payload_json`` must be one compact JSON value (it is not checked). ``offset``,
    when given, is appended as a last string argument: connection state recovery's
    offset, which clients send back on reconnect.
    """
    if not isinstance(name, str) or name in RESERVED_EVENTS:
        raise SocketIOError(f"{name!r} is not a valid event name")
    _check_namespace(namespace)
    head = b"42[" if namespace == "/" else b"42" + namespace.encode("utf-8") + b",["
    tail = b"]" if offset is None else b"," + _dumps(offset) + b"]"
    return b"".join((head, _dumps(name), b",", payload_json, tail))


def native_as_event(payload_json: bytes, namespace: str = "/") -> bytes:
    """A native-protocol server message (a JSON object with a ``type``) as the
    Engine.IO-framed Socket.IO event of that name: ``{"type":"resumed",…}`` →
    ``42["resumed",{"type":"resumed",…}]``. For replies and notices, not fan-out."""
    kind = orjson.loads(payload_json).get("type")
    return encode_event_once(kind, payload_json, namespace)
