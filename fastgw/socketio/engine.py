"""Engine.IO v4 server: sessions, HTTP long-polling and WebSocket transports, the
upgrade from one to the other, and the server-driven heartbeat.

Packets are encoded and decoded by :mod:`fastgw.protocol.engineio` (no I/O there);
this module moves them. The layer above (Socket.IO, or the conformance echo) is an
:class:`EngineApp` that sees sessions open, receive messages, change transport and
close.

Where a session's outgoing bytes go is its *sink*:

* WebSocket: the connection's asyncio transport itself. Packets are written as
  ready-made WebSocket frames, so the hub can write one shared frame to many
  sessions (``core.fanout``) exactly as it does for native connections.
* Long-polling: a :class:`PollingSink`, a byte buffer with the same ``write`` /
  ``get_write_buffer_size`` / ``is_closing`` surface. Every packet written to it
  ends with the ``"\\x1e"`` separator, so the next GET answers with the buffer minus
  its last byte, whatever mix of hub fan-out and control packets filled it.

Rules of the protocol enforced here (each violation closes the session, as the
reference server does): one GET and one POST in flight per session (the extra
request gets 400); a request cancelled by the client; an invalid packet; a POST
body over ``maxPayload`` (413); no pong within ``pingTimeout`` of a ping; a ping
from the client (v4 heartbeats go server → client). Requests for unknown or
closed sessions get 400. Nothing outlives a closed session: its timers are
cancelled and it leaves the session table at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Protocol

from aiohttp import WSMsgType, web

from fastgw.prepare import POLLING_SEPARATOR
from fastgw.responses import NoResponse
from fastgw.protocol import engineio
from fastgw.protocol.engineio import EngineIOError, PacketType

__all__ = ["EngineOptions", "EngineApp", "EngineServer", "Session", "PollingSink"]

log = logging.getLogger("fastgw.socketio.engine")

#: How often pending long-polling GETs are checked for a client that went away.
ABORT_CHECK_INTERVAL = 0.2
#: Packets per long-polling response at most: python-engineio's client refuses a
#: payload of more (``Payload.max_decode_packets``, 16) and drops the connection.
MAX_POLL_PACKETS = 16
#: Seconds a polling session closed by its client still answers one GET with a noop.
CLIENT_CLOSE_GRACE = 2.0
#: Seconds a closed WebSocket gets to take its close frame before it is aborted.
CLOSE_GRACE = 1.0

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001

_TEXT_PLAIN = "text/plain"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Per-server settings; the defaults are the reference server's."""

    path: str = "/socket.io/"
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    #: Seconds a client may take between the ``2probe`` and the ``5`` of an upgrade.
    upgrade_timeout: float = 10.0
    allow_upgrades: bool = True
    #: Origins allowed for CORS and WebSocket upgrades (``fastgw.security``); None: any.
    allowed_origins: tuple[str, ...] | None = None


class EngineApp(Protocol):
    """The layer above the Engine.IO transport."""

    def admit(self, request: web.Request) -> web.StreamResponse | None:
        """Before a new session: None to accept, or the refusal to send (limits, drain)."""

    def on_open(self, session: "Session") -> None:
        """A session was opened (its handshake is already queued)."""

    async def on_message(self, session: "Session", data: str | bytes) -> None:
        """One ``message`` packet; awaited, so a session's messages are handled in order."""

    def on_upgrade(self, session: "Session", old_sink: "PollingSink") -> None:
        """The session moved from long-polling to WebSocket (``session.sink`` is the new
        transport). What ``old_sink`` still holds is moved over right after this."""

    def on_close(self, session: "Session", reason: str) -> None:
        """The session is closed (called once)."""


