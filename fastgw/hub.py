"""The hub: channel → local subscribers, and publish = encode once, frame once, write many.

Flow of one message::

    publish(channel, message)          # any source: simulator, HTTP API, Kafka
      → envelope bytes (encoded once)  # protocol.native.channel_message
      → broker.publish                 # memory: straight back to deliver(); Redis: every node
    deliver(channel, type, envelope)   # once per node
      → PreparedMessage                # reduced / compressed / framed once per encoding in use
      → core.fanout(frame, transports) # window 0: one transport.write per subscriber, no tasks
      → core.enqueue(item, batchers)   # window > 0: queued (conflated), one timer per burst
    _flush(batchers)                   # window closed: core.flush, one write per connection

Slow consumers (socket buffer over the connection's outbound limit) are not
written to; they are handed to ``on_overflow`` (the server closes them with 4008).

Instrumentation (``Stats``, docs/observability.md) costs a few integer additions per
message per subscriber group, never per subscriber: delivery latency is observed
once per group right after its ``fanout`` (weighted by the sockets written), and for
batching groups when the flush that writes them runs (``_Pending``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timezone
from operator import attrgetter
from types import ModuleType
from typing import Any, Callable

from fastgw import core as default_core
from fastgw.connection import Connection
from fastgw.engines.base import Broker
from fastgw.messages import MessageIds, iso_now
from fastgw.prepare import Codecs, PreparedMessage
from fastgw.profiles import Encoding
from fastgw.protocol import native
from fastgw.stats import Stats, channel_type

__all__ = ["Hub"]


class _Group:
    """Subscribers of one channel that share an encoding and a flush window.

    ``transports``/``conns`` are written at once (window 0); ``batchers``/
    ``batched`` queue the message until their connection's window closes.
    """

    __slots__ = ("encoding", "window", "transports", "conns", "batchers", "batched", "pending")

    def __init__(self, encoding: Encoding, window: float) -> None:
        self.encoding = encoding
        self.window = window
        #: The flush this group's batchers wait for, since a message of this group woke them.
        self.pending: _Pending | None = None
        self.transports: list[Any] = []
        self.conns: list[Connection] = []
        self.batchers: list[Any] = []
        self.batched: list[Connection] = []


class _Subscribers:
    """Subscribers of one channel, and the flat lists the hot path iterates.

    Subscriptions change rarely and messages arrive often, so per message type
    the write-many loops get cached groups (by encoding and window) of flat
    transport/batcher lists, rebuilt only after a change.
    """

    __slots__ = ("members", "_targets", "position", "recovering", "messages")

    def __init__(self) -> None:
        #: connection → message-type filter (None = every type); insertion-ordered
        self.members: dict[Connection, frozenset[str] | None] = {}
        self._targets: dict[str, list[_Group]] = {}
        #: History position of the last message delivered here (None: none yet).
        self.position: str | None = None
        #: Connections resuming a session: messages are held for them, in order,
        #: until their missed messages have been sent (see Hub.join_recovering).
        self.recovering: dict[Connection, tuple[frozenset[str] | None, list[tuple[str | None, str, bytes]]]] = {}
        #: Messages that reached this channel's local subscribers (``Hub.top_channels``).
        self.messages = 0

    def __len__(self) -> int:
        return len(self.members) + len(self.recovering)

    def changed(self) -> None:
        self._targets.clear()

    def targets(self, message_type: str) -> list[_Group]:
        cached = self._targets.get(message_type)
        if cached is None:
            groups: dict[tuple[Encoding, float], _Group] = {}
            for conn, types in self.members.items():
                if types is not None and message_type not in types:
                    continue
                key = (conn.encoding, conn.window)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(conn.encoding, conn.window)
                if conn.batcher is None:
                    group.transports.append(conn.transport)
                    group.conns.append(conn)
                else:
                    group.batchers.append(conn.batcher)
                    group.batched.append(conn)
            cached = self._targets[message_type] = list(groups.values())
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
        on_count_change: Callable[[str, int], None] | None = None,
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
        self._batcher_owners: dict[Any, Connection] = {}
        #: Told ``(channel, local subscriber count)`` when subscribers leave (presence).
        self.on_count_change = on_count_change or (lambda channel, count: None)
        self.codecs = Codecs()
        #: flush window → the latest flush scheduled for it (see ``_Pending``).
        self._pending: dict[float, _Pending] = {}
        #: (envelope, its (source, publish) times) while ``publish`` hands it to the broker.
        self._published: tuple[Any, Any] = _NOT_PUBLISHED
        #: ISO timestamps parsed lately → epoch seconds (a burst of messages shares a few).
        self._ts_cache: dict[str, float] = {}
        broker.set_handler(self.deliver, self.position)

    # --- subscriptions -----------------------------------------------------

    def subscribe(self, conn: Connection, channel: str, types: frozenset[str] | None = None) -> int:
        """Add (or re-filter) ``conn`` on ``channel``; returns the channel's subscriber count."""
        subs = self._channels.get(channel)
        if subs is None:
            subs = self._channels[channel] = _Subscribers()
            self.broker.subscribe(channel)
        subs.members[conn] = types
        subs.changed()
        if conn.batcher is not None:
            self._batcher_owners[conn.batcher] = conn
        conn.subscriptions[channel] = types
        return len(subs)

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Remove ``conn`` from ``channel``; False if it was not subscribed."""
        if conn.subscriptions.pop(channel, _MISSING) is _MISSING:
            return False
        subs = self._channels.get(channel)
        if subs is not None:
            subs.members.pop(conn, None)
            subs.recovering.pop(conn, None)
            subs.changed()
            if not subs:
                del self._channels[channel]
                self.broker.unsubscribe(channel)
            self.on_count_change(channel, len(subs))
        return True

    def subscribe_recovering(self, conn: Connection, channel: str, types: frozenset[str] | None) -> int:
        """Subscribe ``conn`` to ``channel`` while its missed messages are being fetched.

        Live messages are held for it (not written) until :meth:`join_recovering`, so
        the client gets missed and live messages in order, with no gap between them.
        """
        subs = self._channels.get(channel)
        if subs is None:
            subs = self._channels[channel] = _Subscribers()
            self.broker.subscribe(channel)
        subs.members.pop(conn, None)
        subs.changed()
        subs.recovering[conn] = (types, [])
        conn.subscriptions[channel] = types
        return len(subs)

    def join_recovering(self, conn: Connection, channel: str) -> list[tuple[str | None, str, bytes]]:
        """Turn a recovering subscription live; returns the messages held meanwhile,
        as ``(position, message_type, envelope)`` (envelopes carry their offset)."""
        subs = self._channels.get(channel)
        if subs is None or conn not in subs.recovering:
            return []
        types, held = subs.recovering.pop(conn)
        subs.members[conn] = types
        subs.changed()
        if conn.batcher is not None:
            self._batcher_owners[conn.batcher] = conn
        return held

    def remove(self, conn: Connection) -> None:
        """Drop every subscription of a closing connection, and whatever it had queued."""
        for channel in list(conn.subscriptions):
            self.unsubscribe(conn, channel)
        if conn.batcher is not None:
            conn.batcher.take("")  # a flush already scheduled then finds nothing to write
            self._batcher_owners.pop(conn.batcher, None)

    def change_encoding(self, conn: Connection, encoding: Encoding, window: float, transport: Any = None) -> None:
        """Switch a connection's profile/compression (and, for a Socket.IO upgrade from
        long-polling to WebSocket, its transport): flush what it queued to the old
        transport, regroup it."""
        if conn.batcher is not None:
            pending = conn.batcher.take(self.clock())
            if pending is not None and conn.transport is not None:
                conn.transport.write(pending)
            self._batcher_owners.pop(conn.batcher, None)
        if transport is not None:
            conn.transport = transport
        conn.set_encoding(encoding, window)
        if conn.batcher is not None and conn.subscriptions:
            self._batcher_owners[conn.batcher] = conn
        for channel in conn.subscriptions:
            self._channels[channel].changed()

    def subscriber_count(self, channel: str) -> int:
        subs = self._channels.get(channel)
        return len(subs) if subs is not None else 0

    def channels(self) -> dict[str, int]:
        return {name: len(subs) for name, subs in self._channels.items()}

    def top_channels(self, n: int = 10, by: str = "subscribers") -> list[tuple[str, int, int]]:
        """The ``n`` busiest local channels as ``(channel, subscribers, messages)``, by
        ``subscribers`` or ``messages`` (delivered here since the channel's first local
        subscriber; a channel's count restarts when its last subscriber leaves)."""
        rows = [(name, len(subs), subs.messages) for name, subs in self._channels.items()]
        key = 2 if by == "messages" else 1
        rows.sort(key=lambda row: (-row[key], row[0]))
        return rows[:n]

    def position(self, channel: str) -> str | None:
        """History position of the last message delivered on ``channel`` here, if any."""
        subs = self._channels.get(channel)
        return subs.position if subs is not None else None

    def set_position(self, channel: str, position: str) -> None:
        """Adopt ``position`` (fetched from the engine) unless a delivery got there first."""
        subs = self._channels.get(channel)
        if subs is not None and subs.position is None:
            subs.position = position

    # --- messages ----------------------------------------------------------

    def publish(self, channel: str, message: dict[str, Any]) -> str:
        """Publish a payload on ``channel`` (validated by the caller). Returns its messageId."""
        message_id = self.ids.next()
        stamp = self.clock()
        envelope = native.channel_message(channel, message, stamp, message_id)
        self.stats.messages_published += 1
        self.stats.published_by_type[channel_type(channel)] += 1
        # Latency clocks from the dict in hand: a broker that delivers straight back (the
        # memory engine) spares deliver() parsing the envelope for them.
        published = time.time() if self.clock is iso_now else self._epoch(stamp)
        if published is not None:
            source = self._epoch(message.get("timestamp"))
            self._published = (envelope, (published if source is None else source, published))
        # user notifications without a subscriber anywhere go to the offline queue (broker)
        try:
            self.broker.publish(channel, message["type"], envelope)
        finally:
            self._published = _NOT_PUBLISHED
        return message_id

    def deliver(self, channel: str, message_type: str, envelope: bytes, position: str | None = None) -> int:
        """Hand one envelope to every local subscriber of ``channel``; returns deliveries.

        ``position`` (the message's place in the channel history) is added to the
        envelope as ``"offset"``: a client that resumes its session names the last
        offset it received and gets what came after.

        Per group (encoding × window): the message is prepared once, then written
        at once to unbatched subscribers or queued in the batchers of the others
        (one flush timer for all batchers that this message made non-empty).
        """
        subs = self._channels.get(channel)
        if subs is None:
            return 0
        stats = self.stats
        ctype = channel_type(channel)
        stats.routed_by_type[ctype] += 1
        subs.messages += 1
        just_published, times = self._published
        if envelope is not just_published:
            times = _UNSET  # (source, publish) time: parsed from the envelope when first needed
        if position is not None:
            subs.position = position
            envelope = with_offset(envelope, position)
        if subs.recovering:
            held_for = 0
            for types, held in subs.recovering.values():
                if types is None or message_type in types:
                    held.append((position, message_type, envelope))
                    held_for += 1
            if not subs.members:
                return held_for  # they will get it: counts as taken
        core = self.core
        prepared = PreparedMessage(channel, envelope, message_type, core, self.codecs, position)
        delivered = 0
        for group in subs.targets(message_type):
            if group.transports:
                frame = prepared.frame(group.encoding)
                written, overflowed = core.fanout(frame, group.transports, self.outbound_limit)
                delivered += written
                stats.bytes_written += written * len(frame)
                if written:  # latency: once per group, after its writes, weighted
                    now = time.time()
                    if times is _UNSET:
                        times = self._times(prepared)
                    if times is not None:
                        stats.observe_latency(now, times[0], times[1], written)
                for index in overflowed:
                    self.on_overflow(group.conns[index])
            if group.batchers:
                if group.encoding.batch_items_are_json:
                    item = prepared.payload(group.encoding.profile)
                else:
                    item = prepared.frame(group.encoding)
                woke = core.enqueue(item, group.batchers, prepared.conflation_key())
                count = len(group.batchers)
                delivered += count
                stats.bytes_batched += count * len(item)
                pending = None
                if woke:
                    pending = group.pending = self._pending[group.window] = _Pending(group.window)
                    asyncio.get_running_loop().call_later(group.window, self._flush, woke, pending)
                if times is _UNSET:
                    times = self._times(prepared)
                if times is not None:
                    self._observe_later(group, pending, times, count)
        stats.deliveries += delivered
        stats.delivered_by_type[ctype] += delivered
        return delivered

    def _observe_later(self, group: _Group, pending: _Pending | None, times: tuple[float, float], count: int) -> None:
        """Latency of a message queued in ``count`` batchers: observed when it is written.

        Exact when this group's batchers wait for a flush that a message of this group
        scheduled; otherwise (they were woken by another channel's message) the latest
        flush scheduled for the same window, which runs no earlier than theirs; failing
        both, now + window: an upper bound either way.
        """
        if pending is None:
            pending = group.pending
            if pending is None or pending.done:
                pending = self._pending.get(group.window)
        if pending is not None and not pending.done:
            pending.items.append((times[0], times[1], count))
            return
        now = time.time()
        self.stats.observe_latency(now + group.window, times[0], times[1], count)

    def _times(self, prepared: PreparedMessage) -> tuple[float, float] | None:
        """(source, publish) epoch seconds of a message, or None if it carries no time.

        Source: the message's own ``timestamp`` (when the position was observed, the
        alert raised...), else the envelope's. Publish: the envelope's ``timestamp``,
        set by ``Hub.publish`` on whichever node the message entered the gateway.
        """
        try:
            envelope = prepared.parsed()  # parsed once per message, shared with conflation/profiles
        except ValueError:  # not JSON: delivered as it is, not measured
            return None
        if not isinstance(envelope, dict):
            return None
        published = self._epoch(envelope.get("timestamp"))
        if published is None:
            return None
        message = envelope.get("message")
        source = self._epoch(message.get("timestamp")) if isinstance(message, dict) else None
        return (published if source is None else source), published

    def _epoch(self, value: Any) -> float | None:
        """ISO 8601 text (or epoch seconds/milliseconds) → epoch seconds; None if neither."""
        if isinstance(value, str):
            cache = self._ts_cache
            seconds = cache.get(value)
            if seconds is not None:
                return seconds
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                return None
            if moment.tzinfo is None:  # no offset given: UTC, as everything on the wire
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
            if len(cache) >= 256:
                cache.clear()
            cache[value] = seconds
            return seconds
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value / 1000.0 if value > 1e11 else float(value)
        return None

    def _flush(self, batchers: list[Any], pending: _Pending | None = None) -> None:
        """A flush window closed: one write per connection for everything it queued.

        Large bursts are flushed in slices of ``FLUSH_SLICE`` connections, each slice a
        separate loop callback, so that publishes and reads interleave with a flush to
        tens of thousands of sockets instead of waiting for all of it. The latency of
        the messages it carries (``pending``) is observed after the last slice.
        """
        if len(batchers) > FLUSH_SLICE:
            asyncio.get_running_loop().call_soon(self._flush, batchers[FLUSH_SLICE:], pending)
            batchers = batchers[:FLUSH_SLICE]
            pending = None
        stats = self.stats
        sizes = Counter(map(_queued, batchers))  # one C-level pass, before the queues empty
        writes, overflowed = self.core.flush(batchers, self.clock())
        stats.batch_writes += writes
        histogram = stats.batch_sizes
        for size, n in sizes.items():
            if size:
                histogram.observe(size, n)
        if pending is not None:
            pending.done = True
            if self._pending.get(pending.window) is pending:
                del self._pending[pending.window]
            now = time.time()
            observe = stats.observe_latency
            for source, published, count in pending.items:
                observe(now, source, published, count)
        for index in overflowed:
            conn = self._batcher_owners.get(batchers[index])
            if conn is not None:
                self.on_overflow(conn)


_MISSING = object()
_UNSET: Any = object()
_NOT_PUBLISHED: tuple[Any, Any] = (None, None)
_queued = attrgetter("pending")


class _Pending:
    """Messages queued in batchers that one scheduled flush will write:
    ``(source time, publish time, batchers)`` each, observed when it runs."""

    __slots__ = ("window", "items", "done")

    def __init__(self, window: float) -> None:
        self.window = window
        self.items: list[tuple[float, float, int]] = []
        self.done = False


def with_offset(envelope: bytes, position: str) -> bytes:
    """``envelope`` (a JSON object) with ``"offset":position`` appended: once per node per message."""
    return b"%b,\"offset\":\"%b\"}" % (envelope[:-1], position.encode())

#: Connections flushed per event-loop callback (about 10–20 ms of socket writes).
FLUSH_SLICE = 1024
