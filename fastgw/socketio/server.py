"""Socket.IO v5 server on top of :mod:`fastgw.socketio.engine`: namespaces, CONNECT with
an auth payload, events, acknowledgements, binary attachments.

Packets are decoded and encoded by :mod:`fastgw.protocol.socketio`. An application
is a set of :class:`Namespace` objects; an unknown namespace gets ``CONNECT_ERROR``
``{"message":"Invalid namespace"}``. Each Engine.IO session carries one
:class:`Socket` per namespace it joined. A session's packets are handled one at a
time and in order (a handler may await; the next packet waits), like the native
protocol's commands. A protocol violation (undecodable packet, a packet for a
namespace the client has not joined, a second CONNECT to the same namespace)
closes the whole session, as the reference server does; so does a client that
joins no namespace within ``connect_timeout`` of opening the session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from aiohttp import web

from fastgw.protocol import socketio
from fastgw.protocol.socketio import PacketType, SocketIOError
from fastgw.socketio.engine import EngineOptions, EngineServer, PollingSink, Session

__all__ = ["ConnectRefused", "Namespace", "Socket", "SocketIOServer"]

log = logging.getLogger("fastgw.socketio")


class ConnectRefused(Exception):
    """Raised by :meth:`Namespace.on_connect` to refuse a client: sent as ``CONNECT_ERROR``."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class Socket:
    """A client's membership of one namespace."""

    __slots__ = ("sid", "namespace", "session", "state")

    def __init__(self, sid: str, namespace: "Namespace", session: Session) -> None:
        self.sid = sid
        self.namespace = namespace
        self.session = session
        #: What the namespace keeps for this socket (the gateway: its hub Connection).
        self.state: Any = None

    def emit(self, event: str, *args: Any) -> None:
        """Send event ``event`` with ``args`` (``bytes`` in them travel as attachments)."""
        self._send(socketio.event(self.namespace.name, event, *args))

    def ack(self, ack_id: int, *args: Any) -> None:
        """Answer the client's event ``ack_id``."""
        self._send(socketio.ack(self.namespace.name, ack_id, *args))

    def _send(self, packet: socketio.Packet) -> None:
        for part in socketio.frame(packet):
            if isinstance(part, str):
                self.session.send_packet(part)
            else:
                self.session.send_binary(part)

    def __repr__(self) -> str:
        return f"<Socket {self.sid} {self.namespace.name} on {self.session!r}>"


class Namespace:
    """One namespace of an application. Override the ``on_*`` methods."""

    def __init__(self, name: str = "/") -> None:
        self.name = name

    async def on_connect(self, socket: Socket, auth: Any) -> str | None:
        """Accept the client (return the connection state recovery ``pid`` to announce,
        or None) or refuse it (raise :class:`ConnectRefused`). The CONNECT reply is
        sent after this returns."""
        return None

    async def on_connected(self, socket: Socket, auth: Any) -> None:
        """After the CONNECT reply: the client may now be sent events."""

    async def on_event(self, socket: Socket, event: str, args: list[Any], ack_id: int | None) -> None:
        """An event from the client; ``ack_id`` is not None when it waits for an ack."""

    def on_transport_change(self, socket: Socket, old_sink: PollingSink) -> None:
        """The session upgraded from long-polling to WebSocket."""

    def on_disconnect(self, socket: Socket, reason: str) -> None:
        """The socket left (client disconnect, session closed, ...)."""


class _SessionState:
    __slots__ = ("decoder", "sockets", "connect_timer")

    def __init__(self, max_attachments: int) -> None:
        self.decoder = socketio.Decoder(max_attachments)
        self.sockets: dict[str, Socket] = {}
        self.connect_timer: asyncio.TimerHandle | None = None


