"""HTTP responses shared by the endpoints."""

from __future__ import annotations

from aiohttp import web

__all__ = ["NoResponse"]


class NoResponse(web.StreamResponse):
    """What a handler returns when nothing may be written: the client left during the
    WebSocket handshake, or its connection now belongs to another process. aiohttp then
    neither writes nor logs an error (it would log every vanished client at ERROR)."""

    async def prepare(self, request: web.BaseRequest) -> None:  # type: ignore[override]
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
