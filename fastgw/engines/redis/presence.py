"""Connection state, user presence, the instance registry and cluster-wide subscriber counts.

Keys (``keys.py``), all with TTLs so that a node that dies leaves nothing behind
for long:

- ``conn:SID`` hash (node, user, device, since), TTL three heartbeats;
- ``presence:USER`` sorted set, session id → expiry (ms): online while any
  score is in the future; the device count is how many are;
- ``instance:NODE`` hash (connections, pid, host, port, started), TTL three
  refresh periods, indexed by the ``instances`` sorted set;
- ``subs:{CHANNEL}`` hash, node → that node's subscriber count; only live
  nodes' fields are summed, dead nodes' fields are removed when seen.

Every write goes through the link's command batch: a connect, a disconnect or a
subscribe costs at most one round trip, shared with everything else of that
loop turn. A channel's subscriber count is written once per loop turn (its
latest value): in a reconnect storm many clients of one turn join the same few
channels, and one ``HSET`` per join was a quarter of all Redis commands. Connection keys are refreshed once per heartbeat period for all of
this node's connections, in pipelines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Callable

from fastgw.engines.redis.keys import Keys
from fastgw.engines.redis.link import UNREACHABLE, Link, Unavailable

__all__ = ["RedisPresence"]

log = logging.getLogger("fastgw.redis")

#: Commands per pipeline when re-registering many connections.
REFRESH_CHUNK = 2000


class RedisPresence:
    def __init__(
        self,
        link: Link,
        keys: Keys,
        *,
        node_id: str,
        heartbeat: float,
        refresh: float,
        port: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.link = link
        self.keys = keys
        self.node_id = node_id
        self.conn_ttl_ms = int(max(3 * heartbeat, 3 * refresh) * 1000)
        self.heartbeat = heartbeat
        self.refresh = refresh
        self.instance_ttl_ms = int(3 * refresh * 1000)
        self._port = port
        self._started = time.time()
        self.live_nodes: set[str] = {node_id}
        self._local_channels: Callable[[], dict[str, int]] = dict
        self._local_connections: Callable[[], list[Any]] = list
        self._connections = 0
        #: channel -> this node's latest subscriber count, not written yet
        self._counts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_full_refresh = 0.0

    def bind(self, local_channels: Callable[[], dict[str, int]], local_connections: Callable[[], list[Any]]) -> None:
        self._local_channels = local_channels
        self._local_connections = local_connections

    # --- events --------------------------------------------------------------------

    def connected(self, session_id: str, user_id: str | None, device: str) -> None:
        self._connections += 1
        self._write_connection(session_id, user_id, device)

    def disconnected(self, session_id: str, user_id: str | None) -> None:
        self._connections -= 1
        self.link.batch.fire("DEL", self.keys.connection(session_id))
        if user_id is not None:
            self.link.batch.fire("ZREM", self.keys.presence(user_id), session_id)

    def count_changed(self, channel: str, local_subscribers: int) -> None:
        if not self._counts:  # the first change of this loop turn: write them all at its end
            asyncio.get_running_loop().call_soon(self._write_counts)
        self._counts[channel] = local_subscribers

    def _write_counts(self) -> None:
        counts, self._counts = self._counts, {}
        fire = self.link.batch.fire
        for channel, local_subscribers in counts.items():
            key = self.keys.subscribers(channel)
            if local_subscribers:
                fire("HSET", key, self.node_id, local_subscribers)
            else:
                fire("HDEL", key, self.node_id)

    def _write_connection(self, session_id: str, user_id: str | None, device: str, fire: Any = None) -> None:
        fire = fire or self.link.batch.fire
        key = self.keys.connection(session_id)
        fire("HSET", key, "node", self.node_id, "user", user_id or "", "device", device, "since", int(time.time()))
        fire("PEXPIRE", key, self.conn_ttl_ms)
        if user_id is not None:
            presence = self.keys.presence(user_id)
            fire("ZADD", presence, int(time.time() * 1000) + self.conn_ttl_ms, session_id)
            fire("PEXPIRE", presence, self.conn_ttl_ms)

    # --- queries -------------------------------------------------------------------

    async def subscriber_count(self, channel: str, local_subscribers: int) -> int:
        key = self.keys.subscribers(channel)
        try:
            if local_subscribers:
                self._counts.pop(channel, None)  # written now
                self.link.batch.fire("HSET", key, self.node_id, local_subscribers)
            counts = await self.link.batch.call("HGETALL", key)
        except Unavailable:
            return local_subscribers
        others: dict[str, int] = {}
        for node, count in counts.items():
            name = node.decode("utf-8", "replace")
            if name == self.node_id:
                continue
            try:
                others[name] = int(count)
            except ValueError:
                self.link.stats.malformed["subscriber_count"] += 1
        unknown = [name for name in others if name not in self.live_nodes]
        if unknown:  # started since the last registry refresh, or dead: ask the registry
            alive = await asyncio.gather(*(self.link.batch.call("EXISTS", self.keys.instance(n)) for n in unknown),
                                         return_exceptions=True)
            for name, exists in zip(unknown, alive):
                if exists == 1:
                    self.live_nodes.add(name)
                elif not isinstance(exists, Exception):
                    del others[name]
                    self.link.batch.fire("HDEL", key, name)  # a dead node's leftover
        return local_subscribers + sum(others.values())

    async def user_presence(self, user_id: str) -> dict[str, Any]:
        now = int(time.time() * 1000)
        devices = await self.link.batch.call("ZCOUNT", self.keys.presence(user_id), now, "+inf")
        return {"online": devices > 0, "devices": int(devices)}

    async def instances(self) -> list[dict[str, Any]]:
        nodes = await self.link.batch.call("ZRANGE", self.keys.instances, 0, -1)
        hashes = await asyncio.gather(*(self.link.batch.call("HGETALL", self.keys.instance(n.decode())) for n in nodes),
                                      return_exceptions=True)
        result = []
        for node, fields in zip(nodes, hashes):
            if isinstance(fields, Unavailable):
                raise fields
            if isinstance(fields, Exception) or not fields:
                continue
            item: dict[str, Any] = {"node": node.decode()}
            for name, value in fields.items():
                text = value.decode("utf-8", "replace")
                item[name.decode()] = int(text) if text.isdigit() else text
            result.append(item)
        return result

    # --- registration ----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="fastgw-redis-registry")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            if not self.link.up:
                continue
            try:
                await self.register(full=time.monotonic() - self._last_full_refresh >= self.heartbeat)
            except UNREACHABLE as exc:
                self.link.mark_down(exc)
            except Exception:
                log.exception("redis: registry refresh failed")

    async def register(self, full: bool = True) -> None:
        """Write this instance's entry and read the live set; ``full`` also re-writes every
        connection and subscriber count of this node (TTL refresh, or after an outage)."""
        now_ms = int(time.time() * 1000)
        key = self.keys.instance(self.node_id)
        commands: list[tuple[Any, ...]] = [
            ("HSET", key, "connections", self._connections, "pid", os.getpid(), "host", socket.gethostname(),
             "port", self._port() or 0, "started", int(self._started), "seen", now_ms // 1000),
            ("PEXPIRE", key, self.instance_ttl_ms),
            ("ZADD", self.keys.instances, now_ms, self.node_id),
            ("ZRANGE", self.keys.instances, 0, -1),
        ]
        results = await self.link.execute(commands)
        nodes = [n.decode() for n in results[-1]] if isinstance(results[-1], list) else []
        alive = await self.link.execute([("EXISTS", self.keys.instance(n)) for n in nodes]) if nodes else []
        live = {self.node_id}
        dead = []
        for node, exists in zip(nodes, alive):
            (live.add(node) if exists == 1 else dead.append(node))
        if dead:
            await self.link.execute([("ZREM", self.keys.instances, *dead)])
        self.live_nodes = live
        if full:
            await self._register_everything()

    async def _register_everything(self) -> None:
        self._last_full_refresh = time.monotonic()
        commands: list[tuple[Any, ...]] = []
        for conn in self._local_connections():
            self._write_connection(conn.session_id, conn.principal.user_id, conn.device,
                                   fire=lambda *c: commands.append(c))
        for channel, count in self._local_channels().items():
            commands.append(("HSET", self.keys.subscribers(channel), self.node_id, count))
        for start in range(0, len(commands), REFRESH_CHUNK):
            await self.link.execute(commands[start:start + REFRESH_CHUNK])

    async def close(self) -> None:
        """Leave cleanly: deregister this instance and its counts (best effort)."""
        if self._task is not None:
            self._task.cancel()
        if not self.link.up:
            return
        commands: list[tuple[Any, ...]] = [("DEL", self.keys.instance(self.node_id)),
                                           ("ZREM", self.keys.instances, self.node_id)]
        for channel in self._local_channels():
            commands.append(("HDEL", self.keys.subscribers(channel), self.node_id))
        try:
            await self.link.execute(commands)
        except UNREACHABLE:
            pass
