"""The client-process engine of ``fastgw loadtest``: ``python -m fastgw.loadtest.client``.

One process holds up to ~15,000 WebSocket clients (one file descriptor each) on uvloop,
each a raw :class:`asyncio.Protocol` (no aiohttp client, no per-message objects): the
HTTP/1.1 upgrade, then frame headers parsed by hand (2/4/10-byte lengths; server frames
are unmasked), client frames masked as RFC 6455 requires.

Protocols (``protocol`` in the configuration):

``native``    ``GET /ws?token=...&profile=...``; after ``welcome``, one ``subscribe`` per
              channel (sent together); ready when every ``subscribed`` arrived.
``socketio``  ``GET /socket.io/?EIO=4&transport=websocket&profile=...``; the Engine.IO open
              packet ``0{...}`` → ``40{"token":...}`` (or ``40``) → ``40{...}``; then
              ``42<id>["subscribe",{"channel":...}]`` per channel, ready when every ack
              ``43<id>[{"type":"subscribed",...}]`` arrived (``44``: refused).

Heartbeats are answered at any time: a WebSocket ping with a pong carrying its payload,
an Engine.IO ``2`` with ``3``. A ``queue_sync_complete`` (the end of an offline-queue replay)
is acknowledged with ``{"type":"ack","upTo":n}``, as the apps do.

Deliveries: the load test's publisher puts ``"lt_ch":<channel index>,"seq":<n>,"sent_ns":<t>``
into every message it publishes (``fastgw.loadtest.controller``); a data frame is
searched for ``"lt_ch":`` (every occurrence: a ``slow`` client's ``batched_messages``
frame holds several) and the three integers are sliced out, never a JSON parse.
Latency = ``time.time_ns()`` at the socket read − ``sent_ns`` (CLOCK_REALTIME, shared by
the processes of one host). Per connection and channel the last ``seq`` and the count
received give gaps, out-of-order arrivals and, at the end, what never arrived.

Control: one JSON object per line on stdin, events as JSON lines on stdout.

* first line: the configuration (see :func:`main` and ``controller.client_config``)
* ``{"cmd":"connect"}`` → ``{"ev":"connected",...}`` when every client is ready or failed
* ``{"cmd":"mark","t0_ns":T,"base":{ch: seq}}`` → ``{"ev":"marked"}``: measuring starts
* ``{"cmd":"storm","t0_ns":T,"drop":bool,"outage_s":O,"deadline_s":D,"base_s":B,"cap_s":C}`` →
  ``{"ev":"storm","dropped":n}``: from now on every client that loses its connection comes
  back like the apps do (``storm`` scenario): it waits until the network is back (O s after
  T: the outage), then a random [0, B] s (or the ``retryAfterMs`` of a drain's ``reconnect``,
  plus that jitter), reconnects, sends ``resume`` with its old ``sessionId``
  and, when the session is not recovered, subscribes again; each failed attempt doubles
  the delay up to C s (a ``Retry-After`` is honoured up to C), until T + D. With ``drop``
  every connection is cut at once first (``transport.abort()``).
* ``{"cmd":"quit"}`` → ``{"ev":"bye"}``; every connection is closed and the process exits

and, every ``tick`` seconds, ``{"ev":"tick",...}`` with the running counts. The process
also exits when stdin closes (the controller went away). Every wait is bounded: each
connection attempt by ``attempt_timeout``, the connect phase by ``connect_deadline``,
attempts per client by ``retries``.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import random
import resource
import socket
import time
from collections import Counter
from typing import Any, Callable

import orjson

from fastgw.loadtest.child import stdio_channel
from fastgw.loadtest.histogram import N_BUCKETS, Histogram, bucket_of

__all__ = ["Engine", "Conn", "SetupFailed", "masked_frame", "MARK", "main"]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: what the publisher puts in front of seq and sent_ns
MARK = b'"lt_ch":'
_SEQ = b',"seq":'
_SENT = b',"sent_ns":'
CHANNEL_MESSAGE = b"channel_message"
SUBSCRIBED = b'"subscribed"'
RESUMED = b'"resumed"'
QUEUED = b'"queued_message"'
QUEUE_SYNC = b'"queue_sync_complete"'
RECONNECT = b'"type":"reconnect"'
#: failures worth another attempt (the server may admit the client a moment later)
RETRYABLE = frozenset({"http_503", "http_429", "timeout", "ECONNRESET", "ECONNREFUSED", "EAGAIN",
                       "closed_during_setup", "EADDRNOTAVAIL", "ETIMEDOUT", "EPIPE"})

# connection states: waiting for the 101, in the protocol's setup, ready (counting), closed
HTTP, SETUP, READY, CLOSED = 0, 1, 2, 3


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client-to-server frame (RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n:
        mask = (key * ((n + 3) // 4))[:n]
        body = (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")
    else:
        body = b""
    return head + key + body


def merge_seqs(into: dict[int, list[int]], more: dict[int, list[int]]) -> None:
    """Per channel ``[last seq, received]`` of ``more`` added to ``into`` (one client's connections)."""
    for ch, (last, got) in more.items():
        st = into.get(ch)
        if st is None:
            into[ch] = [last, got]
        else:
            st[0] = max(st[0], last)
            st[1] += got


class SetupFailed(Exception):
    """A connection attempt failed; ``reason`` is a short category (``http_503``, ``timeout``, ...)."""

    def __init__(self, reason: str, detail: str = "", retry_after: float = 0.0) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, SetupFailed):
        return exc.reason
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, f"errno_{exc.errno}")
    return type(exc).__name__


