"""In-process counters of one gateway instance (served at ``GET /api/stats``).

Plain integers, cheap enough for the hot path; the Prometheus exporter of a
later release reads the same object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["CloseReason", "Stats"]


class CloseReason(str, Enum):
    NORMAL = "normal"
    SLOW_CONSUMER = "slow_consumer"
    PROTOCOL = "protocol_error"  # binary frame, oversized frame
    FLOOD = "flood"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    SHUTDOWN = "shutdown"


@dataclass
class Stats:
    connections_active: int = 0
    connections_opened: int = 0
    connections_closed: Counter[str] = field(default_factory=Counter)
    #: Upgrades refused, by reason (``auth``, ``limit``, ``draining``).
    rejected: Counter[str] = field(default_factory=Counter)
    messages_published: int = 0
    #: Messages handed to subscribers: written at once, or queued in a batching
    #: connection's window (counted when queued; a conflated one still counts).
    deliveries: int = 0
    #: Socket writes that carried a whole flush window of a batching connection.
    batch_writes: int = 0
    #: Bytes of unbatched channel-message writes (batched flushes are not counted yet).
    bytes_written: int = 0

    def snapshot(self) -> dict[str, object]:
        return {
            "connections": {
                "active": self.connections_active,
                "opened": self.connections_opened,
                "closed": dict(self.connections_closed),
            },
            "rejected": dict(self.rejected),
            "messages_published": self.messages_published,
            "deliveries": self.deliveries,
            "batch_writes": self.batch_writes,
            "bytes_written": self.bytes_written,
        }
