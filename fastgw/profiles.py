"""Wire profiles and encodings: what bytes one connection receives, and when.

A *profile* (chosen per connection: ``?profile=`` or a ``hello`` frame) decides
precision reduction and the flush window. A *compression* (negotiated in the
handshake) decides how the payload is packed. Together they form the
connection's :class:`Encoding`; every published message is prepared once per
encoding in use on its channel and shared by all subscribers with that encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Compression",
    "Wire",
    "Profile",
    "Encoding",
    "PROFILES",
    "DEFAULT_WINDOWS_MS",
    "profile_for_connection_type",
    "UnknownProfile",
    "ZSTD_SUBPROTOCOL",
    "FULL",
    "get_profile",
]

#: Sec-WebSocket-Protocol value that turns on zstd-with-dictionary binary frames.
ZSTD_SUBPROTOCOL = "fastgw.v1.zstd"


class Compression(str, Enum):
    NONE = "none"
    ZSTD = "zstd"  # binary frames, packaged dictionary (subprotocol fastgw.v1.zstd)
    DEFLATE = "deflate"  # permessage-deflate, each message compressed on its own


class Wire(str, Enum):
    """How a message is carried to the client: the protocol's packet, in a WebSocket
    frame or buffered for the next HTTP long-polling response."""

    NATIVE = "native"  # the envelope JSON, one WebSocket frame
    SOCKETIO = "socketio"  # 42["channel_message",envelope,offset], one WebSocket frame
    SOCKETIO_POLLING = "socketio-polling"  # the same packet + "\x1e", for the next GET


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    #: Decimal places kept on latitude/longitude; None = no reduction at all.
    decimals: int | None
    drop_confidence: bool
    #: Batches of a JSON connection leave as one ``batched_messages`` envelope
    #: (True) or as several frames in one write (False).
    batch_envelope: bool


PROFILES: dict[str, Profile] = {
    "full": Profile("full", decimals=None, drop_confidence=False, batch_envelope=False),
    "cellular": Profile("cellular", decimals=5, drop_confidence=False, batch_envelope=False),
    "slow": Profile("slow", decimals=4, drop_confidence=True, batch_envelope=True),
}

#: Flush window per profile, milliseconds (0 = write at once). Configurable.
DEFAULT_WINDOWS_MS: dict[str, int] = {"full": 0, "cellular": 100, "slow": 500}

_CONNECTION_TYPES = {
    "wifi": "full",
    "ethernet": "full",
    "cellular": "cellular",
    "5g": "cellular",
    "4g": "cellular",
    "lte": "cellular",
    "3g": "slow",
    "2g": "slow",
    "slow-2g": "slow",
    "edge": "slow",
}


class UnknownProfile(ValueError):
    """A profile or connection type the gateway does not know."""


def get_profile(name: object) -> Profile:
    if isinstance(name, str) and name in PROFILES:
        return PROFILES[name]
    raise UnknownProfile(f"unknown profile {name!r}; use one of {', '.join(PROFILES)}")


def profile_for_connection_type(kind: object) -> Profile:
    """Map a client's connection type (``wifi``, ``4g``, ``3g``, …) to a profile."""
    if isinstance(kind, str) and kind.lower() in _CONNECTION_TYPES:
        return PROFILES[_CONNECTION_TYPES[kind.lower()]]
    raise UnknownProfile(f"unknown connection type {kind!r}; use one of {', '.join(_CONNECTION_TYPES)}")


@dataclass(frozen=True, slots=True)
class Encoding:
    """Everything that decides the bytes of one message for one connection."""

    profile: Profile
    compression: Compression = Compression.NONE
    wire: Wire = Wire.NATIVE

    @property
    def batch_items_are_json(self) -> bool:
        """Slow native JSON connections batch encoded envelopes (for ``batched_messages``);
        all others batch complete frames (Socket.IO: packets, written back to back)."""
        return (self.profile.batch_envelope and self.compression is Compression.NONE
                and self.wire is Wire.NATIVE)


FULL = Encoding(PROFILES["full"])
