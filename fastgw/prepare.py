"""A published message, prepared once per encoding in use and shared by its subscribers.

``deliver`` on a node creates one :class:`PreparedMessage` per message. Every
subscriber group asks it for the bytes of its encoding; each variant (reduced
JSON, compressed, framed) is computed at most once, on first request, so a
message costs one encode per profile in use, never one per subscriber.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson

from fastgw.messages import NON_ESSENTIAL_FIELDS
from fastgw.profiles import Compression, Encoding, Profile, Wire
from fastgw.protocol import socketio

__all__ = ["PreparedMessage", "Codecs", "control_frame", "packet_frame", "recovery_offset", "parse_recovery_offset", "POLLING_SEPARATOR"]

#: Ends every packet written to a long-polling buffer: what one GET returns is the
#: buffer minus its last byte (Engine.IO v4 joins payload packets with "\x1e").
POLLING_SEPARATOR = b"\x1e"

class PreparedMessage:
    __slots__ = ("channel", "envelope", "message_type", "position", "_core", "_codecs", "_parsed", "_payloads",
                 "_frames")

    def __init__(
        self,
        channel: str,
        envelope: bytes,
        message_type: str,
        core: ModuleType,
        codecs: "Codecs",
        position: str | None = None,
    ) -> None:
        self.channel = channel
        self.envelope = envelope
        self.message_type = message_type
        #: History position (also inside the envelope as "offset"); Socket.IO
        #: clients get it as the event's last argument for connection state recovery.
        self.position = position
        self._core = core
        self._codecs = codecs
        self._parsed: dict[str, Any] | None = None
        self._payloads: dict[str, bytes] = {}
        self._frames: dict[Encoding, bytes] = {}

    def parsed(self) -> dict[str, Any]:
        """The envelope as a dict (parsed once; only needed for reduction and conflation)."""
        if self._parsed is None:
            self._parsed = orjson.loads(self.envelope)
        return self._parsed

    def conflation_key(self) -> str | None:
        """Newer ``location_update`` of the same vehicle on the same channel replaces older."""
        if self.message_type != "location_update":
            return None
        vehicle = self.parsed().get("message", {}).get("vehicle_id")
        return None if vehicle is None else f"{self.channel}\x00{vehicle}"

    def payload(self, profile: Profile) -> bytes:
        """The envelope JSON as ``profile`` sends it (reduced for cellular and slow)."""
        if profile.decimals is None:
            return self.envelope
        cached = self._payloads.get(profile.name)
        if cached is None:
            envelope = dict(self.parsed())
            envelope["message"] = self._reduce(envelope.get("message"), profile)
            cached = self._payloads[profile.name] = orjson.dumps(envelope)
        return cached

    def _reduce(self, message: Any, profile: Profile) -> Any:
        if not isinstance(message, dict):
            return message
        if self.message_type == "location_update":
            return self._core.reduce_location(message, profile.decimals, profile.drop_confidence)
        fields = NON_ESSENTIAL_FIELDS.get(self.message_type)
        return self._core.strip_fields(message, fields) if fields else message

    def frame(self, encoding: Encoding) -> bytes:
        """The complete WebSocket frame for ``encoding`` (for Socket.IO long-polling:
        the packet and its separator, ready to append to a polling buffer)."""
        cached = self._frames.get(encoding)
        if cached is None:
            payload = self.payload(encoding.profile)
            core = self._core
            if encoding.wire is not Wire.NATIVE:
                offset = None if self.position is None else recovery_offset(self.channel, self.position)
                packet = socketio.encode_event_once("channel_message", payload, offset=offset)
                if encoding.wire is Wire.SOCKETIO_POLLING:
                    cached = packet + POLLING_SEPARATOR
                else:
                    cached = core.build_frame(packet, core.OP_TEXT)
            elif encoding.compression is Compression.ZSTD:
                cached = core.build_frame(self._codecs.zstd().compress(payload), core.OP_BINARY)
            elif encoding.compression is Compression.DEFLATE:
                cached = core.build_frame(self._codecs.deflate(payload), core.OP_TEXT, True)
            else:
                cached = core.build_frame(payload, core.OP_TEXT)
            self._frames[encoding] = cached
        return cached


def control_frame(core: ModuleType, encoding: Encoding, payload: bytes) -> bytes:
    """A native server message (reply, notice, queued notification) as ``encoding``
    writes it: a text frame of the JSON itself, or of the Socket.IO event named by its
    ``type`` (``42["queued_message",{…}]``), or that packet for a polling buffer."""
    if encoding.wire is Wire.NATIVE:
        return core.build_frame(payload)
    return packet_frame(core, encoding, socketio.native_as_event(payload))


def packet_frame(core: ModuleType, encoding: Encoding, packet: bytes) -> bytes:
    """An encoded Socket.IO packet (``42[…]``, ``43…``) as a Socket.IO ``encoding``
    writes it: a WebSocket text frame, or the packet plus separator for a polling buffer."""
    if encoding.wire is Wire.SOCKETIO_POLLING:
        return packet + POLLING_SEPARATOR
    return core.build_frame(packet)


def recovery_offset(channel: str, position: str) -> str:
    """The Socket.IO recovery offset of a channel message: ``"<position> <channel>"``.

    Socket.IO clients keep only the last offset they received and send it back on
    reconnect; naming the channel lets the server resume that channel from it (the
    session's other channels resume from the positions saved at disconnect)."""
    return f"{position} {channel}"


def parse_recovery_offset(offset: object) -> tuple[str, str] | None:
    """``(channel, position)`` of a :func:`recovery_offset`, or None if it is not one."""
    if not isinstance(offset, str) or " " not in offset:
        return None
    position, channel = offset.split(" ", 1)
    return (channel, position) if position and channel else None


class Codecs:
    """Compressors, loaded on first use (a gateway with no zstd client never loads the dictionary)."""

    def __init__(self) -> None:
        self._zstd: Any = None

    def zstd(self) -> Any:
        if self._zstd is None:
            from fastgw.compression import load_codec

            self._zstd = load_codec()
        return self._zstd

    @staticmethod
    def deflate(payload: bytes) -> bytes:
        from fastgw.compression import deflate_message

        return deflate_message(payload)

