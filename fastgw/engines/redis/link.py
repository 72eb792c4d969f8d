"""The connection to Redis (one server or a cluster): health, reconnect, batched commands.

One :class:`Link` per gateway node. Commands of the engine's services go through
:class:`CommandBatch`: everything issued in one event-loop turn leaves in one
pipeline, so a burst of connects or subscribes costs one round trip, and at most
one pipeline is in flight at a time (no connection storm under load).

When Redis becomes unreachable the link is marked down, the services switch to
their degraded behaviour (local delivery, outage buffer), and a reconnect loop
retries with exponential backoff; on success every ``on_up`` callback runs
(re-subscribe, re-register, publish what was buffered).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Link", "LinkStats", "CommandBatch", "UNREACHABLE", "Unavailable"]

log = logging.getLogger("fastgw.redis")

#: Errors that mean "Redis is not there right now" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class Unavailable(RuntimeError):
    """Redis is unreachable; the caller falls back or reports it."""


@dataclass
class LinkStats:
    """Counters of the Redis engine (``/api/stats`` → ``engine``)."""

    outages: int = 0
    reconnects: int = 0
    #: Pipelines sent (round trips) and commands in them.
    round_trips: int = 0
    commands: int = 0
    last_rtt_ms: float = 0.0
    #: Data found in Redis that this gateway did not write, or cannot read, by kind.
    malformed: Counter[str] = field(default_factory=Counter)


class Link:
    """A Redis server or cluster, as the engine's services see it."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self.stats = LinkStats()
        self.up = False
        self.client: Any = self._new_client()
        self.batch = CommandBatch(self)
        self._before_up: list[Callable[[], Awaitable[None]]] = []
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._scripts: dict[str, str] = {}  # sha → source
        self.down_since: float | None = None
        self.last_error: str | None = None

    def _new_client(self) -> Any:
        options = {"decode_responses": False, "socket_connect_timeout": 2.0, "socket_timeout": 10.0}
        if self.cluster:
            return RedisCluster.from_url(self.url, **options)
        return aioredis.Redis.from_url(self.url, **options)

    def before_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` on every (re)connection before the link counts as up
        (pub/sub re-subscription: nothing this node publishes may overtake it)."""
        self._before_up.append(callback)

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` after every (re)connection, once the link is up."""
        self._on_up.append(callback)

    def register_script(self, source: str) -> str:
        """Remember a Lua script; returns its SHA1 (loaded on every (re)connect)."""
        import hashlib

        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    async def connect(self) -> bool:
        """One attempt: PING, load scripts, run the ``on_up`` callbacks. False if unreachable."""
        try:
            started = time.perf_counter()
            await self.client.ping()
            self.stats.last_rtt_ms = (time.perf_counter() - started) * 1000
            await self.load_scripts()
            for callback in self._before_up:
                await callback()
        except UNREACHABLE as exc:
            self.last_error = str(exc) or type(exc).__name__
            return False
        was_down = self.down_since is not None
        self.up, self.down_since, self.last_error = True, None, None
        if was_down:
            self.stats.reconnects += 1
            log.warning("redis: reconnected to %s", self.url)
        for callback in self._on_up:
            try:
                await callback()
            except UNREACHABLE as exc:
                self.mark_down(exc)
                return False
        return True

    async def load_scripts(self) -> None:
        for source in self._scripts.values():
            await self.client.script_load(source)  # a cluster client sends it to every primary

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one pipeline; per-command errors come back as exceptions.

        A ``NOSCRIPT`` (Redis restarted, or a new cluster node) reloads the scripts and
        resends those commands once.
        """
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        started = time.perf_counter()
        results = await pipe.execute(raise_on_error=False)
        self.stats.last_rtt_ms = (time.perf_counter() - started) * 1000
        self.stats.round_trips += 1
        self.stats.commands += len(commands)
        retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if retry:
            await self.load_scripts()
            again = await self.execute([commands[i] for i in retry])
            for i, result in zip(retry, again):
                results[i] = result
        for result in results:
            if isinstance(result, UNREACHABLE):
                raise result
        return list(results)

    def mark_down(self, exc: BaseException) -> None:
        """Redis failed: degrade now, reconnect in the background."""
        self.last_error = str(exc) or type(exc).__name__
        if self.up or self.down_since is None:
            if self.up:
                log.error("redis: lost %s (%s); serving local subscribers, reconnecting", self.url, self.last_error)
                self.stats.outages += 1
            self.up = False
            self.down_since = time.monotonic()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect(), name="fastgw-redis-reconnect")

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            await asyncio.sleep(delay)
            if self.cluster:  # the topology may have changed: start from the seed again
                old, self.client = self.client, self._new_client()
                await _close_quietly(old)
            if await self.connect():
                return
            delay = min(delay * 2, BACKOFF_MAX)

    async def close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        await _close_quietly(self.client)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"redis": "up" if self.up else "down", "cluster": self.cluster}
        if not self.up:
            status["error"] = self.last_error
            if self.down_since is not None:
                status["down_for_s"] = round(time.monotonic() - self.down_since, 1)
        return status


class CommandBatch:
    """Commands issued in one loop turn leave in one pipeline; results come back as futures."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any] | None]] = []
        self._task: asyncio.Task[None] | None = None

    def fire(self, *command: Any) -> None:
        """Queue a command whose result nobody waits for (dropped while Redis is down)."""
        if not self.link.up:
            return
        self._queue.append((command, None))
        self._kick()

    async def call(self, *command: Any) -> Any:
        """Queue a command and wait for its result. Raises :class:`Unavailable` if Redis is down."""
        if not self.link.up:
            raise Unavailable(self.link.last_error or "redis unavailable")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def settle(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until every queued command has been sent: before closing."""
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, Exception):
                pass

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the rest of this loop turn add its commands
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self.link.execute([cmd for cmd, _ in batch])
            except UNREACHABLE as exc:
                self.link.mark_down(exc)
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(Unavailable(str(exc)))
                for _, future in self._queue:
                    if future is not None and not future.done():
                        future.set_exception(Unavailable(str(exc)))
                self._queue.clear()
                return
            for (_, future), result in zip(batch, results):
                if future is None or future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


async def _close_quietly(client: Any) -> None:
    try:
        await client.aclose()
    except Exception:  # closing a dead connection: nothing to report
        pass
