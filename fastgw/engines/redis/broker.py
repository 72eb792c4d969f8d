"""Redis pub/sub routing: one Redis publish per message, per-channel subscriptions.

Publishing: ``publish`` is synchronous (the hub's hot path). Messages queue in an
outbox; everything queued while a pipeline is in flight leaves in the next one,
so under load many messages share one round trip and there is never more than
one round trip per message. Each message is one script call (``scripts.py``):
history append + publish, or publish-or-queue for user notifications.

Receiving: the node subscribes in Redis only to channels with local subscribers
(``SUBSCRIBE``, or ``SSUBSCRIBE`` on the owning node of a cluster), so it never
receives or decodes traffic it does not need. Subscription changes are
reconciled in batches (one command per loop turn).

Redis unreachable: messages are delivered to this node's own subscribers at
once and kept (up to ``outage_buffer``) to publish after reconnecting, flagged
so that this node does not deliver them twice; beyond that they are counted as
lost. Never silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import redis.asyncio as aioredis

from fastgw.engines.base import DeliverHandler, notification_owner
from fastgw.engines.redis.keys import Keys
from fastgw.engines.redis.link import UNREACHABLE, Link
from fastgw.engines.redis.scripts import PUBLISH_HISTORY, PUBLISH_OR_QUEUE, QUEUE

__all__ = ["RedisBroker", "BrokerStats", "decode_payload"]

log = logging.getLogger("fastgw.redis")


@dataclass
class BrokerStats:
    published: int = 0  # accepted by Redis
    queued_offline: int = 0  # of which kept in an offline queue (no live subscriber)
    received: int = 0  # pub/sub messages handed to the hub
    buffered: int = 0  # published while Redis was down, republished after
    caught_up: int = 0  # delivered from history after this node reconnected
    requeued: int = 0  # notifications for a connection that had just closed, queued again
    lost: int = 0  # published while Redis was down, beyond the outage buffer


#: A quiet channel's history key outlives its entries (trimmed after ``history_ttl``)
#: by this much, so a resume can still tell that nothing was dropped.
HISTORY_KEY_TTL = 24 * 3600.0


def decode_payload(data: bytes) -> tuple[str, str, bytes, str | None, bytes] | None:
    """``(type, origin, flag, position, envelope)`` of a pub/sub payload, or None if malformed.

    The envelope is checked to be a JSON object (once per node per message, not per
    subscriber): anything else on our channels was not written by a gateway.
    """
    parts = data.split(b"|", 4)
    if len(parts) != 5:
        return None
    mtype, origin, flag, position, envelope = parts
    if flag not in (b"0", b"1") or not envelope.startswith(b"{"):
        return None
    try:
        if not isinstance(orjson.loads(envelope), dict):
            return None
        return mtype.decode(), origin.decode(), flag, position.decode() or None, envelope
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None


class RedisBroker:
    def __init__(
        self,
        link: Link,
        keys: Keys,
        *,
        node_id: str,
        history_size: int,
        history_ttl: float,
        offline_max_messages: int,
        offline_retention: float,
        outage_buffer: int,
    ) -> None:
        self.link = link
        self.keys = keys
        self.node_id = node_id
        self.stats = BrokerStats()
        self._handler: DeliverHandler | None = None
        self._positions: Callable[[str], str | None] = lambda channel: None
        #: channel → position caught up to after a reconnect: older live messages are skipped
        self._caught_up: dict[str, tuple[int, int]] = {}
        self._publish_cmd = "SPUBLISH" if link.cluster else "PUBLISH"
        self._history_sha = link.register_script(PUBLISH_HISTORY)
        self._queue_sha = link.register_script(PUBLISH_OR_QUEUE)
        self._requeue_sha = link.register_script(QUEUE)
        self._history_args = (str(history_size), str(int(history_ttl * 1000)),
                              str(int(max(history_ttl, HISTORY_KEY_TTL) * 1000)), node_id)
        self._queue_args = (str(offline_max_messages), str(int(offline_retention * 1000)))
        # outgoing
        self._outbox: list[tuple[str, str, bytes, bytes]] = []
        self._sending: asyncio.Task[None] | None = None
        self._outage: deque[tuple[str, str, bytes, bytes]] = deque()
        self._outage_limit = outage_buffer
        self._submitted = 0  # messages handed to publish()
        self._settled = 0  # of which accepted by Redis
        self._settled_event = asyncio.Event()
        # incoming
        self.subscriber = Subscriber(link, keys, self._on_message)

    # --- Broker interface ----------------------------------------------------------

    def set_handler(self, handler: DeliverHandler, positions: Callable[[str], str | None] | None = None) -> None:
        self._handler = handler
        if positions is not None:
            self._positions = positions

    def publish(self, channel: str, message_type: str, envelope: bytes) -> None:
        self._submitted += 1
        if not self.link.up:
            self._deliver_during_outage(channel, message_type, envelope)
            return
        self._outbox.append((channel, message_type, envelope, b"0"))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send())

    def subscribe(self, channel: str) -> None:
        self.subscriber.want(channel)

    def unsubscribe(self, channel: str) -> None:
        self.subscriber.drop(channel)

    async def ready(self, channel: str) -> None:
        """Return once this node's SUBSCRIBE for ``channel`` has been sent: anything Redis
        publishes on it afterwards reaches this node (degraded: at once)."""
        await self.subscriber.ready(channel)

    async def flush(self) -> None:
        """Wait until Redis has accepted every message published so far (waits out an outage)."""
        target = self._submitted
        while self._settled < target:
            self._settled_event.clear()
            await self._settled_event.wait()

    async def flush_or_timeout(self, timeout: float) -> None:
        """At shutdown: give what is queued a moment to reach Redis."""
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except asyncio.TimeoutError:
            log.warning("redis: %d messages not published at shutdown", self._submitted - self._settled)

    async def close(self) -> None:
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
        await self.subscriber.close()

    # --- outgoing ------------------------------------------------------------------

    def _command(self, channel: str, message_type: str, envelope: bytes, flag: bytes) -> tuple[Any, ...]:
        header = b"%b|%b|%b|" % (message_type.encode(), self.node_id.encode(), flag)
        if notification_owner(channel) is not None:
            return ("EVALSHA", self._queue_sha, 2, self.keys.queue(channel), self.keys.queue_seq(channel),
                    self.keys.pubsub(channel), self._publish_cmd, header, envelope, *self._queue_args)
        return ("EVALSHA", self._history_sha, 1, self.keys.history(channel),
                self.keys.pubsub(channel), self._publish_cmd, header, envelope, message_type, *self._history_args, flag)

    async def _send(self) -> None:
        await asyncio.sleep(0)  # gather the rest of this loop turn's messages
        while self._outbox:
            batch, self._outbox = self._outbox, []
            if not self.link.up:
                self._divert(batch)
                continue
            try:
                results = await self.link.execute([self._command(*item) for item in batch])
            except UNREACHABLE as exc:
                self.link.mark_down(exc)
                self._divert(batch)  # unknown whether they went out: at least once
                continue
            for item, result in zip(batch, results):
                if isinstance(result, Exception):  # a script error: a bug or a foreign key type
                    self.link.stats.malformed["publish_error"] += 1
                    log.error("redis: publish to %s failed: %s", item[0], result)
                elif isinstance(result, int) and result < 0:
                    self.stats.queued_offline += 1
            self.stats.published += len(batch)
            self._settle(len(batch))

    def _settle(self, count: int) -> None:
        self._settled += count
        self._settled_event.set()

    def _deliver_during_outage(self, channel: str, message_type: str, envelope: bytes) -> None:
        self._deliver_local(channel, message_type, envelope)
        self._buffer(channel, message_type, envelope)

    def _divert(self, items: list[tuple[str, str, bytes, bytes]]) -> None:
        """Messages that could not be sent: deliver here (unless done already), keep for later."""
        for channel, mtype, envelope, flag in items:
            if flag == b"0":
                self._deliver_local(channel, mtype, envelope)
            self._buffer(channel, mtype, envelope)

    def _deliver_local(self, channel: str, message_type: str, envelope: bytes) -> None:
        if self._handler is not None and channel in self.subscriber.wanted:
            self._handler(channel, message_type, envelope, None)

    def _buffer(self, channel: str, message_type: str, envelope: bytes) -> None:
        """Keep for publishing after the outage; flag 1 = this node already delivered it."""
        if len(self._outage) >= self._outage_limit:
            self._outage.popleft()
            self.stats.lost += 1
            self._settle(1)  # will never be accepted: do not hold Kafka commits for it
            if self.stats.lost == 1 or self.stats.lost % 1000 == 0:
                log.error("redis: outage buffer full (%d): %d messages lost so far",
                          self._outage_limit, self.stats.lost)
        self._outage.append((channel, message_type, envelope, b"1"))

    async def catch_up(self) -> None:
        """After a reconnect: deliver what each subscribed channel's history holds beyond
        the last position this node delivered (published while this node was away).

        Runs before live messages are read; live ones it already covered are skipped.
        """
        channels = [(ch, self._positions(ch)) for ch in self.subscriber.wanted]
        channels = [(ch, pos) for ch, pos in channels if pos is not None and notification_owner(ch) is None]
        if not channels:
            return
        results = await self.link.execute(
            [("XRANGE", self.keys.history(ch), "(" + pos, "+", "COUNT", self._history_args[0]) for ch, pos in channels])
        caught = 0
        for (channel, _), entries in zip(channels, results):
            if isinstance(entries, Exception):
                self.link.stats.malformed["history"] += 1
                continue
            for entry_id, fields in entries:
                mtype, envelope = fields.get(b"t"), fields.get(b"e")
                if not mtype or not envelope:
                    self.link.stats.malformed["history"] += 1
                    continue
                if fields.get(b"f") == b"1" and fields.get(b"o") == self.node_id.encode():
                    continue  # this node's own outage message, delivered here already
                position = entry_id.decode()
                self._caught_up[channel] = _order(position)
                if self._handler is not None:
                    self._handler(channel, mtype.decode(), envelope, position)
                caught += 1
        if caught:
            self.stats.caught_up += caught
            log.warning("redis: delivered %d messages published while this node was disconnected", caught)

    async def republish(self) -> None:
        """After reconnecting: publish what was kept during the outage, in order."""
        if not self._outage:
            return
        count = len(self._outage)
        self._outbox[:0] = list(self._outage)
        self._outage.clear()
        self.stats.buffered += count
        log.warning("redis: publishing %d messages kept during the outage", count)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send())

    # --- incoming ------------------------------------------------------------------

    def _on_message(self, channel: str, data: bytes) -> None:
        decoded = decode_payload(data)
        if decoded is None:
            self.link.stats.malformed["pubsub_payload"] += 1
            log.warning("redis: unreadable message on %s skipped (%d bytes)", channel, len(data))
            return
        mtype, origin, flag, position, envelope = decoded
        if flag == b"1" and origin == self.node_id:
            return  # delivered here during the outage already
        if self._caught_up and position is not None and channel in self._caught_up:
            if _order(position) <= self._caught_up[channel]:
                return  # already delivered by the catch-up after a reconnect
            del self._caught_up[channel]
        self.stats.received += 1
        if self._handler is None:
            return
        taken = self._handler(channel, mtype, envelope, position)
        if not taken and notification_owner(channel) is not None:
            # The user's connection closed after Redis counted this node as a receiver:
            # keep it for them, as if nobody had been subscribed.
            self.stats.requeued += 1
            self.link.batch.fire("EVALSHA", self._requeue_sha, 2, self.keys.queue(channel),
                                 self.keys.queue_seq(channel), envelope, *self._queue_args)


def _order(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


class Subscriber:
    """This node's pub/sub subscriptions, reconciled with the channels it wants.

    Standalone Redis: one pub/sub connection (``SUBSCRIBE``). Cluster: one per
    primary that owns a wanted channel (``SSUBSCRIBE``). A reader task per
    connection hands messages to ``on_message``; a read error marks the link down
    (the reconnect re-subscribes everything).
    """

    def __init__(self, link: Link, keys: Keys, on_message: Any) -> None:
        self.link = link
        self.keys = keys
        self.on_message = on_message
        self.wanted: set[str] = set()
        self._active: dict[str, Any] = {}  # channel → the PubSub it is subscribed on
        self._confirmed: set[str] = set()  # channels whose SUBSCRIBE Redis has confirmed
        #: While not None, data messages are kept here instead of delivered (reconnect).
        self._held: list[tuple[str, bytes]] | None = None
        self._confirmation = asyncio.Event()
        self._pubsubs: dict[str, Any] = {}  # node name ("" standalone) → PubSub
        self._clients: list[Any] = []  # per-node clients of a cluster
        self._readers: dict[int, asyncio.Task[None]] = {}  # id(PubSub) → its reader
        self._syncing: asyncio.Task[None] | None = None
        self._resync = False

    def want(self, channel: str) -> None:
        self.wanted.add(channel)
        self._kick()

    def drop(self, channel: str) -> None:
        self.wanted.discard(channel)
        self._kick()

    async def ready(self, channel: str, timeout: float = 2.0) -> None:
        """Wait (bounded) until Redis has confirmed the subscription to ``channel``."""
        self.want(channel)
        await self.confirmed([channel], timeout, need_link=True)

    async def confirmed(self, channels: list[str], timeout: float = 2.0, need_link: bool = False) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [ch for ch in channels if ch in self.wanted and ch not in self._confirmed]
            if not missing or (need_link and not self.link.up):
                return
            channel = missing[0]
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("redis: subscription to %s not confirmed within %.1f s", channel, timeout)
                return
            self._confirmation.clear()
            try:
                await asyncio.wait_for(self._confirmation.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def want_all(self) -> None:
        """Reconcile now (channels wanted while the link was coming up)."""
        self._kick()

    def _kick(self) -> None:
        if not self.link.up:
            return  # reconnect() subscribes to whatever is wanted then
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.get_running_loop().create_task(self._sync())
        else:
            self._resync = True

    async def _sync(self) -> None:
        await asyncio.sleep(0)
        while True:
            self._resync = False
            try:
                await self._reconcile()
            except UNREACHABLE as exc:
                self.link.mark_down(exc)
                return
            if not self._resync:
                return

    async def _reconcile(self) -> None:
        add = [ch for ch in self.wanted if ch not in self._active]
        remove = [ch for ch in self._active if ch not in self.wanted]
        by_pubsub: dict[int, tuple[Any, list[str], list[str]]] = {}
        for channel in add:
            pubsub = await self._pubsub_for(channel)
            by_pubsub.setdefault(id(pubsub), (pubsub, [], []))[1].append(channel)
            self._active[channel] = pubsub
        for channel in remove:
            pubsub = self._active.pop(channel)
            by_pubsub.setdefault(id(pubsub), (pubsub, [], []))[2].append(channel)
        for pubsub, subscribe, unsubscribe in by_pubsub.values():
            names = [self.keys.pubsub(ch) for ch in subscribe]
            if names and not self.link.cluster:
                await pubsub.subscribe(*names)
            for name in names if self.link.cluster else ():
                await pubsub.ssubscribe(name)  # one per command: SSUBSCRIBE wants one slot
            if names and id(pubsub) not in self._readers:  # a connection exists now: read it
                self._readers[id(pubsub)] = asyncio.get_running_loop().create_task(
                    self._read(pubsub), name="fastgw-redis-pubsub")
            self._confirmed.difference_update(unsubscribe)
            names = [self.keys.pubsub(ch) for ch in unsubscribe]
            if names and not self.link.cluster:
                await pubsub.unsubscribe(*names)
            for name in names if self.link.cluster else ():
                await pubsub.sunsubscribe(name)

    async def _pubsub_for(self, channel: str) -> Any:
        if not self.link.cluster:
            name = ""
            host = port = None
        else:
            node = self.link.client.get_node_from_key(self.keys.pubsub(channel))
            name, host, port = node.name, node.host, node.port
        pubsub = self._pubsubs.get(name)
        if pubsub is None:
            if self.link.cluster:
                client = aioredis.Redis(host=host, port=port, decode_responses=False, socket_connect_timeout=2.0)
                self._clients.append(client)
            else:
                client = self.link.client
            pubsub = self._pubsubs[name] = client.pubsub()
        return pubsub

    async def _read(self, pubsub: Any) -> None:
        on_message, channel_of = self.on_message, self.keys.channel_of
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                channel = channel_of(message["channel"])
                if channel is None:
                    continue
                if kind == "message" or kind == "smessage":
                    if self._held is not None:  # reconnecting: the catch-up goes first
                        self._held.append((channel, message["data"]))
                        continue
                    try:
                        on_message(channel, message["data"])
                    except Exception:  # one bad message must not stop the node's feed
                        self.link.stats.malformed["delivery_error"] += 1
                        log.exception("redis: delivering a message of %s failed", channel)
                elif kind == "subscribe" or kind == "ssubscribe":
                    if channel in self.wanted:
                        self._confirmed.add(channel)
                    self._confirmation.set()
                elif kind == "unsubscribe" or kind == "sunsubscribe":
                    if channel not in self.wanted:
                        self._confirmed.discard(channel)
        except asyncio.CancelledError:
            raise
        except UNREACHABLE as exc:
            self.link.mark_down(exc)
        except Exception as exc:  # keep the node alive whatever redis-py raises
            log.exception("redis: pub/sub reader failed")
            self.link.mark_down(exc)

    async def reconnect(self) -> None:
        """Fresh pub/sub connections, subscribed to every wanted channel (after an outage).

        Data messages are held (see :meth:`release`) so that the broker's catch-up from
        history is delivered before them.
        """
        await self._teardown()
        self._held = []
        await self._reconcile()
        await self.confirmed(list(self.wanted))

    def release(self) -> None:
        """Deliver what arrived while reconnecting, then go back to delivering at once."""
        held, self._held = self._held or [], None
        for channel, data in held:
            try:
                self.on_message(channel, data)
            except Exception:
                self.link.stats.malformed["delivery_error"] += 1
                log.exception("redis: delivering a message of %s failed", channel)

    async def _teardown(self) -> None:
        for task in self._readers.values():
            task.cancel()
        await asyncio.gather(*self._readers.values(), return_exceptions=True)
        self._readers.clear()
        for pubsub in self._pubsubs.values():
            try:
                await pubsub.aclose()
            except Exception:
                pass
        self._pubsubs.clear()
        self._active.clear()
        self._confirmed.clear()
        for client in self._clients:
            try:
                await client.aclose()
            except Exception:
                pass
        self._clients.clear()

    async def close(self) -> None:
        if self._syncing is not None:
            self._syncing.cancel()
        await self._teardown()
