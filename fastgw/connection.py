"""One client connection as the hub sees it: a transport, a principal, subscriptions.

The hub writes pre-built frames straight to ``transport`` (see ``fastgw.core``).
The socket's own write buffer is the outbound queue; ``outbound_limit`` bounds it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from fastgw.channels import Principal
from fastgw.prepare import control_frame
from fastgw.profiles import FULL, Encoding
from fastgw.stats import CloseReason

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["Connection"]


class Connection:
    """A subscriber. Its identity (hash/eq) is the object itself."""

    __slots__ = (
        "session_id",
        "principal",
        "transport",
        "outbound_limit",
        "subscriptions",
        "close_reason",
        "encoding",
        "window",
        "batcher",
        "device",
        "_core",
        "_on_overflow",
        "closer",
    )

    def __init__(
        self,
        session_id: str,
        principal: Principal,
        transport: asyncio.Transport,
        *,
        outbound_limit: int,
        core: "ModuleType",
        on_overflow: Callable[["Connection"], None],
        encoding: Encoding = FULL,
        window: float = 0.0,
        device: str = "unknown",
    ) -> None:
        self.session_id = session_id
        #: Client kind (``android``, ``ios``, ``web``, ``unknown``): presence and metrics.
        self.device = device
        self.principal = principal
        self.transport: asyncio.Transport | None = transport
        self.outbound_limit = outbound_limit
        #: channel name → message-type filter (None = every type)
        self.subscriptions: dict[str, frozenset[str] | None] = {}
        self.close_reason: CloseReason | None = None
        self._core = core
        self._on_overflow = on_overflow
        self.encoding = encoding
        self.window = 0.0
        #: Queue of a connection with a flush window (``core.Batcher``), else None.
        self.batcher: Any = None
        #: Closes the connection instead of a WebSocket close frame (Socket.IO: its
        #: Engine.IO session); called with (code, reason). None: native WebSocket.
        self.closer: Callable[[int, str], None] | None = None
        self.set_encoding(encoding, window)

    def set_encoding(self, encoding: Encoding, window: float) -> None:
        """Profile/compression and flush window (seconds); window 0 means write at once."""
        self.encoding = encoding
        self.window = window
        if window > 0 and self.transport is not None:
            self.batcher = self._core.Batcher(self.transport, self.outbound_limit, encoding.batch_items_are_json)
        else:
            self.batcher = None

    def send(self, payload: bytes) -> bool:
        """Write a native server message (JSON) as this connection's protocol carries
        it (a text frame, or a Socket.IO event), under the outbound limit."""
        return self.send_frame(control_frame(self._core, self.encoding, payload))

    def send_frame(self, frame: bytes) -> bool:
        """Write one ready WebSocket frame, under the outbound limit."""
        if self.transport is None:
            return False
        written, overflowed = self._core.fanout(frame, [self.transport], self.outbound_limit)
        if overflowed:
            self._on_overflow(self)
        return bool(written)

    def __repr__(self) -> str:
        return f"<Connection {self.session_id} user={self.principal.user_id!r}>"