class PollingSink:
    """The outgoing buffer of a long-polling session: what the next GET returns.

    Looks like an asyncio transport to the hub (``write``, ``get_write_buffer_size``,
    ``is_closing``), so fan-out treats polling and WebSocket sessions alike.
    """

    __slots__ = ("_chunks", "_size", "_wake", "closed")

    def __init__(self, wake: Callable[[], None]) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._wake = wake
        self.closed = False

    def write(self, data: bytes) -> None:
        """Append packets (each ending with ``"\\x1e"``) and wake a waiting GET."""
        if self.closed:
            raise RuntimeError("polling session closed")  # core.fanout skips it
        self._chunks.append(data)
        self._size += len(data)
        if len(self._chunks) == 1:
            self._wake()

    def get_write_buffer_size(self) -> int:
        return self._size

    def is_closing(self) -> bool:
        return self.closed

    def take(self, max_packets: int = 0) -> bytes | None:
        """What one GET returns: the oldest ``max_packets`` packets buffered (0: all), as
        one payload with separators between packets; None if nothing is buffered."""
        if not self._chunks:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        end = len(data)
        if max_packets and data.count(POLLING_SEPARATOR) > max_packets:
            end = -1
            for _ in range(max_packets):
                end = data.index(POLLING_SEPARATOR, end + 1)
            end += 1
            self._chunks.append(data[end:])  # the rest waits for the next GET
        self._size = len(data) - end
        return data[: end - 1]  # without the last packet's separator


