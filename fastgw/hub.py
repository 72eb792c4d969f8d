"""The hub: channel → local subscribers, and publish = encode once, frame once, write many.

Flow of one message::

    publish(channel, message)          # any source: simulator, HTTP API, Kafka
      → envelope bytes (encoded once)  # protocol.native.channel_message
      → broker.publish                 # memory: straight back to deliver(); Redis: every node
    deliver(channel, type, envelope)   # once per node
      → frame built once               # core.build_frame
      → core.fanout(frame, subscribers)  # one transport.write per subscriber, no tasks

Slow consumers (socket buffer over the connection's outbound limit) are not
written to; they are handed to ``on_overflow`` (the server closes them with 4008).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from fastgw import core as default_core
from fastgw.connection import Connection
from fastgw.engines.base import Broker
from fastgw.messages import MessageIds, iso_now
from fastgw.protocol import native
from fastgw.stats import Stats

__all__ = ["Hub"]


class _Subscribers:
    """Subscribers of one channel, and the flat transport lists the hot path iterates.

    Subscriptions change rarely and messages arrive often, so the write-many
    loop gets a cached list of transports per message type (with the matching
    connections, to map overflow indices back), rebuilt only after a change.
    """

    __slots__ = ("members", "_targets")

    def __init__(self) -> None:
        #: connection → message-type filter (None = every type); insertion-ordered
        self.members: dict[Connection, frozenset[str] | None] = {}
        self._targets: dict[str, tuple[list[Any], list[Connection]]] = {}

    def __len__(self) -> int:
        return len(self.members)

    def changed(self) -> None:
        self._targets.clear()

    def targets(self, message_type: str) -> tuple[list[Any], list[Connection]]:
        cached = self._targets.get(message_type)
        if cached is None:
            conns = [c for c, types in self.members.items() if types is None or message_type in types]
            cached = self._targets[message_type] = ([c.transport for c in conns], conns)
        return cached


class Hub:
    def __init__(
        self,
        broker: Broker,
        *,
        stats: Stats | None = None,
        core: ModuleType = default_core,
        ids: MessageIds | None = None,
        on_overflow: Callable[[Connection], None] | None = None,
        clock: Callable[[], str] = iso_now,
        outbound_limit: int = 1024 * 1024,
    ) -> None:
        self.broker = broker
        self.stats = stats or Stats()
        self.core = core
        self.ids = ids or MessageIds()
        self.on_overflow = on_overflow or (lambda conn: None)
        #: Bytes a subscriber may have buffered before it counts as a slow consumer.
        self.outbound_limit = outbound_limit
        #: Envelope timestamps (ISO 8601); replaceable for deterministic tests.
        self.clock = clock
        self._channels: dict[str, _Subscribers] = {}
        broker.set_handler(self.deliver)

    # --- subscriptions -----------------------------------------------------

    def subscribe(self, conn: Connection, channel: str, types: frozenset[str] | None = None) -> int:
        """Add (or re-filter) ``conn`` on ``channel``; returns the channel's subscriber count."""
        subs = self._channels.get(channel)
        if subs is None:
            subs = self._channels[channel] = _Subscribers()
            self.broker.subscribe(channel)
        subs.members[conn] = types
        subs.changed()
        conn.subscriptions[channel] = types
        return len(subs)

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; False if it was not subscribed."""
        if conn.subscriptions.pop(channel, _MISSING) is _MISSING:
            return False
        subs = self._channels.get(channel)
        if subs is not None:
            subs.members.pop(conn, None)
            subs.changed()
            if not subs:
                del self._channels[channel]
                self.broker.unsubscribe(channel)
        return True

    def remove(self, conn: Connection) -> None:
        """Drop every subscription of a closing connection."""
        for channel in list(conn.subscriptions):
            self.unsubscribe(conn, channel)

    def subscriber_count(self, channel: str) -> int:
        subs = self._channels.get(channel)
        return len(subs) if subs is not None else 0

    def channels(self) -> dict[str, int]:
        return {name: len(subs) for name, subs in self._channels.items()}

    # --- messages ----------------------------------------------------------

    def publish(self, channel: str, message: dict[str, Any]) -> str:
        """Publish a payload on ``channel`` (validated by the caller). Returns its messageId."""
        message_id = self.ids.next()
        envelope = native.channel_message(channel, message, self.clock(), message_id)
        self.stats.messages_published += 1
        self.broker.publish(channel, message["type"], envelope)
        return message_id

    def deliver(self, channel: str, message_type: str, envelope: bytes) -> int:
        """Write one envelope to every local subscriber of ``channel``; returns deliveries."""
        subs = self._channels.get(channel)
        if not subs:
            return 0
        transports, conns = subs.targets(message_type)
        frame = self.core.build_frame(envelope)
        written, overflowed = self.core.fanout(frame, transports, self.outbound_limit)
        stats = self.stats
        stats.deliveries += written
        stats.bytes_written += written * len(frame)
        for index in overflowed:
            self.on_overflow(conns[index])
        return written


_MISSING = object()
