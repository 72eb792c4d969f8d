"""What Redis keeps for clients that come back: offline queues, channel history, sessions.

Anything found in these keys that this gateway did not write (a foreign key of
another type, corrupt entries) is skipped with a log line and counted in
``LinkStats.malformed``; it never fails a client's request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError

from fastgw.engines.base import Recovery, SessionRecord
from fastgw.engines.redis.keys import Keys
from fastgw.engines.redis.link import Link, Unavailable
from fastgw.engines.redis.scripts import ACK, TAKE_SESSION

__all__ = ["RedisOfflineQueue", "RedisHistory", "RedisSessions"]

log = logging.getLogger("fastgw.redis")

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}\Z")


class RedisOfflineQueue:
    """Per-user list ``queue:{user:ID:notifications}`` of ``seq|unix time|envelope`` entries.

    Written by the publish script (``scripts.PUBLISH_OR_QUEUE``) when no gateway has
    a subscriber; trimmed here only by the client's acknowledgement.
    """

    def __init__(self, link: Link, keys: Keys, retention: float) -> None:
        self.link = link
        self.keys = keys
        self.retention = retention
        self._ack_sha = link.register_script(ACK)

    def _key(self, user_id: str) -> str:
        return self.keys.queue(f"user:{user_id}:notifications")

    async def pending(self, user_id: str) -> list[tuple[int, bytes]]:
        key = self._key(user_id)
        try:
            raw = await self.link.batch.call("LRANGE", key, 0, -1)
        except ResponseError as exc:  # WRONGTYPE: not a list we wrote
            self._malformed("queue_key", key, exc)
            return []
        oldest = time.time() - self.retention
        pending = []
        for entry in raw:
            parsed = _queue_entry(entry)
            if parsed is None:
                self._malformed("queue_entry", key, entry[:80])
                continue
            seq, stored_at, envelope = parsed
            if stored_at >= oldest:
                pending.append((seq, envelope))
        return pending

    async def ack(self, user_id: str, up_to: int) -> int:
        key = self._key(user_id)
        try:
            return int(await self.link.batch.call("EVALSHA", self._ack_sha, 1, key, up_to))
        except ResponseError as exc:
            self._malformed("queue_key", key, exc)
            return 0

    def _malformed(self, kind: str, key: str, detail: Any) -> None:
        self.link.stats.malformed[kind] += 1
        log.warning("redis: skipped unreadable %s in %s: %r", kind.replace("_", " "), key, detail)


def _queue_entry(entry: bytes) -> tuple[int, float, bytes] | None:
    parts = entry.split(b"|", 2)
    if len(parts) != 3 or not parts[2].startswith(b"{") or not parts[2].endswith(b"}"):
        return None
    try:
        orjson.loads(parts[2])
        return int(parts[0]), float(parts[1]), parts[2]
    except (ValueError, orjson.JSONDecodeError):
        return None


class RedisHistory:
    """Stream ``hist:{channel}`` per public channel, appended by the publish script.

    Positions are stream ids (``ms-seq``), each the id of an entry that existed (or
    ``0-0``, before the first). Trimming removes the oldest entries first, so a
    recovery from position P is complete exactly when P's entry is still there (for
    ``0-0``: when no entry was ever removed).
    """

    def __init__(self, link: Link, keys: Keys, size: int, ttl: float) -> None:
        self.link = link
        self.keys = keys
        self.size = size
        self.ttl = ttl

    async def since(self, channel: str, position: str) -> Recovery:
        if not _STREAM_ID.match(position):
            return Recovery([], False)
        key = self.keys.history(channel)
        info, anchor, entries = await _gather(self.link, ("XINFO STREAM", key), ("XRANGE", key, position, position),
                                              ("XRANGE", key, "(" + position, "+", "COUNT", self.size))
        if isinstance(info, ResponseError):
            if "no such key" not in str(info).lower():
                self._malformed(key, info)
                return Recovery([], False)
            # No stream: nothing was ever published (complete from the empty position),
            # or its key expired after a day of silence, or Redis lost it: unknown.
            return Recovery([], position == "0-0")
        for result in (info, anchor, entries):
            if isinstance(result, Exception):
                self._malformed(key, result)
                return Recovery([], False)
        if position == "0-0":
            intact = _int_field(info, "entries-added") == _int_field(info, "length")
        else:
            intact = bool(anchor)
        missed = []
        for entry_id, fields in entries:
            mtype, envelope = fields.get(b"t"), fields.get(b"e")
            if not mtype or not envelope:
                self._malformed(key, entry_id)
                continue
            missed.append((entry_id.decode(), mtype.decode(), envelope))
        return Recovery(missed, intact and len(entries) < self.size)

    async def position(self, channel: str) -> str:
        try:
            info = await self.link.batch.call("XINFO STREAM", self.keys.history(channel))
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return "0-0"
            raise
        return _field(info, "last-generated-id").decode()

    def _malformed(self, key: str, detail: Any) -> None:
        self.link.stats.malformed["history"] += 1
        log.warning("redis: skipped unreadable history %s: %r", key, detail)


class RedisSessions:
    """``session:ID`` → JSON session record, expiring after the resume grace period."""

    def __init__(self, link: Link, keys: Keys, grace: float) -> None:
        self.link = link
        self.keys = keys
        self.grace_ms = int(grace * 1000)
        self._take_sha = link.register_script(TAKE_SESSION)

    async def save(self, session_id: str, record: SessionRecord) -> None:
        self.link.batch.fire("SET", self.keys.session(session_id), orjson.dumps(record.to_json()), "PX", self.grace_ms)

    async def take(self, session_id: str, user_id: str | None) -> SessionRecord | None:
        key = self.keys.session(session_id)
        try:
            raw = await self.link.batch.call("EVALSHA", self._take_sha, 1, key, user_id or "")
        except ResponseError as exc:
            raw = exc
        if raw is None:
            return None
        try:
            if isinstance(raw, Exception):
                raise ValueError(str(raw))
            return SessionRecord.from_json(orjson.loads(raw))
        except (ValueError, orjson.JSONDecodeError) as exc:
            self.link.stats.malformed["session"] += 1
            log.warning("redis: skipped unreadable session %s: %s", key, exc)
            return None


async def _gather(link: Link, *commands: tuple[Any, ...]) -> list[Any]:
    """Several commands in the same batch (one round trip); command errors returned, not
    raised (Redis being unreachable is raised)."""
    results = list(await asyncio.gather(*(link.batch.call(*c) for c in commands), return_exceptions=True))
    for result in results:
        if isinstance(result, Unavailable):
            raise result
    return results


def _field(info: Any, name: str) -> bytes:
    value = info.get(name) if isinstance(info, dict) else None
    if value is None and isinstance(info, dict):
        value = info.get(name.encode())
    if isinstance(value, str):
        return value.encode()
    return value if isinstance(value, bytes) else b"0-0"


def _int_field(info: Any, name: str) -> int:
    value = info.get(name) if isinstance(info, dict) else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
