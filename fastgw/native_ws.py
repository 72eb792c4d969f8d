"""Native WebSocket clients after the upgrade: a small asyncio Protocol, not aiohttp's.

aiohttp accepts the HTTP request (routing, admission, auth and profile checks stay
in ``Gateway._handle_ws``); then the gateway writes the ``101`` itself
(:func:`negotiate`, :func:`switching_protocols`), takes the TCP (or TLS) transport
away from aiohttp's ``RequestHandler`` (:func:`detach`) and installs a
:class:`NativeWebSocket` on it with ``transport.set_protocol``. For the rest of the
connection nothing of aiohttp is left per client: no ``RequestHandler`` and HTTP
parser, no ``WebSocketResponse``, reader or writer, no handler task, no heartbeat
timers. What an idle client costs is its transport, its hub ``Connection`` and this
object (a few slots).

* Outbound frames are unchanged: the hub writes pre-built frames straight to the
  transport (``Connection``, ``fastgw.core``); closes go through
  ``Gateway._close_now``.
* Inbound frames are parsed here (RFC 6455 §5): masked or not, fragmented, with
  interleaved control frames; permessage-deflate messages (RSV1) are inflated. The
  same limits and close codes as aiohttp's reader, which served this before: a
  message of ``max_frame_size`` bytes or more: 1009; malformed: 1002; text that is
  not UTF-8: 1007. Ping: pong with its payload. A client's close frame is answered
  with 1000 and the connection closed.
* Commands run in order, one at a time (``Gateway._handle_command`` is awaited), with
  the per-client token bucket and strikes. There is no task per connection: one is
  started when a command arrives and ends when none is left.
* Heartbeat: one sweep over all native connections of the gateway every
  ``heartbeat / 4`` seconds (at most :data:`MAX_SWEEP_INTERVAL`): a client silent
  for ``heartbeat`` seconds is pinged; if nothing arrives within ``heartbeat / 2``
  after the ping it is closed (``heartbeat_timeout``), as aiohttp's ``heartbeat=``
  did, without a timer handle per connection.
* When the transport is gone (and the command in progress, if any, has finished)
  the connection is unregistered and its session saved for a resume elsewhere
  (``Gateway.native_closed``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import zlib
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, Iterable

from aiohttp import WSCloseCode, web
from aiohttp._websocket.helpers import websocket_mask, ws_ext_gen, ws_ext_parse

from fastgw import logs
from fastgw.protocol import native
from fastgw.ratelimit import TokenBucket
from fastgw.stats import CloseReason

if TYPE_CHECKING:
    from fastgw.connection import Connection
    from fastgw.server import Gateway

__all__ = [
    "Handshake",
    "NativeWebSocket",
    "negotiate",
    "switching_protocols",
    "detach",
    "sweep",
    "sweep_interval",
]

log = logging.getLogger("fastgw.server")

#: RFC 6455 §1.3: appended to the client's key for ``Sec-WebSocket-Accept``.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Seconds the server waits for the client's close frame after sending its own (aiohttp's default).
CLOSE_TIMEOUT = 10.0
#: Longest interval between two heartbeat sweeps, seconds.
MAX_SWEEP_INTERVAL = 2.0
#: Bytes of commands queued behind the one running before the socket stops being read.
PENDING_LIMIT = 128 * 1024

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_KNOWN_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
_ALLOWED_CLOSE_CODES = frozenset(int(code) for code in WSCloseCode)
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
PING_FRAME = b"\x89\x00"

# What waits in a connection's queue: (kind, value)
_TEXT = 1  # value: str
_BINARY = 2  # value: bytes
_CLOSE = 3  # the client's close frame
_FAIL = 4  # value: close code (malformed input)

# States
_OPEN = 0
_CLOSING = 1  # our close frame sent, waiting for the client's
_DONE = 2  # nothing more is read


class ProtocolError(Exception):
    """The client broke the protocol: close with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- handshake


class Handshake:
    """The negotiated upgrade: the ``101`` response and what it agreed on."""

    __slots__ = ("response", "protocol", "compress")

    def __init__(self, response: bytes, protocol: str | None, compress: int) -> None:
        self.response = response
        #: The subprotocol chosen (None: none).
        self.protocol = protocol
        #: permessage-deflate window bits agreed (0: no compression).
        self.compress = compress


