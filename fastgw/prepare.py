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
from fastgw.profiles import Compression, Encoding, Profile

__all__ = ["PreparedMessage", "Codecs"]

class PreparedMessage:
    __slots__ = ("channel", "envelope", "message_type", "_core", "_codecs", "_parsed", "_payloads", "_frames")

    def __init__(
        self,
        channel: str,
        envelope: bytes,
        message_type: str,
        core: ModuleType,
        codecs: "Codecs",
    ) -> None:
        self.channel = channel
        self.envelope = envelope
        self.message_type = message_type
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
        """The complete WebSocket frame for ``encoding``."""
        cached = self._frames.get(encoding)
        if cached is None:
            payload = self.payload(encoding.profile)
            core = self._core
            if encoding.compression is Compression.ZSTD:
                cached = core.build_frame(self._codecs.zstd().compress(payload), core.OP_BINARY)
            elif encoding.compression is Compression.DEFLATE:
                cached = core.build_frame(self._codecs.deflate(payload), core.OP_TEXT, True)
            else:
                cached = core.build_frame(payload, core.OP_TEXT)
            self._frames[encoding] = cached
        return cached


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

