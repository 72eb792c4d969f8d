"""Native protocol v1 codec: client text in, commands out; replies as bytes. No I/O.

See docs/protocol.md. Every function here works on str/bytes and plain
values, so the codec is tested with bytes alone and can be reused by other
transports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import orjson

from fastgw.messages import MESSAGE_TYPES

__all__ = [
    "ProtocolError",
    "Subscribe",
    "Unsubscribe",
    "Ping",
    "Hello",
    "Ack",
    "Resume",
    "Command",
    "parse_command",
    "welcome",
    "subscribed",
    "unsubscribed",
    "error",
    "pong",
    "profile",
    "queued_message",
    "queue_sync_complete",
    "resumed",
    "reconnect",
    "channel_message",
]

MAX_ID_LENGTH = 64


class ProtocolError(ValueError):
    """The client sent something we cannot act on; answered with an ``error`` frame."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: str | None
    channel: str
    #: Message types this subscription receives; None means all of them.
    types: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | None


@dataclass(frozen=True, slots=True)
class Hello:
    """Choose a wire profile after connecting: by name, or by the connection type."""

    id: str | None
    profile: str | None = None
    connection_type: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The client has the queued messages up to and including sequence ``up_to``."""

    id: str | None
    up_to: int


@dataclass(frozen=True, slots=True)
class Resume:
    """Restore an earlier session's subscriptions and the channel messages it missed.

    ``offsets`` (channel → the ``offset`` of the last message the client received)
    is optional; without it the server uses what it last delivered before the
    disconnect, which misses whatever was lost in flight.
    """

    id: str | None
    session_id: str
    offsets: dict[str, str]


Command = Union[Subscribe, Unsubscribe, Ping, Hello, Ack, Resume]


def parse_command(text: str) -> Command:
    """Parse one client text frame. Raises :class:`ProtocolError` (``bad_request``)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_request", "invalid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "expected a JSON object")
    request_id = _request_id(obj.get("id"))
    kind = obj.get("type")
    if kind == "subscribe":
        return Subscribe(request_id, _channel(obj, request_id), _types_filter(obj.get("filters"), request_id))
    if kind == "unsubscribe":
        return Unsubscribe(request_id, _channel(obj, request_id))
    if kind == "ping":
        return Ping(request_id)
    if kind == "ack":
        up_to = obj.get("upTo")
        if not isinstance(up_to, int) or isinstance(up_to, bool) or up_to < 0:
            raise ProtocolError("bad_request", "upTo must be a non-negative integer", request_id)
        return Ack(request_id, up_to)
    if kind == "resume":
        session_id, offsets = obj.get("sessionId"), obj.get("offsets", {})
        if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_ID_LENGTH:
            raise ProtocolError("bad_request", "sessionId must be a non-empty string", request_id)
        if not isinstance(offsets, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_ID_LENGTH for k, v in offsets.items()
        ):
            raise ProtocolError("bad_request", "offsets must map channel names to offset strings", request_id)
        return Resume(request_id, session_id, offsets)
    if kind == "hello":
        profile, connection_type = obj.get("profile"), obj.get("connection_type")
        if profile is None and connection_type is None:
            raise ProtocolError("bad_request", "hello needs a profile or a connection_type", request_id)
        for value in (profile, connection_type):
            if value is not None and not isinstance(value, str):
                raise ProtocolError("bad_request", "profile and connection_type must be strings", request_id)
        return Hello(request_id, profile, connection_type)
    raise ProtocolError("bad_request", f"unknown message type {kind!r}", request_id)


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
        raise ProtocolError("bad_request", f"id must be a string of at most {MAX_ID_LENGTH} characters")
    return value


def _channel(obj: dict[str, Any], request_id: str | None) -> str:
    channel = obj.get("channel")
    if not isinstance(channel, str) or not channel:
        raise ProtocolError("bad_request", "channel must be a non-empty string", request_id)
    return channel