class SocketIOServer:
    """The Engine.IO application that speaks Socket.IO to its sessions."""

    def __init__(
        self,
        namespaces: list[Namespace],
        options: EngineOptions,
        core: Any,
        *,
        connect_timeout: float = 45.0,
        max_attachments: int = socketio.DEFAULT_MAX_ATTACHMENTS,
        admit: Any = None,
    ) -> None:
        self.namespaces = {ns.name: ns for ns in namespaces}
        self.connect_timeout = connect_timeout
        self.max_attachments = max_attachments
        self._admit = admit
        #: Sessions that have not joined a namespace yet (they count toward limits).
        self.unjoined: set[Session] = set()
        self.engine = EngineServer(self, options, core)

    @property
    def sessions(self) -> dict[str, Session]:
        return self.engine.sessions

    def add_routes(self, app: web.Application) -> None:
        self.engine.add_routes(app)

    def status(self) -> dict[str, Any]:
        """For ``/api/stats``: Engine.IO sessions by transport, those not joined yet, and
        (``--workers``) connections handed to / received from other workers."""
        engine = self.engine
        polling = sum(1 for s in engine.sessions.values() if s.transport == "polling")
        status: dict[str, Any] = {"sessions": len(engine.sessions), "polling": polling,
                                  "websocket": len(engine.sessions) - polling, "unjoined": len(self.unjoined)}
        if engine.handoff is not None:
            status["handed_over"] = engine.handoff.handed
            status["received"] = engine.handoff.received
        return status

    def close_all(self, reason: str = "server shutting down", code: int = 1001) -> None:
        self.engine.close_all(reason, code)

    async def disconnect_all(self, timeout: float = 5.0) -> None:
        """Drop every session as a lost network would (WebSocket: the TCP connection is
        aborted; polling: the session ends), so clients reconnect by themselves. For
        tests and operators; returns once the sessions are gone (or after ``timeout``)."""
        for session in list(self.engine.sessions.values()):
            if session.transport == "websocket":
                session.sink.abort()
            else:
                session.close("transport close")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.engine.sessions and loop.time() < deadline:
            await asyncio.sleep(0.01)

    # --- EngineApp ---------------------------------------------------------------

    def admit(self, request: web.Request) -> web.StreamResponse | None:
        return None if self._admit is None else self._admit(request)

    def on_open(self, session: Session) -> None:
        state = session.app_state = _SessionState(self.max_attachments)
        self.unjoined.add(session)
        loop = asyncio.get_running_loop()
        state.connect_timer = loop.call_later(self.connect_timeout, self._connect_timed_out, session)

    def _connect_timed_out(self, session: Session) -> None:
        state: _SessionState = session.app_state
        state.connect_timer = None
        if not state.sockets:
            session.close("connect timeout")

    async def on_message(self, session: Session, data: str | bytes) -> None:
        state: _SessionState = session.app_state
        try:
            packet = state.decoder.add(data)
        except SocketIOError as exc:
            session.close(f"parse error: {exc}")
            return
        if packet is not None:
            await self._dispatch(session, state, packet)

    def on_upgrade(self, session: Session, old_sink: PollingSink) -> None:
        for socket in list(session.app_state.sockets.values()):
            socket.namespace.on_transport_change(socket, old_sink)

    def on_close(self, session: Session, reason: str) -> None:
        state: _SessionState | None = session.app_state
        self.unjoined.discard(session)
        if state is None:
            return
        if state.connect_timer is not None:
            state.connect_timer.cancel()
            state.connect_timer = None
        sockets = list(state.sockets.values())
        state.sockets.clear()
        state.decoder.reset()
        for socket in sockets:
            self._disconnected(socket, reason)

    # --- packets -------------------------------------------------------------------

    async def _dispatch(self, session: Session, state: _SessionState, packet: socketio.Packet) -> None:
        kind = packet.type
        socket = state.sockets.get(packet.namespace)
        if kind is PacketType.CONNECT:
            if socket is not None:
                session.close("already connected to " + packet.namespace)
            else:
                await self._connect(session, state, packet)
        elif socket is None:
            session.close(f"{kind.name} for a namespace not joined: {packet.namespace}")
        elif kind in (PacketType.EVENT, PacketType.BINARY_EVENT):
            name, *args = packet.data
            await socket.namespace.on_event(socket, name, args, packet.id)
        elif kind is PacketType.DISCONNECT:
            del state.sockets[packet.namespace]
            self._disconnected(socket, "client namespace disconnect")
        elif kind in (PacketType.ACK, PacketType.BINARY_ACK):
            pass  # the server asks for no acknowledgements
        else:  # CONNECT_ERROR goes server → client only
            session.close(f"unexpected {kind.name}")

    async def _connect(self, session: Session, state: _SessionState, packet: socketio.Packet) -> None:
        namespace = self.namespaces.get(packet.namespace)
        if namespace is None:
            self._send(session, socketio.connect_error(packet.namespace, "Invalid namespace"))
            return
        socket = Socket(secrets.token_urlsafe(15), namespace, session)
        auth = packet.data
        try:
            pid = await namespace.on_connect(socket, auth)
        except ConnectRefused as refused:
            if not session.closed:
                self._send(session, socketio.connect_error(packet.namespace, refused.message, refused.data))
            return
        if session.closed:  # left while being let in
            namespace.on_disconnect(socket, "transport close")
            return
        if state.connect_timer is not None:
            state.connect_timer.cancel()
            state.connect_timer = None
        state.sockets[namespace.name] = socket
        self.unjoined.discard(session)
        self._send(session, socketio.connect_reply(namespace.name, socket.sid, pid))
        await namespace.on_connected(socket, auth)

    def _disconnected(self, socket: Socket, reason: str) -> None:
        try:
            socket.namespace.on_disconnect(socket, reason)
        except Exception:
            log.exception("on_disconnect of %r failed", socket)

    @staticmethod
    def _send(session: Session, packet: socketio.Packet) -> None:
        for part in socketio.frame(packet):
            if isinstance(part, str):
                session.send_packet(part)
            else:
                session.send_binary(part)
