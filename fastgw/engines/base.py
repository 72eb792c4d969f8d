"""Engine interfaces. The memory engine is the single-node default; others plug in here.

A broker moves encoded envelopes between gateway nodes. A node tells the
broker which channels it has local subscribers for, and the broker calls the
node's handler for every message published on those channels (by any node).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol

__all__ = ["DeliverHandler", "Broker"]

#: ``handler(channel, message_type, envelope)``: called once per message per node.
DeliverHandler = Callable[[str, str, bytes], None]


class Broker(Protocol):
    def set_handler(self, handler: DeliverHandler) -> None:
        """Install the node's delivery callback (the hub's ``deliver``)."""

    def publish(self, channel: str, message_type: str, envelope: bytes) -> None | Awaitable[None]:
        """Hand one encoded envelope to every node subscribed to ``channel``."""

    def subscribe(self, channel: str) -> None | Awaitable[None]:
        """This node now has local subscribers on ``channel``."""

    def unsubscribe(self, channel: str) -> None | Awaitable[None]:
        """This node's last local subscriber on ``channel`` left."""

    async def close(self) -> None: ...