def negotiate(request: web.BaseRequest, protocols: Iterable[str]) -> Handshake:
    """Check a WebSocket upgrade request and negotiate it as aiohttp's
    ``WebSocketResponse(protocols=..., compress=True)`` does: the first subprotocol
    of the client's that the server knows; permessage-deflate if offered (with
    ``server_no_context_takeover`` if the client asks for it). Raises
    ``HTTPBadRequest`` (400) for a request that is not a valid upgrade."""
    headers = request.headers
    if headers.get("Upgrade", "").lower().strip() != "websocket":
        raise web.HTTPBadRequest(
            text=f'No WebSocket UPGRADE hdr: {headers.get("Upgrade")}\n Can "Upgrade" only to "WebSocket".')
    message = getattr(request, "_message", None)
    upgrade = getattr(message, "upgrade", None)
    if upgrade is None:  # aiohttp's parser did not say: read the header
        upgrade = "upgrade" in (token.strip().lower() for token in headers.get("Connection", "").split(","))
    if not upgrade:
        raise web.HTTPBadRequest(text=f"No CONNECTION upgrade hdr: {headers.get('Connection')}")
    protocol: str | None = None
    if "Sec-WebSocket-Protocol" in headers:
        offered = [proto.strip() for proto in headers["Sec-WebSocket-Protocol"].split(",")]
        protocol = next((proto for proto in offered if proto in protocols), None)
    version = headers.get("Sec-WebSocket-Version", "")
    if version not in ("13", "8", "7"):
        raise web.HTTPBadRequest(text=f"Unsupported version: {version}")
    key = headers.get("Sec-WebSocket-Key")
    try:
        if not key or len(base64.b64decode(key)) != 16:
            raise web.HTTPBadRequest(text=f"Handshake error: {key!r}")
    except binascii.Error:
        raise web.HTTPBadRequest(text=f"Handshake error: {key!r}") from None
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    compress, notakeover = ws_ext_parse(headers.get("Sec-WebSocket-Extensions"), isserver=True)
    extensions = ws_ext_gen(compress=compress, isserver=True, server_notakeover=notakeover) if compress else None
    return Handshake(switching_protocols(accept, protocol, extensions), protocol, compress)