def _retry_after(head: bytes) -> float:
    for line in head.split(b"\r\n"):
        if line[:12].lower() == b"retry-after:":
            try:
                return float(line[12:].strip())
            except ValueError:
                return 0.0
    return 0.0


def _json_str(payload: bytes, key: bytes, limit: int = 40) -> str:
    """The string value of ``"key":"..."`` in ``payload`` (error codes, ids), or ``""``."""
    i = payload.find(b'"' + key + b'":"')
    if i < 0:
        return ""
    i += len(key) + 4
    j = payload.find(b'"', i)
    return payload[i:j].decode("ascii", "replace")[:limit] if j > i else ""


def _json_int(payload: bytes, key: bytes) -> int | None:
    """The integer value of ``"key":n`` in ``payload``, or None."""
    i = payload.find(b'"' + key + b'":')
    if i < 0:
        return None
    i += len(key) + 3
    j = i
    while j < len(payload) and 48 <= payload[j] <= 57:
        j += 1
    return int(payload[i:j]) if j > i else None


class Conn(asyncio.Protocol):
    """One client connection: the setup of its protocol, then deliveries and heartbeats."""

    __slots__ = ("eng", "spec", "transport", "buf", "state", "pending", "ready", "seqs", "close_code",
                 "request", "step", "phist", "slot", "resume_from", "retry_after_ms")

    def __init__(self, eng: "Engine", spec: list[Any], request: bytes, ready: asyncio.Future,
                 resume_from: str | None = None) -> None:
        self.eng = eng
        self.spec = spec  # [user_id, profile, source, [channel indices]]
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = HTTP
        self.pending = len(spec[3])
        self.ready = ready
        #: channel index -> [last seq, received]; made at the first delivery
        self.seqs: dict[int, list[int]] | None = None
        self.close_code = 0
        self.request = request
        #: setup step. native: 0 waiting for welcome, 1 subscribes sent;
        #: Socket.IO: 0 waiting for the open packet, 1 CONNECT sent, 2 subscribes sent
        self.step = 0
        #: the latency histogram of this connection's wire profile
        self.phist = eng.profile_hist(spec[1])
        #: index in ``eng.conns`` (a reconnected client takes its old place)
        self.slot = -1
        #: native: the sessionId to ``resume`` after the welcome (storm reconnects), else None
        self.resume_from = resume_from
        #: a draining gateway's ``reconnect`` advice, ms (0: none)
        self.retry_after_ms = 0

    def take_over(self, seqs: dict[int, list[int]] | None) -> None:
        """Count what this client received on an earlier connection as received here too."""
        if seqs:
            if self.seqs is None:
                self.seqs = {}
            merge_seqs(self.seqs, seqs)

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: BaseException | None) -> None:
        eng = self.eng
        was = self.state
        self.state = CLOSED
        self.transport = None
        if was == CLOSED:  # failed during the setup: already counted
            return
        if was == READY:
            eng.alive -= 1
            if self.close_code:
                reason = f"close_{self.close_code}"
            elif exc is not None:
                reason = _reason_of(exc)
            else:
                reason = "eof"
            eng.dropped[reason] += 1
            if eng.storm is not None:  # the storm is on: this client comes back
                eng.storm.lost(self)
        elif not self.ready.done():
            code = f" (close {self.close_code})" if self.close_code else ""
            self.ready.set_exception(SetupFailed("closed_during_setup", f"{exc!r}{code}"))

    def fail(self, reason: str, detail: str = "", retry_after: float = 0.0) -> None:
        """The setup failed: the attempt's waiter gets the reason, the connection is dropped."""
        self.state = CLOSED
        self.buf = b""
        if not self.ready.done():
            self.ready.set_exception(SetupFailed(reason, detail, retry_after))
        if self.transport is not None:
            self.transport.abort()

    def _ready(self) -> None:
        if self.ready.done():  # the attempt gave up (timed out): this connection is being dropped
            return
        self.state = READY
        self.eng.alive += 1
        self.ready.set_result(None)

    # --- setup --------------------------------------------------------------

    def setup_frame(self, payload: bytes) -> None:
        """A data frame that is not a delivery, before or after ready."""
        eng = self.eng
        if eng.socketio:
            if payload == b"2":  # Engine.IO ping -> pong, at any time
                eng.pings_eio += 1
                self.transport.write(eng.eio_pong)  # type: ignore[union-attr]
                return
            if self.state == READY:
                eng.other_frames += 1
                return
            head = payload[:2]
            if self.step == 0:
                if payload[:1] != b"0":
                    self.fail("protocol", "expected the Engine.IO open packet: " + repr(payload[:80]))
                    return
                self.step = 1
                self.transport.write(eng.connect_packet(self.spec))  # type: ignore[union-attr]
            elif self.step == 1:
                if head == b"40":
                    self.step = 2
                    if self.pending == 0:
                        self._ready()
                    else:
                        self.transport.write(eng.subscribe_frames(self.spec))  # type: ignore[union-attr]
                elif head == b"44":
                    self.fail("sio_connect_refused", payload[:160].decode("utf-8", "replace"))
                else:
                    eng.other_frames += 1
            elif head == b"43":
                if SUBSCRIBED in payload:
                    self.pending -= 1
                    if self.pending == 0:
                        self._ready()
                else:
                    self.fail("subscribe_error:" + (_json_str(payload, b"code") or "unknown"),
                              payload[:160].decode("utf-8", "replace"))
            elif head in (b"41", b"44"):
                self.fail("sio_disconnected", payload[:160].decode("utf-8", "replace"))
            else:
                eng.other_frames += 1
            return
        # native
        if QUEUE_SYNC in payload:  # the offline queue was replayed: acknowledge it
            up_to = _json_int(payload, b"upTo")
            if up_to is not None and self.transport is not None:
                eng.acks += 1
                self.transport.write(masked_frame(b'{"type":"ack","upTo":%d}' % up_to))
            eng.queue_syncs += 1
            return
        if RECONNECT in payload:  # a draining gateway: when to come back
            self.retry_after_ms = _json_int(payload, b"retryAfterMs") or 0
            eng.reconnect_advice += 1
            return
        if self.state == READY:
            eng.other_frames += 1
        elif self.step == 0:  # the first data frame: welcome
            self.step = 1
            eng.sessions[self.spec[0]] = _json_str(payload, b"sessionId", 64)
            if self.resume_from:
                self.step = 2
                self.transport.write(masked_frame(  # type: ignore[union-attr]
                    b'{"type":"resume","id":"r","sessionId":"%s"}' % self.resume_from.encode()))
            elif self.pending == 0:
                self._ready()
            else:
                self.transport.write(eng.subscribe_frames(self.spec))  # type: ignore[union-attr]
        elif self.step == 2 and RESUMED in payload:
            # every channel restored (recovered or not: what the history no longer holds is
            # gone either way): resubscribed; an unknown session: subscribe again
            restored = payload.count(b'"channel":')
            if restored >= len(self.spec[3]):
                eng.storm_resumed[b'"recovered":true' in payload] += 1
                self._ready()
            else:
                eng.storm_resumed[None] += 1
                self.step = 1
                if self.pending == 0:
                    self._ready()
                else:
                    self.transport.write(eng.subscribe_frames(self.spec))  # type: ignore[union-attr]
        elif SUBSCRIBED in payload:
            self.pending -= 1
            if self.pending == 0:
                self._ready()
        elif b'"error"' in payload:
            self.fail("subscribe_error:" + (_json_str(payload, b"code") or "unknown"),
                      payload[:160].decode("utf-8", "replace"))
        else:
            eng.other_frames += 1

    # --- bytes in -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        eng = self.eng
        eng.rx_bytes += len(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == HTTP:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self.fail("protocol", "oversized upgrade response")
                else:
                    self.buf = data
                return
            status = data[: data.find(b"\r\n")]
            parts = status.split(b" ", 2)
            code = parts[1].decode("latin-1", "replace") if len(parts) > 1 else "?"
            if code != "101":
                self.fail(f"http_{code}", data[:300].decode("latin-1", "replace"), _retry_after(data[:end]))
                return
            self.state = SETUP
            data = data[end + 4:]
            if not data:
                return
        n = len(data)
        i = 0
        now = 0
        while n - i >= 2:
            b0 = data[i]
            b1 = data[i + 1]
            ln = b1 & 0x7F
            if ln < 126:
                hl = 2
            elif ln == 126:
                if n - i < 4:
                    break
                ln = (data[i + 2] << 8) | data[i + 3]
                hl = 4
            else:
                if n - i < 10:
                    break
                ln = int.from_bytes(data[i + 2:i + 10], "big")
                hl = 10
            if b1 & 0x80:  # servers must not mask; parse it anyway
                hl += 4
            start = i + hl
            end = start + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op >= 8:
                if op == 0x9:  # ping -> pong with the same payload
                    eng.pings_ws += 1
                    if self.transport is not None:
                        self.transport.write(masked_frame(data[start:end], 0xA))
                elif op == 0x8:
                    self.close_code = int.from_bytes(data[start:start + 2], "big") if ln >= 2 else 1005
                    if self.state != READY:
                        self.fail("closed_during_setup", f"close {self.close_code}")
                    elif self.transport is not None:
                        self.transport.close()
                    return
            else:
                p = data.find(MARK, start, end)
                if p >= 0:
                    if not now:
                        now = time.time_ns()
                    eng.frame_bytes += end - i
                    if eng.storm is not None and data.find(QUEUED, start, end) >= 0:
                        eng.replayed += 1  # a notification kept while this client was away
                    while p >= 0:
                        p = self.deliver(data, p, end, now)
                elif op == 0x1 and data.find(CHANNEL_MESSAGE, start, end) >= 0 and self.state == READY:
                    eng.foreign += 1  # a channel message the load test did not publish
                    if eng.source is not None:  # a scenario that measures them (bmtc)
                        if not now:
                            now = time.time_ns()
                        eng.source.frame(self, data[start:end], now)
                else:
                    self.setup_frame(data[start:end])
                    if self.state == CLOSED:
                        return
            i = end
        if i < n:
            self.buf = data[i:]

    def deliver(self, data: bytes, p: int, end: int, now: int) -> int:
        """Parse ``"lt_ch":C,"seq":S,"sent_ns":T`` at ``p``; count it; return the next mark or -1."""
        eng = self.eng
        j = p + 8
        k = data.find(b",", j, end)
        if k < 0 or data[k:k + 7] != _SEQ:
            eng.malformed += 1
            return -1
        ch = int(data[j:k])
        j = k + 7
        k = data.find(b",", j, end)
        if k < 0 or data[k:k + 11] != _SENT:
            eng.malformed += 1
            return -1
        seq = int(data[j:k])
        j = k + 11
        k = j
        while k < end and 48 <= data[k] <= 57:
            k += 1
        sent = int(data[j:k])
        if not eng.t0_ns:
            eng.early += 1
            return data.find(MARK, k, end)
        eng.deliveries += 1
        # per connection and channel: gaps, order
        seqs = self.seqs
        if seqs is None:
            seqs = self.seqs = {}
        st = seqs.get(ch)
        if st is None:
            st = seqs[ch] = [eng.base.get(ch, 0), 0]
        last = st[0]
        if seq == last + 1:
            st[0] = seq
        elif seq > last:
            eng.gaps[ch] = eng.gaps.get(ch, 0) + seq - last - 1
            st[0] = seq
        else:
            eng.out_of_order[ch] = eng.out_of_order.get(ch, 0) + 1
        st[1] += 1
        # latency, overall and by the second it was sent in
        us = (now - sent) // 1000
        if us < 0:
            us = 0
        b = bucket_of(us)
        eng.hist[b] += 1
        self.phist[b] += 1
        eng.lat_sum += us
        if us > eng.lat_max:
            eng.lat_max = us
        if us < eng.lat_min:
            eng.lat_min = us
        sec = (sent - eng.t0_ns) // 1_000_000_000
        if sec < 0:
            sec = 0
        key = (sec << 12) | b
        eng.per_second[key] = eng.per_second.get(key, 0) + 1
        # per message: how many got it, when the first and the last did
        mkey = (ch << 32) | seq
        m = eng.messages.get(mkey)
        if m is None:
            eng.messages[mkey] = [1, now, now]
        else:
            m[0] += 1
            m[2] = now
        return data.find(MARK, k, end)


class Engine:
    """All the connections of one client process and what they counted."""

    def __init__(self, cfg: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
        self.cfg = cfg
        self.emit = emit
        self.socketio = cfg["protocol"] == "socketio"
        self.host = cfg["host"]
        self.port = int(cfg["port"])
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.channels: list[str] = cfg["channels"]
        self.clients: list[list[Any]] = cfg["clients"]
        self.secret: str | None = cfg.get("secret")
        self.token_ttl = int(cfg.get("token_ttl", 86400))
        self.eio_pong = masked_frame(b"3")
        self.conns: list[Conn] = []
        self._sub_frames: dict[tuple[int, ...], bytes] = {}
        # connect phase
        self.attempts = 0
        self.connected = 0
        self.failed = 0
        self.attempt_failures: Counter[str] = Counter()
        self.final_failures: Counter[str] = Counter()
        self.failure_examples: dict[str, str] = {}
        self.connect_hist = Histogram()
        self.connect_first_ns = 0
        self.connect_last_ns = 0
        # running
        self.alive = 0
        self.dropped: Counter[str] = Counter()
        self.pings_ws = 0
        self.pings_eio = 0
        self.rx_bytes = 0
        self.rx_at_mark = 0
        self.frame_bytes = 0
        self.other_frames = 0
        self.foreign = 0
        self.malformed = 0
        self.early = 0
        # measuring (after mark)
        self.t0_ns = 0
        self.base: dict[int, int] = {}
        self.deliveries = 0
        self.hist = [0] * N_BUCKETS
        self.hist_by_profile: dict[str, list[int]] = {}
        self.lat_sum = 0
        self.lat_max = 0
        self.lat_min = 1 << 62
        self.per_second: dict[int, int] = {}
        self.messages: dict[int, list[int]] = {}
        self.gaps: dict[int, int] = {}
        self.out_of_order: dict[int, int] = {}
        #: user id -> per channel [last seq, received] of connection attempts given up after
        #: messages had arrived (a replay, then a timeout): merged into its next connection
        self.orphans: dict[str, dict[int, list[int]]] = {}
        # storm (``fastgw.loadtest.reconnect``): armed by the ``storm`` command
        self.storm: Any = None
        #: user id -> sessionId of its latest welcome (to ``resume``)
        self.sessions: dict[str, str] = {}
        self.storm_resumed: Counter[bool | None] = Counter()  # recovered True / False; None: unknown session
        self.replayed = 0
        self.acks = 0
        self.queue_syncs = 0
        self.reconnect_advice = 0
        #: the scenario's counter of channel messages it did not publish itself, or None:
        #: ``cfg["source_module"]`` names a module with ``SourceCounter(engine)`` (``frame(conn,
        #: payload, now_ns)``, ``tick() -> dict`` merged into the ticks, ``report() -> dict``),
        #: e.g. ``fastgw.loadtest.bmtc``
        self.source: Any = None
        if cfg.get("source_module"):
            import importlib

            self.source = importlib.import_module(cfg["source_module"]).SourceCounter(self)

    def profile_hist(self, profile: str) -> list[int]:
        h = self.hist_by_profile.get(profile)
        if h is None:
            h = self.hist_by_profile[profile] = [0] * N_BUCKETS
        return h

    # --- frames -------------------------------------------------------------

    def token(self, user_id: str) -> str | None:
        if not self.secret:
            return None
        from fastgw.auth import mint_token

        return mint_token(user_id, secret=self.secret, ttl=self.token_ttl)

    def request(self, spec: list[Any], token: str | None) -> bytes:
        query = []
        if self.socketio:
            path = "/socket.io/?EIO=4&transport=websocket"
        else:
            path = "/ws"
            if token:
                query.append("token=" + token)
        if spec[1] != "full":
            query.append("profile=" + spec[1])
        if query:
            path += ("&" if "?" in path else "?") + "&".join(query)
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET {path} HTTP/1.1\r\nHost: {self.cfg['host_header']}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()

    def connect_packet(self, spec: list[Any]) -> bytes:
        token = spec[4] if len(spec) > 4 else None
        return masked_frame(b"40" + orjson.dumps({"token": token}) if token else b"40")

    def subscribe_frames(self, spec: list[Any]) -> bytes:
        chans = tuple(spec[3])
        frames = []
        for i, ch in enumerate(chans, 1):
            name = self.channels[ch]
            if self.socketio:
                payload = b"42" + str(i).encode() + orjson.dumps(["subscribe", {"channel": name}])
            else:
                payload = orjson.dumps({"type": "subscribe", "id": str(ch), "channel": name})
            frames.append(masked_frame(payload))
        return b"".join(frames)

    # --- connect phase --------------------------------------------------------

    async def open(self, spec: list[Any], timeout: float, resume_from: str | None = None) -> Conn:
        """One connection for ``spec``, ready (welcome, subscribed or resumed) within ``timeout``
        seconds; raises (``SetupFailed``, ``OSError``, ``TimeoutError``) otherwise."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            source = spec[2]
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), timeout)
        except BaseException:
            sock.close()
            raise
        ready = loop.create_future()
        req = self.request(spec, None if self.socketio else (spec[4] if len(spec) > 4 else None))
        try:
            transport, conn = await loop.create_connection(lambda: Conn(self, spec, req, ready, resume_from),
                                                           sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            await asyncio.wait_for(ready, max(0.01, timeout - (time.monotonic() - t0)))
        except BaseException:
            transport.abort()
            if conn.seqs:  # it got messages before it was given up: they count for the client
                merge_seqs(self.orphans.setdefault(spec[0], {}), conn.seqs)
            raise
        conn.request = b""
        conn.take_over(self.orphans.pop(spec[0], None))
        return conn

    async def connect_all(self) -> None:
        cfg = self.cfg
        n = len(self.clients)
        concurrency = max(1, min(int(cfg.get("concurrency", 200)), n or 1))
        rate = float(cfg.get("connect_rate", 0) or 0)
        retries = int(cfg.get("retries", 2))
        attempt_timeout = float(cfg.get("attempt_timeout", 20.0))
        deadline = time.monotonic() + float(cfg.get("connect_deadline", 300.0))
        t_start = time.monotonic()
        self.connect_first_ns = time.time_ns()
        next_index = iter(range(n))
        started = 0

        async def attempt(spec: list[Any]) -> None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SetupFailed("deadline", "the connect phase deadline passed")
            t0 = time.monotonic()
            conn = await self.open(spec, min(attempt_timeout, remaining))
            conn.slot = len(self.conns)
            self.conns.append(conn)
            self.connect_hist.add(int((time.monotonic() - t0) * 1e6))

        async def worker() -> None:
            nonlocal started
            for idx in next_index:
                spec = self.clients[idx]
                if self.secret and len(spec) < 5:
                    spec.append(self.token(spec[0]))
                if rate > 0:  # pace first attempts: the i-th starts at t_start + i / rate
                    delay = t_start + started / rate - time.monotonic()
                    started += 1
                    if delay > 0:
                        await asyncio.sleep(delay)
                last: BaseException | None = None
                for n_try in range(retries + 1):
                    self.attempts += 1
                    try:
                        await attempt(spec)
                        self.connected += 1
                        self.connect_last_ns = time.time_ns()
                        last = None
                        break
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - every failure is counted by reason
                        last = exc
                        reason = _reason_of(exc)
                        self.attempt_failures[reason] += 1
                        if reason not in self.failure_examples:
                            self.failure_examples[reason] = str(exc)[:300]
                        if reason not in RETRYABLE or n_try == retries or time.monotonic() >= deadline:
                            break
                        ra = exc.retry_after if isinstance(exc, SetupFailed) else 0.0
                        backoff = max(min(ra, 5.0), 0.1 * 2 ** n_try) * (0.5 + random.random())
                        await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                if last is not None:
                    self.failed += 1
                    self.final_failures[_reason_of(last)] += 1
                if len(spec) > 4 and not self.cfg.get("keep_tokens"):
                    spec.pop()  # the token is not needed any more (the storm keeps it to reconnect)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        self.emit({"ev": "connected", "ok": self.connected, "failed": self.failed,
                   "seconds": round(time.monotonic() - t_start, 3)})

    # --- measuring ------------------------------------------------------------

    def mark(self, t0_ns: int, base: dict[str, int]) -> None:
        self.t0_ns = int(t0_ns)
        self.base = {int(k): int(v) for k, v in base.items()}
        self.rx_at_mark = self.rx_bytes
        self.frame_bytes = 0

    def tick(self) -> dict[str, Any]:
        return {"ev": "tick", "attempts": self.attempts, "connected": self.connected, "failed": self.failed,
                "alive": self.alive, "deliveries": self.deliveries, "pings": self.pings_ws + self.pings_eio,
                "dropped": sum(self.dropped.values()),
                **(self.storm.tick() if self.storm is not None else {}),
                **(self.source.tick() if self.source is not None else {})}

    def report(self, last_seq: dict[str, int], void: dict[str, int]) -> dict[str, Any]:
        """Everything counted; ``last_seq``/``void``: per channel, the publisher's last seq and the
        seqs it could not confirm (failed POSTs), so what never arrived can be counted."""
        last = {int(k): int(v) for k, v in last_seq.items()}
        voids = {int(k): int(v) for k, v in void.items()}
        received: dict[int, int] = {}
        missing_alive: dict[int, int] = {}
        missing_dropped: dict[int, int] = {}
        subs: dict[int, int] = {}
        for conn in self.conns:
            seqs = conn.seqs or {}
            for ch in conn.spec[3]:
                subs[ch] = subs.get(ch, 0) + 1
                st = seqs.get(ch)
                got = st[1] if st else 0
                received[ch] = received.get(ch, 0) + got
                if ch in last:
                    want = last[ch] - self.base.get(ch, 0) - voids.get(ch, 0)
                    miss = max(0, want - got)
                    if miss:
                        target = missing_alive if conn.state == READY else missing_dropped
                        target[ch] = target.get(ch, 0) + miss
        hist = Histogram()
        hist.merge_counts({b: c for b, c in enumerate(self.hist) if c}, self.deliveries, self.lat_sum,
                          self.lat_min if self.deliveries else None, self.lat_max if self.deliveries else None)
        per_second: dict[str, dict[str, int]] = {}
        for key, c in self.per_second.items():
            per_second.setdefault(str(key >> 12), {})[str(key & 0xFFF)] = c
        t = os.times()
        chans = sorted(set(subs) | set(self.gaps) | set(self.out_of_order))
        return {
            "ev": "report", "pid": os.getpid(), "clients": len(self.clients), "attempts": self.attempts,
            "connected": self.connected, "failed": self.failed, "alive": self.alive,
            "dropped": dict(self.dropped), "attempt_failures": dict(self.attempt_failures),
            "final_failures": dict(self.final_failures), "failure_examples": self.failure_examples,
            "connect_us": self.connect_hist.to_dict(), "connect_first_ns": self.connect_first_ns,
            "connect_last_ns": self.connect_last_ns,
            "pings_ws": self.pings_ws, "pings_eio": self.pings_eio,
            "rx_bytes": self.rx_bytes, "rx_bytes_measured": self.rx_bytes - self.rx_at_mark,
            "frame_bytes": self.frame_bytes, "other_frames": self.other_frames, "foreign": self.foreign,
            "malformed": self.malformed, "early": self.early, "deliveries": self.deliveries,
            "latency_us": hist.to_dict(), "per_second": per_second,
            "latency_us_by_profile": {p: {str(b): c for b, c in enumerate(h) if c}
                                      for p, h in self.hist_by_profile.items() if any(h)},
            "messages": [[k >> 32, k & 0xFFFFFFFF, m[0], m[1], m[2]] for k, m in self.messages.items()],
            # per channel: [subscribers connected, received, gaps, out of order, missing (alive), missing (dropped)]
            "channels": {str(ch): [subs.get(ch, 0), received.get(ch, 0), self.gaps.get(ch, 0),
                                   self.out_of_order.get(ch, 0), missing_alive.get(ch, 0),
                                   missing_dropped.get(ch, 0)] for ch in chans},
            "source": self.source.report() if self.source is not None else None,
            "storm": self.storm.report() if self.storm is not None else None,
            "cpu_s": round(t.user + t.system, 3),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }

    def close_all(self) -> None:
        if self.storm is not None:
            self.storm.stop()  # no reconnects while quitting
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()


def raise_nofile_limit() -> int:
    """Soft open-files limit up to the hard one (one descriptor per connection); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def serve(stdin: Any = None) -> None:
    """Read the configuration and commands from stdin; run until ``quit`` or EOF."""
    reader, emit = await stdio_channel(256 * 1024 * 1024, stdin)
    first = await reader.readline()
    if not first:
        return
    eng = Engine(orjson.loads(first), emit)
    interval = float(eng.cfg.get("tick", 0.5))

    async def ticker() -> None:
        while True:
            await asyncio.sleep(interval)
            emit(eng.tick())

    tasks: list[asyncio.Task[Any]] = [asyncio.ensure_future(ticker())]
    emit({"ev": "hello", "pid": os.getpid(), "nofile": raise_nofile_limit(), "clients": len(eng.clients)})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break  # the controller went away
            msg = orjson.loads(line)
            cmd = msg.get("cmd")
            if cmd == "connect":
                tasks.append(asyncio.ensure_future(eng.connect_all()))
            elif cmd == "mark":
                eng.mark(msg["t0_ns"], msg.get("base") or {})
                emit({"ev": "marked"})
            elif cmd == "storm":
                from fastgw.loadtest.reconnect import Storm

                eng.storm = Storm(eng, msg)
                emit({"ev": "storm", "dropped": eng.storm.start(msg.get("drop", False))})
            elif cmd == "report":
                emit(eng.report(msg.get("last_seq") or {}, msg.get("void") or {}))
            elif cmd == "quit":
                break
            else:
                emit({"ev": "error", "message": f"unknown command {cmd!r}"})
    finally:
        for task in tasks:
            task.cancel()
        eng.close_all()
        emit({"ev": "bye"})


def main() -> None:
    raise_nofile_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux
        asyncio.run(serve())
        return
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve())
    except KeyboardInterrupt:  # Ctrl-C in the terminal reaches the whole process group
        pass
    except BrokenPipeError:  # the controller went away while we wrote
        pass


if __name__ == "__main__":
    # run the imported module, not this __main__ copy: fastgw.loadtest.reconnect imports
    # SetupFailed from it, and a second copy of the class would not match in except clauses
    from fastgw.loadtest.client import main as _main

    _main()
