"""In-memory broker: the embedded single-node engine (and the reference for others)."""

from __future__ import annotations

from fastgw.engines.base import DeliverHandler

__all__ = ["MemoryBroker"]


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

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._channels

    async def close(self) -> None:
        self._channels.clear()