class Session:
    """One Engine.IO session (one client), over long-polling or WebSocket."""

    __slots__ = (
        "sid", "server", "transport", "sink", "remote", "headers", "query", "app_state",
        "closed", "_ping_handle", "_timeout_handle", "_get", "_get_request", "_posting",
        "_probing", "_final",
    )

    def __init__(self, server: "EngineServer", sid: str, request: web.Request) -> None:
        self.sid = sid
        self.server = server
        #: "polling" or "websocket"
        self.transport = "polling"
        #: Where packets are written: a PollingSink, or the WebSocket's asyncio transport.
        self.sink: Any = None
        self.remote = request.remote
        self.headers = request.headers
        self.query = request.query
        #: Whatever the layer above keeps per session (the Socket.IO sockets).
        self.app_state: Any = None
        self.closed = False
        self._ping_handle: asyncio.TimerHandle | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._get: asyncio.Future[None] | None = None  # the GET waiting for data
        self._get_request: web.Request | None = None
        self._posting = False
        self._probing = False  # a WebSocket said 2probe: pending and new GETs get a noop
        self._final = b"1"  # what a GET pending at close time receives

    # --- sending -------------------------------------------------------------

    def send(self, data: str | bytes) -> None:
        """Send one Engine.IO ``message`` (text, or binary data)."""
        if isinstance(data, str):
            self.send_packet("4" + data)
        else:
            self.send_binary(data)

    def send_packet(self, text: str) -> None:
        """Send one encoded text packet (``"2"``, ``"42[…]"``, …)."""
        self.write_packet(text.encode("utf-8"))

    def write_packet(self, packet: bytes) -> None:
        """Send one encoded text packet given as UTF-8 bytes."""
        if self.closed:
            return
        core = self.server.core
        if self.transport == "polling":
            self.sink.write(packet + POLLING_SEPARATOR)
        elif not self.sink.is_closing():
            self.sink.write(core.build_frame(packet, core.OP_TEXT))

    def send_binary(self, data: bytes) -> None:
        if self.closed:
            return
        core = self.server.core
        if self.transport == "polling":
            self.sink.write(b"b" + base64.b64encode(data) + POLLING_SEPARATOR)
        elif not self.sink.is_closing():
            self.sink.write(core.build_frame(bytes(data), core.OP_BINARY))

    # --- heartbeat -------------------------------------------------------------

    def _schedule_ping(self) -> None:
        loop = asyncio.get_running_loop()
        self._ping_handle = loop.call_later(self.server.options.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_handle = None
        if self.closed:
            return
        self.send_packet("2")
        loop = asyncio.get_running_loop()
        self._timeout_handle = loop.call_later(self.server.options.ping_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._timeout_handle = None
        self.close("ping timeout")

    def _pong(self) -> None:
        if self._timeout_handle is None:
            return  # no ping outstanding: nothing to confirm
        self._timeout_handle.cancel()
        self._timeout_handle = None
        self._schedule_ping()

    # --- receiving -------------------------------------------------------------

    async def receive(self, packet: engineio.Packet) -> None:
        """Handle one packet from the client (either transport)."""
        kind = packet.type
        if kind is PacketType.MESSAGE:
            await self.server.app.on_message(self, packet.data if packet.data is not None else "")
        elif kind is PacketType.PONG:
            self._pong()
        elif kind is PacketType.CLOSE:
            self._final = b"6"  # the client asked: its pending GET just ends
            self.close("client close")
        elif kind is PacketType.NOOP:
            pass
        else:  # OPEN, UPGRADE outside an upgrade, PING (v4 heartbeats go server → client)
            self.close(f"unexpected {kind.name.lower()} packet")

    # --- closing ---------------------------------------------------------------

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Close the session now: timers cancelled, a pending GET answered (``"1"``,
        or ``"6"`` when the client closed), the WebSocket closed with ``code``."""
        if self.closed:
            return
        self.closed = True
        for handle in (self._ping_handle, self._timeout_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._timeout_handle = None
        server = self.server
        server.sessions.pop(self.sid, None)
        if self.transport == "polling":
            self._final = self._final_payload()
            self.sink.closed = True
            if self._get is not None and not self._get.done():
                self._get.set_result(None)
            elif self._final == b"6":  # the client closed between two GETs: its next one ends with a noop
                server.remember_client_close(self.sid)
        else:
            transport = self.sink
            if not transport.is_closing():
                transport.write(server.core.build_close_frame(code, ""))
                transport.close()
                asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
        try:
            server.app.on_close(self, reason)
        except Exception:  # the layer above must not keep a dead session alive
            log.exception("on_close of session %s failed", self.sid)

    def _final_payload(self) -> bytes:
        """What a GET pending at close time gets: what was still buffered, then the
        close packet (or the noop that ends a client-requested close)."""
        pending = self.sink.take(MAX_POLL_PACKETS - 1)
        return self._final if pending is None else pending + b"\x1e" + self._final

    def __repr__(self) -> str:
        return f"<Session {self.sid} {self.transport}{' closed' if self.closed else ''}>"


class EngineServer:
    """Engine.IO v4 endpoint at ``options.path``: ``await handle(request)`` from a route."""

    def __init__(self, app: EngineApp, options: EngineOptions, core: ModuleType) -> None:
        self.app = app
        self.options = options
        self.core = core
        self.sessions: dict[str, Session] = {}
        #: ``--workers``: this worker's session-id prefix, and the handing over of
        #: connections whose session another worker owns (``socketio.handoff``).
        self.sid_prefix = ""
        self.handoff: Any = None
        self._waiting_gets: set[Session] = set()
        self._abort_check: asyncio.TimerHandle | None = None
        #: Long-polling sessions the client closed while no GET was waiting: sid → expiry.
        self._client_closed: dict[str, asyncio.TimerHandle] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", self.options.path, self.handle)

    def close_all(self, reason: str = "server shutting down", code: int = CLOSE_GOING_AWAY) -> None:
        for session in list(self.sessions.values()):
            session.close(reason, code)
        for handle in self._client_closed.values():
            handle.cancel()
        self._client_closed.clear()

    def remember_client_close(self, sid: str) -> None:
        """A client closed its polling session (``1`` in a POST) with no GET waiting: as
        the reference server does, its next GET (within ``CLIENT_CLOSE_GRACE``) gets a
        noop instead of 400, so a GET racing the close still ends cleanly."""
        loop = asyncio.get_running_loop()
        self._client_closed[sid] = loop.call_later(CLIENT_CLOSE_GRACE, self._client_closed.pop, sid, None)

    # --- requests ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if query.get("EIO") != str(engineio.PROTOCOL_VERSION):
            return self._error(request, 400, 5, "Unsupported protocol version")
        transport = query.get("transport")
        if transport not in ("polling", "websocket"):
            return self._error(request, 400, 0, "Transport unknown")
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=self._cors(request, preflight=True))
        if not self._origin_allowed(request):
            return self._error(request, 403, 4, "Forbidden")
        sid = query.get("sid")
        if sid is not None and sid not in self.sessions and self.handoff is not None \
                and self.handoff.owns(sid) is False:
            if await self.handoff.hand_over(request, int(sid[:2], 16)):
                return NoResponse()  # the connection is the owner's now
        if transport == "websocket":
            if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
                return self._error(request, 400, 3, "Bad request")
            if sid is None:
                return await self._new_websocket(request)
            return await self._upgrade(request, sid)
        if sid is None:
            if request.method != "GET":
                return self._error(request, 400, 2, "Bad handshake method")
            return self._new_polling(request)
        session = self.sessions.get(sid)
        if session is None:
            closed = self._client_closed.pop(sid, None) if request.method == "GET" else None
            if closed is not None:
                closed.cancel()
                return web.Response(text="6", content_type=_TEXT_PLAIN, charset="UTF-8", headers=self._cors(request))
            return self._error(request, 400, 1, "Session ID unknown")
        if request.method == "GET":
            return await self._poll(request, session)
        if request.method == "POST":
            return await self._post(request, session)
        return self._error(request, 400, 2, "Bad request method")

    def _new_session(self, request: web.Request) -> Session:
        sid = self.sid_prefix + secrets.token_urlsafe(15)[len(self.sid_prefix):]  # 20 characters
        session = Session(self, sid, request)
        self.sessions[sid] = session
        return session

    def _open_packet(self, sid: str, upgrades: list[str]) -> str:
        opts = self.options
        return engineio.open_packet(sid, upgrades, round(opts.ping_interval * 1000),
                                    round(opts.ping_timeout * 1000), opts.max_payload)

    def _new_polling(self, request: web.Request) -> web.StreamResponse:
        refusal = self.app.admit(request)
        if refusal is not None:
            return refusal
        session = self._new_session(request)
        session.sink = PollingSink(lambda: self._wake_get(session))
        upgrades = ["websocket"] if self.options.allow_upgrades else []
        session.send_packet(self._open_packet(session.sid, upgrades))
        session._schedule_ping()
        self.app.on_open(session)
        body = session.sink.take() or b""
        return web.Response(body=body, content_type=_TEXT_PLAIN, charset="UTF-8", headers=self._cors(request))

    async def _new_websocket(self, request: web.Request) -> web.StreamResponse:
        refusal = self.app.admit(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(max_msg_size=self.options.max_payload, compress=False, autoping=True)
        try:
            await ws.prepare(request)
        except ConnectionResetError:  # gone during the handshake
            return NoResponse()
        if request.transport is None:
            return ws
        session = self._new_session(request)
        session.transport = "websocket"
        session.sink = request.transport
        session.send_packet(self._open_packet(session.sid, []))
        session._schedule_ping()
        self.app.on_open(session)
        await self._read_websocket(session, ws)
        return ws

    async def _read_websocket(self, session: Session, ws: web.WebSocketResponse) -> None:
        try:
            async for msg in ws:
                if session.closed:
                    break
                if msg.type is WSMsgType.TEXT:
                    data: str | bytes = msg.data
                elif msg.type is WSMsgType.BINARY:
                    data = msg.data
                else:  # ERROR: oversized (1009) or malformed frame; aiohttp closed it
                    break
                try:
                    packet = engineio.decode_packet(data)
                except EngineIOError as exc:
                    session.close(f"parse error: {exc}", 1002)
                    break
                await session.receive(packet)
        finally:
            session.close("transport close")

    # --- long-polling --------------------------------------------------------------

    def _wake_get(self, session: Session) -> None:
        get = session._get
        if get is not None and not get.done():
            get.set_result(None)

    async def _poll(self, request: web.Request, session: Session) -> web.StreamResponse:
        headers = self._cors(request)
        if session.transport != "polling":
            return self._error(request, 400, 3, "Bad request")  # upgraded: ignored, session lives on
        if session._get is not None:
            previous = session._get_request
            session.close("duplicate GET" if _alive(previous) else "polling request cancelled")
            return self._error(request, 400, 3, "Bad request")
        if session._probing:
            return web.Response(text="6", content_type=_TEXT_PLAIN, charset="UTF-8", headers=headers)
        body = session.sink.take(MAX_POLL_PACKETS)
        if body is None:
            session._get = asyncio.get_running_loop().create_future()
            session._get_request = request
            self._waiting_gets.add(session)
            self._watch_gets()
            try:
                await session._get
            finally:
                session._get = None
                session._get_request = None
                self._waiting_gets.discard(session)
            if session.closed:
                body = session._final
            elif session._probing or session.transport != "polling":  # upgrading, or upgraded meanwhile
                body = b"6"
            else:
                body = session.sink.take(MAX_POLL_PACKETS) or b"6"
        return web.Response(body=body, content_type=_TEXT_PLAIN, charset="UTF-8", headers=headers)

    def _watch_gets(self) -> None:
        """Check the waiting GETs now and then: a client that cancelled one has left,
        and the protocol closes its session (aiohttp does not cancel the handler)."""
        if self._abort_check is None and self._waiting_gets:
            loop = asyncio.get_running_loop()
            self._abort_check = loop.call_later(ABORT_CHECK_INTERVAL, self._check_gets)

    def _check_gets(self) -> None:
        self._abort_check = None
        for session in list(self._waiting_gets):
            if not _alive(session._get_request):
                session.close("polling request cancelled")
        self._watch_gets()

    async def _post(self, request: web.Request, session: Session) -> web.StreamResponse:
        if session.transport != "polling":
            return self._error(request, 400, 3, "Bad request")
        if session._posting:
            session.close("duplicate POST")
            return self._error(request, 400, 3, "Bad request")
        limit = self.options.max_payload
        if (request.content_length or 0) > limit:
            session.close("payload too large")
            return self._error(request, 413, 3, "Payload too large")
        session._posting = True
        try:
            body = await request.content.read(limit + 1)
            if len(body) > limit or not request.content.at_eof():
                session.close("payload too large")
                return self._error(request, 413, 3, "Payload too large")
            try:
                packets = engineio.decode_payload(body, limit)
            except EngineIOError as exc:
                session.close(f"parse error: {exc}")
                return self._error(request, 400, 3, "Bad request")
            for packet in packets:
                if session.closed:
                    break
                await session.receive(packet)
        finally:
            session._posting = False
        return web.Response(text="ok", content_type="text/html", headers=self._cors(request))

    # --- upgrade ---------------------------------------------------------------------

    async def _upgrade(self, request: web.Request, sid: str) -> web.StreamResponse:
        session = self.sessions.get(sid)
        if session is None or not self.options.allow_upgrades:
            return self._error(request, 400, 1, "Session ID unknown")
        ws = web.WebSocketResponse(max_msg_size=self.options.max_payload, compress=False, autoping=True)
        try:
            await ws.prepare(request)
        except ConnectionResetError:  # gone during the handshake
            return NoResponse()
        if session.transport != "polling" or session._probing:
            # upgraded or upgrading already: this WebSocket is accepted and closed at once
            # (as the reference server does); the session goes on undisturbed
            await ws.close()
            return ws
        transport = request.transport
        if transport is None:
            return ws
        try:
            upgraded = await asyncio.wait_for(self._probe(session, ws, transport), self.options.upgrade_timeout)
        except asyncio.TimeoutError:
            upgraded = False
        if not upgraded:
            session._probing = False
            if not ws.closed:
                await ws.close()
            return ws
        await self._read_websocket(session, ws)
        return ws

    async def _probe(self, session: Session, ws: web.WebSocketResponse, transport: asyncio.Transport) -> bool:
        """``2probe`` → ``3probe``, then ``5``: True once the session runs on ``ws``."""
        core = self.core
        probed = False
        async for msg in ws:
            if session.closed or msg.type is not WSMsgType.TEXT:
                return False
            if not probed and msg.data == "2probe":
                transport.write(core.build_frame(b"3probe", core.OP_TEXT))
                probed = session._probing = True
                self._wake_get(session)  # a pending GET ends with a noop
            elif probed and msg.data == "5":
                self._switch(session, transport)
                return True
            else:
                return False
        return False

    def _switch(self, session: Session, transport: asyncio.Transport) -> None:
        old = session.sink
        session.transport = "websocket"
        session.sink = transport
        session._probing = False
        self.app.on_upgrade(session, old)  # the app may flush into `old` before it is emptied
        old.closed = True
        self._wake_get(session)
        leftover = old.take()
        if leftover:
            core = self.core
            for record in leftover.split(POLLING_SEPARATOR):
                if record[:1] == b"b":
                    transport.write(core.build_frame(base64.b64decode(record[1:]), core.OP_BINARY))
                else:
                    transport.write(core.build_frame(record, core.OP_TEXT))

    # --- HTTP details --------------------------------------------------------------------

    def _origin_allowed(self, request: web.Request) -> bool:
        from fastgw.security import origin_allowed

        return origin_allowed(request.headers.get("Origin"), self.options.allowed_origins)

    def _cors(self, request: web.Request, *, preflight: bool = False) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not self._origin_allowed(request):
            return {}
        headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                   "Vary": "Origin"}
        if preflight:
            headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "content-type")
        return headers

    def _error(self, request: web.Request, status: int, code: int, message: str) -> web.Response:
        """The reference server's error body: ``{"code":…,"message":…}``."""
        return web.json_response({"code": code, "message": message}, status=status, headers=self._cors(request))


def _alive(request: web.Request | None) -> bool:
    transport = None if request is None else request.transport
    return transport is not None and not transport.is_closing()
