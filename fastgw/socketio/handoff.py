"""Long-polling across ``--workers``: hand a connection to the worker that owns its session.

With N workers on one port (``SO_REUSEPORT``) the kernel picks a worker per TCP
connection, but an Engine.IO long-polling session lives in one worker, and its GETs,
POSTs and the WebSocket upgrade come on several connections. A worker that receives
a request for a session it does not own passes the connection itself to the owner:
the socket's file descriptor goes over a Unix socket (``SCM_RIGHTS``), with the request
bytes already read from it, and the owner serves it as if it had accepted it (the
owner's index is the first two hex digits of every session id). The connection then
stays with the owner, so it is handed over once, not per request; nothing is proxied.

Not with TLS (the TLS state cannot follow the descriptor): there, as behind a load
balancer with several instances, long-polling needs sticky routing (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Any, Callable

from aiohttp import web

__all__ = ["Handoff", "owner_of", "sid_prefix"]

log = logging.getLogger("fastgw.socketio.handoff")

#: Length of the request bytes that follow the descriptor.
_HEADER = struct.Struct("!I")


def sid_prefix(index: int) -> str:
    """The session-id prefix of worker ``index`` (two hex digits)."""
    return f"{index:02x}"


def owner_of(sid: str) -> int | None:
    """The worker index a session id names, or None."""
    try:
        return int(sid[:2], 16)
    except ValueError:
        return None


class Handoff:
    """Receives connections from the other workers of one group; sends them theirs."""

    def __init__(self, group: str, index: int, count: int) -> None:
        self.group = group
        self.index = index
        self.count = count
        #: Connections handed to other workers / received from them.
        self.handed = 0
        self.received = 0
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _address(self, index: int) -> str:
        return f"\0fastgw-handoff.{self.group}.{index}"  # abstract namespace: nothing on disk

    def owns(self, sid: str) -> bool | None:
        """True if this worker created ``sid``; False if another worker of the group did;
        None if the id names no worker of the group."""
        owner = owner_of(sid)
        if owner is None or owner >= self.count:
            return None
        return owner == self.index

    async def start(self, accept: Callable[[socket.socket, bytes], Any]) -> None:
        """Listen for handed-over connections; ``accept(sock, request_bytes)`` serves one."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self._address(self.index))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._spawn(self._serve(listener, accept))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, listener: socket.socket, accept: Callable[[socket.socket, bytes], Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            link, _ = await loop.sock_accept(listener)
            self._spawn(self._receive(link, accept))

    async def _receive(self, link: socket.socket, accept: Callable[[socket.socket, bytes], Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd, data = await loop.run_in_executor(None, _receive_connection, link)
        except OSError as exc:
            log.warning("a handed-over connection was lost: %s", exc)
            return
        finally:
            link.close()
        self.received += 1
        accept(socket.socket(fileno=fd), data)

    async def hand_over(self, request: web.Request, owner: int) -> bool:
        """Pass ``request``'s connection (and the request) to worker ``owner``. True if
        it was taken: the caller must then leave the connection alone."""
        transport = request.transport
        if transport is None or transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
            return False
        raw_socket = transport.get_extra_info("socket")
        if raw_socket is None:
            return False
        body = await request.read() if request.can_read_body else b""
        head = [f"{request.method} {request.path_qs} HTTP/{request.version.major}.{request.version.minor}\r\n"]
        head += [f"{name.decode('latin-1')}: {value.decode('latin-1')}\r\n" for name, value in request.raw_headers]
        data = "".join(head).encode("latin-1") + b"\r\n" + body
        loop = asyncio.get_running_loop()
        link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        link.setblocking(False)
        try:
            await loop.sock_connect(link, self._address(owner))
            await loop.run_in_executor(None, _send_connection, link, raw_socket.fileno(), data)
        except OSError as exc:
            log.warning("cannot hand a connection to worker %d: %s", owner, exc)
            return False
        finally:
            link.close()
        self.handed += 1
        transport.abort()  # closes this process's descriptor only: the owner has its own
        return True


def _send_connection(link: socket.socket, fd: int, data: bytes) -> None:
    link.setblocking(True)
    link.settimeout(5.0)
    socket.send_fds(link, [_HEADER.pack(len(data))], [fd])
    link.sendall(data)


def _receive_connection(link: socket.socket) -> tuple[int, bytes]:
    link.setblocking(True)
    link.settimeout(5.0)
    msg, fds, _, _ = socket.recv_fds(link, _HEADER.size, 1)
    if len(msg) != _HEADER.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise OSError("malformed handoff")
    (size,) = _HEADER.unpack(msg)
    data = bytearray()
    while len(data) < size:
        chunk = link.recv(min(1 << 16, size - len(data)))
        if not chunk:
            os.close(fds[0])
            raise OSError("handoff cut short")
        data += chunk
    return fds[0], bytes(data)