def _types_filter(filters: Any, request_id: str | None) -> frozenset[str] | None:
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise ProtocolError("bad_request", "filters must be an object", request_id)
    unknown = set(filters) - {"types"}
    if unknown:
        raise ProtocolError("bad_request", f"unsupported filter(s): {', '.join(sorted(unknown))}", request_id)
    types = filters.get("types")
    if types is None:
        return None
    if not isinstance(types, list) or not types or not all(t in MESSAGE_TYPES for t in types):
        raise ProtocolError(
            "bad_request", f"filters.types must be a non-empty list of {sorted(MESSAGE_TYPES)}", request_id
        )
    return frozenset(types)


# --- server → client -------------------------------------------------------


def welcome(
    session_id: str,
    server_time: str,
    heartbeat: float,
    profile: str = "full",
    window_ms: int = 0,
    compression: dict[str, Any] | None = None,
) -> bytes:
    hb: float | int = int(heartbeat) if float(heartbeat).is_integer() else heartbeat
    msg: dict[str, Any] = {
        "type": "welcome",
        "sessionId": session_id,
        "serverTime": server_time,
        "heartbeat": hb,
        "profile": profile,
        "window": window_ms,
    }
    if compression is not None:
        msg["compression"] = compression
    return orjson.dumps(msg)


def profile(request_id: str | None, name: str, window_ms: int) -> bytes:
    """Reply to ``hello``: the profile now in force and its flush window (ms)."""
    return orjson.dumps({"type": "profile", "id": request_id, "profile": name, "window": window_ms})


def subscribed(request_id: str | None, channel: str, subscriber_count: int, offset: str | None = None) -> bytes:
    """``offset``: the channel's history position when subscribing (a resume point
    until the first message arrives); absent for channels without history."""
    msg: dict[str, Any] = {"type": "subscribed", "id": request_id, "channel": channel, "subscriberCount": subscriber_count}
    if offset is not None:
        msg["offset"] = offset
    return orjson.dumps(msg)


def resumed(
    request_id: str | None, session_id: str, recovered: bool, channels: list[dict[str, Any]]
) -> bytes:
    """Reply to ``resume``. ``recovered: false`` means messages may be missing: refetch state.

    ``channels``: ``{"channel", "recovered", "missed"}`` per restored subscription; the
    missed messages follow this frame, oldest first, then live ones.
    """
    return orjson.dumps(
        {"type": "resumed", "id": request_id, "sessionId": session_id, "recovered": recovered, "channels": channels}
    )


def unsubscribed(request_id: str | None, channel: str) -> bytes:
    return orjson.dumps({"type": "unsubscribed", "id": request_id, "channel": channel})


def error(request_id: str | None, code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "id": request_id, "code": code, "message": message})


def pong(request_id: str | None, server_time: str) -> bytes:
    return orjson.dumps({"type": "pong", "id": request_id, "serverTime": server_time})


def queued_message(seq: int, envelope: bytes) -> bytes:
    """One message kept while the user was offline; ``message`` is its channel_message."""
    return b'{"type":"queued_message","seq":' + str(seq).encode() + b',"message":' + envelope + b"}"


def queue_sync_complete(message_count: int, synced_at: str, up_to: int) -> bytes:
    return orjson.dumps(
        {"type": "queue_sync_complete", "message_count": message_count, "synced_at": synced_at, "upTo": up_to}
    )


def reconnect(retry_after_ms: int) -> bytes:
    """The instance is draining: reconnect (to any instance, then ``resume``) after this delay."""
    return b'{"type":"reconnect","retryAfterMs":%d}' % retry_after_ms


def channel_message(channel: str, message: Any, timestamp: str, message_id: str) -> bytes:
    """The envelope every subscriber of ``channel`` receives; encoded once per publish."""
    return orjson.dumps(
        {"type": "channel_message", "channel": channel, "message": message, "timestamp": timestamp, "messageId": message_id}
    )
