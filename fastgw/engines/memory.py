"""In-memory engines: the embedded single-node broker and offline queue (references for others)."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from typing import Callable

from fastgw.engines.base import DeliverHandler

__all__ = ["MemoryBroker", "MemoryOfflineQueue"]


class MemoryBroker:
    """Delivers synchronously to the local hub, only on channels it has subscribed."""

    def __init__(self) -> None:
        self._handler: DeliverHandler | None = None
        self._channels: set[str] = set()

    def set_handler(self, handler: DeliverHandler) -> None:
        self._handler = handler

    def publish(self, channel: str, message_type: str, envelope: bytes) -> None:
        if self._handler is not None and channel in self._channels:
            self._handler(channel, message_type, envelope)

    def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def close(self) -> None:
        self._channels.clear()


class MemoryOfflineQueue:
    """Per-user queue of notifications published while the user had no live subscription.

    Newest ``max_messages`` kept, each for ``retention`` seconds. Messages are removed
    only when the client acknowledges them (``ack``), so a disconnect in the middle of
    a replay loses nothing. Single-node: the Redis engine replaces it for clusters.
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

    def pending(self, user_id: str) -> list[tuple[int, bytes]]:
        """Unacknowledged, unexpired messages, oldest first."""
        queue = self._queues.get(user_id)
        if not queue:
            return []
        oldest = self._clock() - self.retention
        while queue and queue[0][1] < oldest:
            queue.popleft()
        return [(seq, envelope) for seq, _, envelope in queue]

    def ack(self, user_id: str, up_to: int) -> int:
        """Drop messages with ``seq <= up_to``; returns how many were removed."""
        queue = self._queues.get(user_id)
        removed = 0
        while queue and queue[0][0] <= up_to:
            queue.popleft()
            removed += 1
        if queue is not None and not queue:
            del self._queues[user_id]
        return removed