def switching_protocols(accept: str, protocol: str | None, extensions: str | None) -> bytes:
    """The ``101 Switching Protocols`` response."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: upgrade",
             f"Sec-WebSocket-Accept: {accept}"]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def detach(request: web.BaseRequest) -> tuple[Any, bytes, bool] | None:
    """Take ``request``'s connection away from aiohttp (aiohttp 3.14).

    Returns ``(transport, bytes_read_after_the_request, reading_was_paused)``, or None
    if the client has already gone. Afterwards aiohttp holds nothing of the
    connection: its ``RequestHandler`` is told the connection was lost (with its
    transport unset first, so that it closes nothing): it leaves the server's
    connection list when its task ends, which is as soon as the web handler returns
    (return ``NoResponse``: nothing is written), and its keep-alive timer is cancelled.
    The caller must install its own protocol on the transport before it returns to the
    event loop.
    """
    handler = request.protocol
    transport = handler.transport
    if transport is None or transport.is_closing():
        return None
    tail = bytes(getattr(handler, "_message_tail", b"") or b"")
    if tail:
        handler._message_tail = b""
    paused = bool(getattr(handler, "_reading_paused", False) or getattr(handler, "_buffer_paused", False))
    handler.transport = None  # connection_lost below would close it
    handler.connection_lost(None)
    return transport, tail, paused


# --------------------------------------------------------------------------- the connection


class NativeWebSocket(asyncio.Protocol):
    """One native client's WebSocket after the handshake."""

    __slots__ = (
        "gateway",
        "conn",
        "transport",
        "opened_at",
        "last_rx",
        "ping_at",
        "closing_at",
        "_state",
        "_lost",
        "_max_size",
        "_compress",
        "_buf",
        "_frag",
        "_frag_op",
        "_frag_compressed",
        "_inflater",
        "_pending",
        "_pending_size",
        "_paused",
        "_task",
        "_bucket",
        "_strikes",
    )

    def __init__(self, gateway: "Gateway", conn: "Connection", transport: Any, *, compress: bool,
                 max_size: int) -> None:
        self.gateway = gateway
        self.conn = conn
        self.transport = transport
        self.opened_at = 0.0
        #: monotonic() of the last bytes received; of the unanswered ping (0: none);
        #: of our close frame sent first (0: not closing).
        self.last_rx = monotonic()
        self.ping_at = 0.0
        self.closing_at = 0.0
        self._state = _OPEN
        self._lost = False
        self._max_size = max_size
        self._compress = compress
        #: Bytes of an incomplete frame (None: none).
        self._buf: bytearray | None = None
        #: Fragments of an incomplete message (None: none).
        self._frag: list[bytes] | None = None
        self._frag_op = 0
        self._frag_compressed = False
        self._inflater: Any = None
        self._pending: deque[tuple[int, Any]] | None = None
        self._pending_size = 0
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._bucket: TokenBucket | None = None
        self._strikes = 0

    # --- asyncio.Protocol -------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_rx = monotonic()
        if self._state == _DONE:
            return
        buf = self._buf
        if buf is not None:
            buf += data
            data = buf  # type: ignore[assignment]
        try:
            used = self._parse(data)
        except ProtocolError as exc:
            self._buf = None
            self._fail(exc.code)
            return
        if self._state == _DONE:
            self._buf = None
        elif used == len(data):
            self._buf = None
        elif buf is not None:
            del buf[:used]
        else:
            self._buf = bytearray(memoryview(data)[used:])

    def eof_received(self) -> bool | None:
        return None  # the transport closes

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._state = _DONE
        self._buf = self._frag = self._inflater = None
        if self._task is None:
            self._finish()

    # --- parsing ----------------------------------------------------------

    def _parse(self, data: bytes | bytearray) -> int:
        """Handle every complete frame in ``data``; returns the bytes used."""
        n = len(data)
        pos = 0
        while n - pos >= 2 and self._state != _DONE:
            first = data[pos]
            second = data[pos + 1]
            opcode = first & 0x0F
            fin = first & 0x80
            rsv1 = first & 0x40
            if first & 0x30 or (rsv1 and not self._compress):
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "Received frame with non-zero reserved bits")
            if opcode not in _KNOWN_OPCODES:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, f"Unexpected opcode={opcode!r}")
            length = second & 0x7F
            if opcode > 0x7:
                if not fin:
                    raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "Received fragmented control frame")
                if length > 125:
                    raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "Control frame payload too large")
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                head = 10
            if opcode <= 0x7:
                self._check_data_frame(opcode, fin, rsv1, length)
            masked = second & 0x80
            if masked:
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = bytearray(memoryview(data)[pos + head:end])
            if masked:
                websocket_mask(bytes(data[pos + head - 4:pos + head]), payload)
            pos = end
            if opcode <= 0x7:
                self._data_frame(opcode, fin, rsv1, payload)
            else:
                self._control_frame(opcode, payload)
        return pos

    def _check_data_frame(self, opcode: int, fin: int, rsv1: int, length: int) -> None:
        frag = self._frag
        if frag is None:
            if opcode == OP_CONTINUATION:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "Continuation frame for non started message")
            partial = 0
        else:
            if opcode != OP_CONTINUATION:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR,
                                    f"The opcode in non-fin frame is expected to be zero, got {opcode!r}")
            if rsv1:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "Received frame with non-zero reserved bits")
            partial = sum(map(len, frag))
        limit = self._max_size
        if limit and length >= limit - partial:
            raise ProtocolError(WSCloseCode.MESSAGE_TOO_BIG, f"Message size {length + partial} exceeds limit {limit}")

    def _data_frame(self, opcode: int, fin: int, rsv1: int, payload: bytearray) -> None:
        if self._state != _OPEN:
            return  # closing: data is not read any more
        frag = self._frag
        if not fin:
            if frag is None:
                self._frag = [bytes(payload)]
                self._frag_op = opcode
                self._frag_compressed = bool(rsv1)
            else:
                frag.append(bytes(payload))
            return
        compressed = bool(rsv1)
        if frag is not None:
            frag.append(bytes(payload))
            message: bytes | bytearray = b"".join(frag)
            opcode, compressed = self._frag_op, self._frag_compressed
            self._frag = None
        else:
            message = payload
        if compressed:
            message = self._inflate(message)
        if opcode == OP_TEXT:
            try:
                text = message.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(WSCloseCode.INVALID_TEXT, "Invalid UTF-8 text message") from None
            self._queue(_TEXT, text, len(message))
        else:
            self._queue(_BINARY, bytes(message), len(message))

    def _inflate(self, data: bytes | bytearray) -> bytes:
        inflater = self._inflater
        if inflater is None:  # kept: the client may compress with context takeover
            inflater = self._inflater = zlib.decompressobj(-15)
        limit = self._max_size
        try:
            out = inflater.decompress(bytes(data) + _DEFLATE_TAIL, limit + 1 if limit else 0)
        except zlib.error:  # aiohttp's generic path for reader errors closed with 1000: kept
            raise ProtocolError(WSCloseCode.OK, "Invalid compressed message") from None
        if limit and len(out) > limit:
            raise ProtocolError(WSCloseCode.MESSAGE_TOO_BIG, f"Decompressed message exceeds size limit {limit}")
        return out

    def _control_frame(self, opcode: int, payload: bytearray) -> None:
        if opcode == OP_PING:
            if self._state == _OPEN:
                self._write(self.gateway.core.build_frame(bytes(payload), OP_PONG))
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                code = (payload[0] << 8) | payload[1]
                if code < 3000 and code not in _ALLOWED_CLOSE_CODES:
                    raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, f"Invalid close code: {code}")
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(WSCloseCode.INVALID_TEXT, "Invalid UTF-8 text message") from None
            elif payload:
                raise ProtocolError(WSCloseCode.PROTOCOL_ERROR, "Invalid close frame")
            if self._state == _CLOSING:  # the answer to ours
                self._state = _DONE
                self.transport.close()
                return
            self._state = _DONE  # nothing after a close frame is read
            self._queue(_CLOSE, None, 0)
        # OP_PONG: receiving anything counts for the heartbeat

    # --- in order: commands, then the close ---------------------------------

    def _queue(self, kind: int, value: Any, size: int) -> None:
        pending = self._pending
        if pending is None:
            if self._task is None and kind >= _CLOSE:  # nothing ahead of it: now
                self._control(kind, value)
                return
            pending = self._pending = deque()
        pending.append((kind, value))
        self._pending_size += size + 128
        if self._pending_size > PENDING_LIMIT and not self._paused and not self._lost:
            self._paused = True
            self.transport.pause_reading()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _fail(self, code: int) -> None:
        """Malformed input: nothing more is read; close with ``code`` after the commands queued before it."""
        if self._state == _CLOSING:  # garbage instead of the close answer
            self._state = _DONE
            self.transport.close()
            return
        self._state = _DONE
        self._queue(_FAIL, code, 0)

    def _control(self, kind: int, value: Any) -> None:
        transport = self.transport
        if kind == _CLOSE:  # answered, then closed (aiohttp: autoclose)
            code = WSCloseCode.OK
        else:  # _FAIL: aiohttp sent the close frame and closed without waiting
            code = value
            if self.conn.close_reason is None:
                self.conn.close_reason = CloseReason.PROTOCOL
        if not transport.is_closing():
            self._write(self.gateway.core.build_close_frame(code, ""))
            transport.close()
            self.closing_at = monotonic()  # aborted by the sweep if it never flushes

    async def _run(self) -> None:
        """Work through the queue: one command at a time, as the client sent them."""
        gateway, conn = self.gateway, self.conn
        pending = self._pending
        try:
            while pending:
                kind, value = pending.popleft()
                if self._paused and len(pending) < 8:
                    self._paused = False
                    self._pending_size = 0
                    if not self._lost:
                        self.transport.resume_reading()
                if kind >= _CLOSE:
                    self._control(kind, value)
                    continue
                if conn.close_reason is not None or self._state == _CLOSING:
                    continue
                if kind == _BINARY:
                    text, close_code, reason = gateway._binary_command(conn, value)
                    if text is None:
                        conn.close_reason = CloseReason.PROTOCOL
                        self.close_handshake(close_code, reason)
                        continue
                    value = text
                await self._command(value)
        except Exception:  # noqa: BLE001 - as aiohttp did: log it, and the connection ends
            log.exception("native command failed", extra=logs.connection_fields(conn))
            self._state = _DONE
            if not self.transport.is_closing():
                self.transport.close()
                self.closing_at = monotonic()
        finally:
            self._pending = None
            self._pending_size = 0
            self._task = None
            if self._lost:
                self._finish()

    async def _command(self, text: str) -> None:
        gateway, conn = self.gateway, self.conn
        cfg = gateway.config
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(cfg.client_rate, cfg.client_burst)
        if bucket.take():
            await gateway._handle_command(conn, text)
            return
        self._strikes += 1
        gateway.stats.limited["requests"] += 1
        conn.send(native.error(None, "rate_limited", f"more than {cfg.client_rate:g} requests/s"))
        if self._strikes >= cfg.client_strikes:
            conn.close_reason = CloseReason.FLOOD
            self.close_handshake(WSCloseCode.POLICY_VIOLATION, "too many requests")

    # --- closing ----------------------------------------------------------

    def close_handshake(self, code: int, reason: str) -> None:
        """Send a close frame and wait (at most ``CLOSE_TIMEOUT``, see :func:`sweep`) for the client's."""
        if self._state != _OPEN or self.transport.is_closing():
            return
        self._write(self.gateway.core.build_close_frame(code, reason))
        self._state = _CLOSING
        self.closing_at = monotonic()

    def ping(self, now: float) -> None:
        self.ping_at = now
        self._write(PING_FRAME)

    def heartbeat_timeout(self) -> None:
        """No answer to the ping: closed without a close frame (as aiohttp did)."""
        if self.conn.close_reason is None:
            self.conn.close_reason = CloseReason.HEARTBEAT_TIMEOUT
        self._state = _DONE
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a silent peer will not read what is still buffered
        else:
            transport.close()

    def expire(self) -> None:
        """Our close frame has not been answered in ``CLOSE_TIMEOUT`` (closed), or the
        transport we closed has not flushed by then (aborted: the peer does not read)."""
        transport = self.transport
        if self._state == _CLOSING and not transport.get_write_buffer_size():
            self._state = _DONE
            self.closing_at = monotonic()
            transport.close()
        else:
            self._state = _DONE
            transport.abort()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        try:
            transport.write(data)
        except RuntimeError:  # closed under us
            pass

    def _finish(self) -> None:
        """The transport is gone and no command runs: count the connection out."""
        self.gateway.native_closed(self)

    def abandon(self) -> None:
        """Gateway stop: the command in progress will not finish in time."""
        task = self._task
        if task is not None:
            task.cancel()

    def __repr__(self) -> str:
        return f"<NativeWebSocket {self.conn.session_id} state={self._state} lost={self._lost}>"


