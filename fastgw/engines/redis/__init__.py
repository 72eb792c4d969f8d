"""The Redis engine: many gateway processes and machines acting as one.

``fastgw serve --redis redis://HOST:PORT/DB`` (``--redis-cluster`` for a Redis
Cluster, sharded pub/sub). redis-py's asyncio client with the hiredis parser.

Modules, one job each:

- ``link``: the connection, health, reconnect with backoff, batched commands;
- ``keys``: every key and channel name;
- ``scripts``: the Lua scripts (publish + history, publish-or-queue, ack);
- ``broker``: pub/sub routing, outage buffer;
- ``store``: offline queues, channel history, sessions;
- ``presence``: connection state, user presence, instance registry, counts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from fastgw.engines.redis.broker import RedisBroker
from fastgw.engines.redis.keys import Keys
from fastgw.engines.redis.link import Link
from fastgw.engines.redis.presence import RedisPresence
from fastgw.engines.redis.store import RedisHistory, RedisOfflineQueue, RedisSessions

if TYPE_CHECKING:
    from fastgw.config import Config

__all__ = ["RedisEngine"]

log = logging.getLogger("fastgw.redis")


class RedisEngine:
    name = "redis"

    def __init__(self, config: "Config", *, port: Callable[[], int | None] = lambda: None) -> None:
        assert config.redis, "RedisEngine needs config.redis"
        self.link = Link(config.redis, cluster=config.redis_cluster)
        self.keys = keys = Keys(config.redis_prefix)
        self.broker = RedisBroker(
            self.link, keys, node_id=config.node_id,
            history_size=config.history_size, history_ttl=config.history_ttl,
            offline_max_messages=config.offline_max_messages, offline_retention=config.offline_retention,
            outage_buffer=config.redis_outage_buffer,
        )
        self.offline = RedisOfflineQueue(self.link, keys, config.offline_retention)
        self.history = RedisHistory(self.link, keys, config.history_size, config.history_ttl)
        self.sessions = RedisSessions(self.link, keys, config.resume_grace)
        self.presence = RedisPresence(
            self.link, keys, node_id=config.node_id, heartbeat=config.heartbeat,
            refresh=config.instance_refresh, port=port,
        )
        # after a (re)connect: pub/sub first (nothing published may overtake it) and what
        # this node missed meanwhile, then the node's registration, then what it kept
        self.link.before_up(self._rejoin)
        self.link.on_up(self.presence.register)
        self.link.on_up(self.broker.republish)
        self.link.on_up(self._resync_subscriptions)

    async def _rejoin(self) -> None:
        subscriber = self.broker.subscriber
        try:
            await subscriber.reconnect()  # data messages held from here
            await self.broker.catch_up()
        finally:
            subscriber.release()

    async def _resync_subscriptions(self) -> None:
        self.broker.subscriber.want_all()

    async def start(self, local_channels: Callable[[], dict[str, int]], local_connections: Callable[[], list[Any]]) -> None:
        """Connect once; if Redis is not there, serve degraded and keep reconnecting."""
        self.presence.bind(local_channels, local_connections)
        if not await self.link.connect():
            log.error("redis: %s unreachable (%s); serving local subscribers, retrying",
                      self.link.url, self.link.last_error)
            self.link.mark_down(ConnectionError(self.link.last_error or "unreachable"))
        self.presence.start()

    def status(self) -> dict[str, Any]:
        b = self.broker.stats
        return {
            "engine": self.name,
            "ok": self.link.up,
            **self.link.status(),
            "published": b.published,
            "queued_offline": b.queued_offline,
            "received": b.received,
            "outage_republished": b.buffered,
            "caught_up": b.caught_up,
            "requeued": b.requeued,
            "lost": b.lost,
            "outages": self.link.stats.outages,
            "reconnects": self.link.stats.reconnects,
            "round_trips": self.link.stats.round_trips,
            "commands": self.link.stats.commands,
            "rtt_ms": round(self.link.stats.last_rtt_ms, 3),
            "malformed": dict(self.link.stats.malformed),
            "live_instances": len(self.presence.live_nodes),
        }

    async def close(self) -> None:
        if self.link.up:
            await self.broker.flush_or_timeout(2.0)
            await self.link.batch.settle()  # sessions of the drained connections
        await self.presence.close()
        await self.broker.close()
        await self.link.close()
