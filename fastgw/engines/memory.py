"""In-memory engine: the embedded single-node default, and the reference the Redis
engine is tested against (``tests/test_engines.py`` runs one contract on both)."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from typing import Any, Callable

from fastgw.engines.base import DeliverHandler, Recovery, SessionRecord, notification_owner

__all__ = ["MemoryBroker", "MemoryOfflineQueue", "MemoryHistory", "MemorySessions", "MemoryPresence", "MemoryEngine"]


class MemoryOfflineQueue:
    """Per-user queue of notifications published while the user had no live subscription.

    Newest ``max_messages`` kept, each for ``retention`` seconds. Messages are removed
    only when the client acknowledges them (``ack``), so a disconnect in the middle of
    a replay loses nothing.
    """

    def __init__(
        self,
        max_messages: int = 100,
        retention: float = 24 * 3600.0,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_messages = max_messages
        self.retention = retention
        self.max_users = max_users
        self._clock = clock
        self._queues: OrderedDict[str, deque[tuple[int, float, bytes]]] = OrderedDict()
        self._seq = itertools.count(1)

    def store(self, user_id: str, envelope: bytes) -> int:
        """Queue ``envelope`` for ``user_id``; returns its sequence number."""
        queue = self._queues.get(user_id)
        if queue is None:
            if len(self._queues) >= self.max_users:
                self._queues.popitem(last=False)  # the least recently used user's queue
            queue = self._queues[user_id] = deque(maxlen=self.max_messages)
        else:
            self._queues.move_to_end(user_id)
        seq = next(self._seq)
        queue.append((seq, self._clock(), envelope))
        return seq

    async def pending(self, user_id: str) -> list[tuple[int, bytes]]:
        """Unacknowledged, unexpired messages, oldest first."""
        queue = self._queues.get(user_id)
        if not queue:
            return []
        oldest = self._clock() - self.retention
        while queue and queue[0][1] < oldest:
            queue.popleft()
        return [(seq, envelope) for seq, _, envelope in queue]

    async def ack(self, user_id: str, up_to: int) -> int:
        """Drop messages with ``seq <= up_to``; returns how many were removed."""
        queue = self._queues.get(user_id)
        removed = 0
        while queue and queue[0][0] <= up_to:
            queue.popleft()
            removed += 1
        if queue is not None and not queue:
            del self._queues[user_id]
        return removed


class MemoryHistory:
    """The last ``size`` messages of each channel, for at most ``ttl`` seconds.

    Positions are decimal strings of a per-channel counter. ``_dropped`` remembers
    the newest position that was trimmed, so :meth:`since` can tell whether a gap
    is complete.
    """

    def __init__(self, size: int = 1000, ttl: float = 150.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._channels: dict[str, tuple[deque[tuple[int, float, str, bytes]], list[int]]] = {}

    def append(self, channel: str, message_type: str, envelope: bytes) -> str:
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = (deque(), [0, 0])  # entries, [last position, newest dropped]
        entries, marks = entry
        marks[0] += 1
        now = self._clock()
        entries.append((marks[0], now, message_type, envelope))
        self._trim(entries, marks, now)
        return str(marks[0])

    def _trim(self, entries: deque[tuple[int, float, str, bytes]], marks: list[int], now: float) -> None:
        oldest = now - self.ttl
        while entries and (len(entries) > self.size or entries[0][1] < oldest):
            marks[1] = entries.popleft()[0]

    async def since(self, channel: str, position: str) -> Recovery:
        try:
            after = int(position)
        except ValueError:
            return Recovery([], False)
        entry = self._channels.get(channel)
        if entry is None:
            return Recovery([], after == 0)
        entries, marks = entry
        self._trim(entries, marks, self._clock())
        if after > marks[0]:
            return Recovery([], False)  # not a position of this channel
        missed = [(str(pos), mtype, env) for pos, _, mtype, env in entries if pos > after]
        return Recovery(missed, marks[1] <= after)

    async def position(self, channel: str) -> str:
        entry = self._channels.get(channel)
        return str(entry[1][0]) if entry is not None else "0"


class MemoryBroker:
    """Delivers synchronously to the local hub, only on channels it has subscribed."""

    def __init__(self, history: MemoryHistory | None = None, offline: MemoryOfflineQueue | None = None) -> None:
        self._handler: DeliverHandler | None = None
        self._channels: set[str] = set()
        self.history = history or MemoryHistory()
        self.offline = offline or MemoryOfflineQueue()

    def set_handler(self, handler: DeliverHandler, positions: Callable[[str], str | None] | None = None) -> None:
        self._handler = handler

    def publish(self, channel: str, message_type: str, envelope: bytes) -> None:
        owner = notification_owner(channel)
        if owner is not None:
            if channel in self._channels and self._handler is not None:
                self._handler(channel, message_type, envelope, None)
            else:
                self.offline.store(owner, envelope)  # replayed when the user subscribes again
            return
        position = self.history.append(channel, message_type, envelope)
        if self._handler is not None and channel in self._channels:
            self._handler(channel, message_type, envelope, position)

    def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def ready(self, channel: str) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        self._channels.clear()


class MemorySessions:
    """Disconnected sessions kept for ``grace`` seconds (at most ``max_sessions``)."""

    def __init__(self, grace: float = 120.0, max_sessions: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.max_sessions = max_sessions
        self._clock = clock
        self._records: OrderedDict[str, tuple[float, SessionRecord]] = OrderedDict()

    async def save(self, session_id: str, record: SessionRecord) -> None:
        now = self._clock()
        while self._records and (len(self._records) >= self.max_sessions or next(iter(self._records.values()))[0] < now):
            self._records.popitem(last=False)
        self._records[session_id] = (now + self.grace, record)

    async def take(self, session_id: str, user_id: str | None) -> SessionRecord | None:
        item = self._records.get(session_id)
        if item is None or item[0] < self._clock():
            self._records.pop(session_id, None)
            return None
        if item[1].user_id != user_id:
            return None  # not theirs: the session stays for its owner
        del self._records[session_id]
        return item[1]


class MemoryPresence:
    """One node: presence and counts are this process's own."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self._devices: dict[str, set[str]] = {}
        self.connections = 0

    def connected(self, session_id: str, user_id: str | None, device: str) -> None:
        self.connections += 1
        if user_id is not None:
            self._devices.setdefault(user_id, set()).add(session_id)

    def disconnected(self, session_id: str, user_id: str | None) -> None:
        self.connections -= 1
        if user_id is not None:
            sessions = self._devices.get(user_id)
            if sessions is not None:
                sessions.discard(session_id)
                if not sessions:
                    del self._devices[user_id]

    def count_changed(self, channel: str, local_subscribers: int) -> None:
        return None

    async def subscriber_count(self, channel: str, local_subscribers: int) -> int:
        return local_subscribers

    async def user_presence(self, user_id: str) -> dict[str, Any]:
        devices = len(self._devices.get(user_id, ()))
        return {"online": devices > 0, "devices": devices}

    async def instances(self) -> list[dict[str, Any]]:
        return [{"node": self.node_id, "connections": self.connections}]


class MemoryEngine:
    """Everything in this process: one gateway node, no coordination."""

    name = "memory"

    def __init__(
        self,
        *,
        node_id: str = "local",
        offline_max_messages: int = 100,
        offline_retention: float = 24 * 3600.0,
        history_size: int = 1000,
        history_ttl: float = 150.0,
        resume_grace: float = 120.0,
    ) -> None:
        self.history = MemoryHistory(history_size, history_ttl)
        self.offline = MemoryOfflineQueue(offline_max_messages, offline_retention)
        self.broker = MemoryBroker(self.history, self.offline)
        self.sessions = MemorySessions(resume_grace)
        self.presence = MemoryPresence(node_id)

    async def start(self, local_channels: Callable[[], dict[str, int]], local_connections: Callable[[], list[Any]]) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"engine": self.name, "ok": True}

    async def close(self) -> None:
        await self.broker.close()