# --------------------------------------------------------------------------- heartbeat


def sweep_interval(heartbeat: float) -> float:
    """Seconds between heartbeat sweeps."""
    return max(0.01, min(heartbeat / 4.0, MAX_SWEEP_INTERVAL))


def sweep(protocols: Iterable[NativeWebSocket], now: float, heartbeat: float) -> int:
    """One pass over the native connections: ping the silent ones, close those that did
    not answer the ping in ``heartbeat / 2`` seconds, and those that did not answer our
    close frame in ``CLOSE_TIMEOUT`` (or whose closed transport did not flush by then:
    aborted). Returns how many were closed."""
    idle_before = now - heartbeat
    ping_before = now - heartbeat / 2.0
    close_before = now - CLOSE_TIMEOUT
    dead: list[NativeWebSocket] = []
    expired: list[NativeWebSocket] = []
    for p in protocols:
        if p._state != _OPEN:
            if p.closing_at and p.closing_at < close_before and not p._lost:
                expired.append(p)
            continue
        ping_at = p.ping_at
        if ping_at:
            if p.last_rx >= ping_at:
                p.ping_at = 0.0  # answered (anything received counts)
            elif ping_at < ping_before:
                dead.append(p)
                continue
            else:
                continue
        if p.last_rx <= idle_before and not p.transport.is_closing():
            p.ping(now)
    for p in dead:
        p.heartbeat_timeout()
    for p in expired:
        p.expire()
    return len(dead) + len(expired)
