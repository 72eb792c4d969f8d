"""Engine interfaces: what a gateway node needs from the system it is part of.

An *engine* bundles five small services. The memory engine (``engines.memory``)
is the single-node default and the reference; the Redis engine
(``engines.redis``) makes many processes and machines act as one gateway.

- :class:`Broker` moves encoded envelopes between nodes. A node tells it which
  channels have local subscribers; it calls the node's handler for every
  message published on those channels, by any node, with the message's
  *position* in the channel's history. For ``user:{id}:notifications`` it keeps
  the message in that user's offline queue instead when no node has a subscriber.
- :class:`OfflineQueue`: notifications kept for users who were offline, trimmed
  only when the client acknowledges them.
- :class:`History`: a short per-channel history for session resume.
- :class:`Sessions`: what a disconnected session was subscribed to, for a grace period.
- :class:`Presence`: connection state, user presence, the instance registry and
  cluster-wide subscriber counts.

The hot path (``Broker.publish`` and the handler) is synchronous: a publish is
queued, never awaited per message. Everything else is ``async``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

__all__ = [
    "DeliverHandler",
    "Broker",
    "OfflineQueue",
    "History",
    "Recovery",
    "SessionRecord",
    "Sessions",
    "Presence",
    "Engine",
    "notification_owner",
]

#: ``handler(channel, message_type, envelope, position) -> taken``: called once per
#: message per node. ``position`` is the message's place in the channel's history (an
#: opaque string that orders messages of one channel), or None when the message has
#: none (user notification channels, or Redis unreachable). ``taken``: how many local
#: connections got (or will get) it; 0 for a notification means "queue it again".
DeliverHandler = Callable[[str, str, bytes, "str | None"], int]


def notification_owner(channel: str) -> str | None:
    """The user id of a ``user:{id}:notifications`` channel, else None."""
    if channel.startswith("user:") and channel.endswith(":notifications"):
        return channel[5:-14] or None
    return None


class Broker(Protocol):
    def set_handler(self, handler: DeliverHandler, positions: Callable[[str], "str | None"] | None = None) -> None:
        """Install the node's delivery callback (the hub's ``deliver``), and how to ask
        the last position it delivered per channel (to catch up after a reconnect)."""

    def publish(self, channel: str, message_type: str, envelope: bytes) -> None:
        """Hand one encoded envelope to every node subscribed to ``channel``.

        Also appends it to the channel's history, or for a user notification channel
        with no subscriber anywhere, stores it in the user's offline queue.
        """

    def subscribe(self, channel: str) -> None:
        """This node now has local subscribers on ``channel``."""

    def unsubscribe(self, channel: str) -> None:
        """This node's last local subscriber on ``channel`` left."""

    async def ready(self, channel: str) -> None:
        """Return once messages published on ``channel`` from now on reach this node
        (after :meth:`subscribe`; the Redis broker waits for its SUBSCRIBE to be sent)."""

    async def flush(self) -> None:
        """Wait until every message published so far has been accepted by the engine
        (the Kafka source commits offsets only after this)."""


class OfflineQueue(Protocol):
    async def pending(self, user_id: str) -> list[tuple[int, bytes]]:
        """Unacknowledged, unexpired ``(seq, envelope)`` of ``user_id``, oldest first."""

    async def ack(self, user_id: str, up_to: int) -> int:
        """Drop messages with ``seq <= up_to``; returns how many were removed."""


@dataclass(frozen=True)
class Recovery:
    """What a channel's history holds after a position."""

    #: ``(position, message_type, envelope)``, oldest first.
    entries: list[tuple[str, str, bytes]]
    #: False when messages after the position may have been dropped (history
    #: trimmed by length or age, or the position is not one this engine issued).
    recovered: bool


class History(Protocol):
    async def since(self, channel: str, position: str) -> Recovery:
        """Messages of ``channel`` after ``position``."""

    async def position(self, channel: str) -> str:
        """The channel's current position (of its newest message)."""


@dataclass
class SessionRecord:
    """A disconnected session: who it was and what it was subscribed to."""

    user_id: str | None
    #: channel → message-type filter (None = every type)
    subscriptions: dict[str, frozenset[str] | None] = field(default_factory=dict)
    #: channel → position of the last message the node delivered before the disconnect
    positions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user_id,
            "subs": {ch: (sorted(types) if types is not None else None) for ch, types in self.subscriptions.items()},
            "pos": self.positions,
        }

    @classmethod
    def from_json(cls, obj: Any) -> "SessionRecord":
        """Raises ``ValueError`` on anything that is not a record this module wrote."""
        if not isinstance(obj, dict) or not isinstance(obj.get("subs"), dict) or not isinstance(obj.get("pos"), dict):
            raise ValueError("not a session record")
        user = obj.get("user")
        if user is not None and not isinstance(user, str):
            raise ValueError("bad user in session record")
        subs: dict[str, frozenset[str] | None] = {}
        for channel, types in obj["subs"].items():
            if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
                raise ValueError("bad filter in session record")
            subs[channel] = frozenset(types) if types is not None else None
        positions = {ch: pos for ch, pos in obj["pos"].items() if isinstance(pos, str)}
        return cls(user, subs, positions)


class Sessions(Protocol):
    async def save(self, session_id: str, record: SessionRecord) -> None:
        """Keep ``record`` for the resume grace period."""

    async def take(self, session_id: str, user_id: str | None) -> SessionRecord | None:
        """The record of ``session_id`` if it belongs to ``user_id`` (then removed: a
        session resumes once), else None (and a stranger's attempt leaves it in place)."""


class Presence(Protocol):
    def connected(self, session_id: str, user_id: str | None, device: str) -> None:
        """A connection opened (batched with others: at most one round trip)."""

    def disconnected(self, session_id: str, user_id: str | None) -> None:
        """A connection closed."""

    def count_changed(self, channel: str, local_subscribers: int) -> None:
        """This node's subscriber count of ``channel`` changed (batched, not awaited)."""

    async def subscriber_count(self, channel: str, local_subscribers: int) -> int:
        """Subscribers of ``channel`` on every node, given this node's current count
        (which the engine records: one round trip)."""

    async def user_presence(self, user_id: str) -> dict[str, Any]:
        """``{"online": bool, "devices": int}`` across every node."""

    async def instances(self) -> list[dict[str, Any]]:
        """Live gateway instances with their connection counts."""


class Engine(Protocol):
    """The bundle a :class:`fastgw.server.Gateway` runs on."""

    broker: Broker
    offline: OfflineQueue
    history: History
    sessions: Sessions
    presence: Presence

    async def start(self, local_channels: Callable[[], dict[str, int]], local_connections: Callable[[], list[Any]]) -> None:
        """Connect; ``local_channels``/``local_connections`` let the engine re-register
        this node's state after an outage."""

    def status(self) -> dict[str, Any]:
        """For ``/readyz`` and ``/api/stats``: ``{"engine": name, "ok": bool, ...}``."""

    async def close(self) -> None: ...
