"""The gateway's Socket.IO application: the same hub, auth and requests as the native
protocol, spoken as Socket.IO v5 (namespace ``/`` at ``/socket.io/``).

Mapping (docs/protocol.md, "Socket.IO"):

* CONNECT ``{"token": "<JWT>"}`` (or ``Authorization`` / ``?token=`` on the first
  request) → the same JWT check as the native upgrade; a failure is ``CONNECT_ERROR``
  ``{"message": <reason>, "data": {"code": "unauthorized"}}``.
* Each native request is an event of the same name whose argument is the request
  object without ``type``: ``subscribe`` ``{"channel": …}``, ``unsubscribe``,
  ``ack`` ``{"upTo": …}``, ``hello``, ``ping``. The answer (the native reply object)
  is the event's acknowledgement, or, without one, an event named by its ``type``.
* Server messages are events named by their native ``type`` with the native object
  as argument: ``channel_message`` (plus, for messages with a history position, the
  recovery offset as a last string argument), ``queued_message``,
  ``queue_sync_complete``, ``resumed``, ``reconnect`` (drain).
* Connection state recovery: the CONNECT reply carries ``pid`` (the gateway session
  id). A client that reconnects with ``{"pid": …, "offset": …}`` in its auth gets
  the session back (same ``pid``, so ``socket.recovered`` is true), its channels,
  and the messages it missed, from the offset on for the offset's channel and from
  the positions saved at disconnect for the others; then ``resumed`` says whether
  the recovery is complete, exactly as after a native ``resume``.

Fan-out is the hub's: a channel message is prepared once per encoding
(``Wire.SOCKETIO``: one shared WebSocket frame; ``Wire.SOCKETIO_POLLING``: one
shared buffered packet) and written to every subscriber without a task each.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import orjson

from fastgw.auth import AuthError, token_from_request_parts
from fastgw.connection import Connection
from fastgw.prepare import packet_frame, parse_recovery_offset
from fastgw.profiles import Compression, Encoding, UnknownProfile, Wire, get_profile
from fastgw.protocol import native
from fastgw.ratelimit import TokenBucket
from fastgw.socketio.engine import PollingSink, Session
from fastgw.socketio.server import ConnectRefused, Namespace, Socket
from fastgw.stats import CloseReason

if TYPE_CHECKING:
    from fastgw.engines.base import SessionRecord
    from fastgw.server import Gateway

__all__ = ["GatewayNamespace"]

log = logging.getLogger("fastgw.socketio.gateway")

#: Session close reasons (fastgw.socketio.engine/server) → the gateway's close reasons.
_CLOSE_REASONS = {
    "ping timeout": CloseReason.HEARTBEAT_TIMEOUT,
    "payload too large": CloseReason.PROTOCOL,
    "duplicate GET": CloseReason.PROTOCOL,
    "duplicate POST": CloseReason.PROTOCOL,
}


class _Client:
    """What the namespace keeps per socket."""

    __slots__ = ("conn", "record", "offsets", "resuming", "bucket", "strikes", "opened_at")

    def __init__(self, conn: Connection, bucket: TokenBucket) -> None:
        self.conn = conn
        self.record: SessionRecord | None = None
        self.offsets: dict[str, str] = {}
        self.resuming = False
        self.bucket = bucket
        self.strikes = 0
        self.opened_at = 0.0


class GatewayNamespace(Namespace):
    def __init__(self, gateway: "Gateway") -> None:
        super().__init__("/")
        self.gateway = gateway

    # --- connect -------------------------------------------------------------

    async def on_connect(self, socket: Socket, auth: Any) -> str | None:
        gw = self.gateway
        session = socket.session
        if gw.draining:
            raise ConnectRefused("instance is draining", {"code": "draining"})
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token") if isinstance(auth.get("token"), str) else None
        try:
            principal = gw.auth.authenticate(token or token_from_request_parts(session.headers, session.query))
        except AuthError as exc:
            gw.stats.rejected["auth"] += 1
            raise ConnectRefused(exc.reason, {"code": "unauthorized"}) from None
        try:
            profile = get_profile(auth.get("profile") or session.query.get("profile", "full"))
        except UnknownProfile as exc:
            raise ConnectRefused(str(exc), {"code": "bad_request"}) from None
        record = None
        pid = auth.get("pid")
        resuming = isinstance(pid, str) and bool(pid)
        if resuming:
            record = await gw.recovery.take(pid, principal.user_id)
        cfg = gw.config
        conn = gw.new_connection(principal, session.sink, Encoding(profile, Compression.NONE, _wire(session)),
                                 session.query.get("device"), pid if record is not None else None)
        conn.closer = lambda code, reason: session.close(reason, code)
        client = socket.state = _Client(conn, TokenBucket(cfg.client_rate, cfg.client_burst))
        client.record, client.resuming = record, resuming
        position = parse_recovery_offset(auth.get("offset"))
        if position is not None:
            client.offsets = {position[0]: position[1]}
        client.opened_at = gw.register(conn)
        return conn.session_id if gw.config.socketio_recovery else None

    async def on_connected(self, socket: Socket, auth: Any) -> None:
        client: _Client = socket.state
        if client.resuming:
            await self.gateway.recovery.restore(client.conn, client.record, client.offsets)
            client.record = None

    # --- requests --------------------------------------------------------------

    async def on_event(self, socket: Socket, event: str, args: list[Any], ack_id: int | None) -> None:
        gw = self.gateway
        client: _Client = socket.state
        conn = client.conn
        if conn.close_reason is not None:
            return
        reply = conn.send if ack_id is None else _acker(conn, gw.core, ack_id)
        if not client.bucket.take():
            client.strikes += 1
            gw.stats.limited["requests"] += 1
            reply(native.error(None, "rate_limited", f"more than {gw.config.client_rate:g} requests/s"))
            if client.strikes >= gw.config.client_strikes:
                conn.close_reason = CloseReason.FLOOD
                gw.close_connection(conn, 1008, "too many requests")
            return
        body = args[0] if args else {}
        if not isinstance(body, dict):
            reply(native.error(None, "bad_request", "the event's argument must be an object"))
            return
        try:
            cmd = native.parse_command(orjson.dumps({**body, "type": event}).decode())
        except native.ProtocolError as exc:
            reply(native.error(exc.request_id, exc.code, exc.message))
            return
        except TypeError:  # bytes in the argument: not a request
            reply(native.error(None, "bad_request", "binary data is not accepted"))
            return
        await gw.run_command(conn, cmd, reply)

    # --- transport and disconnect -----------------------------------------------

    def on_transport_change(self, socket: Socket, old_sink: PollingSink) -> None:
        conn = socket.state.conn
        encoding = Encoding(conn.encoding.profile, Compression.NONE, Wire.SOCKETIO)
        self.gateway.hub.change_encoding(conn, encoding, conn.window, transport=socket.session.sink)

    def on_disconnect(self, socket: Socket, reason: str) -> None:
        client: _Client | None = socket.state
        if client is None:
            return
        conn = client.conn
        if conn.close_reason is None:
            if reason.startswith(("parse error", "unexpected", "already connected")) or "not joined" in reason:
                conn.close_reason = CloseReason.PROTOCOL
            else:
                conn.close_reason = _CLOSE_REASONS.get(reason, CloseReason.NORMAL)
        gw = self.gateway
        record = gw.unregister(conn, client.opened_at)
        if record is not None and gw.config.socketio_recovery:
            gw.spawn(gw.recovery.save(conn.session_id, record))


def _wire(session: Session) -> Wire:
    return Wire.SOCKETIO_POLLING if session.transport == "polling" else Wire.SOCKETIO


def _acker(conn: Connection, core: Any, ack_id: int) -> Callable[[bytes], bool]:
    """A reply function that answers the client's event ``ack_id`` with a native object."""

    def reply(payload: bytes) -> bool:
        return conn.send_frame(packet_frame(core, conn.encoding, b"43%d[%b]" % (ack_id, payload)))

    return reply
