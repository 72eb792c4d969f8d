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
from typing import Any, Callable, Iterable

from fastgw import core as default_core
from fastgw.connection import Connection
from fastgw.engines.base import Broker
from fastgw.messages import MessageIds, iso_now
from fastgw.protocol import native
from fastgw.stats import Stats

__all__ = ["Hub"]


class _Subscribers:
    """Subscribers of one channel: unfiltered ones, and those filtering by message type."""

    __slots__ = ("everyone", "by_filter")

    def __init__(self) -> None:
        self.everyone: dict[Connection, None] = {}
        self.by_filter: dict[Connection, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self.everyone) + len(self.by_filter)

    def targets(self, message_type: str) -> Iterable[Connection]:
        if not self.by_filter:
            return self.everyone  # the common case: iterate the dict itself, no copy
        chosen = list(self.everyone)
        chosen.extend(c for c, types in self.by_filter.items() if message_type in types)
        return chosen


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
    ) -> None:
        self.broker = broker
        self.stats = stats or Stats()
        self.core = core
        self.ids = ids or MessageIds()
        self.on_overflow = on_overflow or (lambda conn: None)
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
        subs.everyone.pop(conn, None)
        subs.by_filter.pop(conn, None)
        if types is None:
            subs.everyone[conn] = None
        else:
            subs.by_filter[conn] = types
        conn.subscriptions[channel] = types
        return len(subs)

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; False if it was not subscribed."""
        if conn.subscriptions.pop(channel, _MISSING) is _MISSING:
            return False
        subs = self._channels.get(channel)
        if subs is not None:
            subs.everyone.pop(conn, None)
            subs.by_filter.pop(conn, None)
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
        frame = self.core.build_frame(envelope)
        written, overflowed = self.core.fanout(frame, subs.targets(message_type))
        stats = self.stats
        stats.deliveries += written
        stats.bytes_written += written * len(frame)
        for conn in overflowed:
            self.on_overflow(conn)
        return written


_MISSING = object()
