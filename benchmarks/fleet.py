"""WebSocket client fleet for the fan-out benchmarks: many cheap loopback connections.

Runs as its own process (the server under test is another process), on uvloop,
with raw asyncio Protocols: no aiohttp client, no socket.io client library, no
per-message objects. One per-frame loop serves every protocol; only the setup
handshake (before a connection is *ready*) differs, by ``--mode``:

``--mode native`` (default: fastgw's native protocol v1 and the ``peers/_peer.py`` peers)
    the HTTP/1.1 upgrade on ``--path``; the server's first data frame (the
    ``welcome``) triggers one masked ``--subscribe`` text frame; *ready* when a
    data frame containing ``"subscribed"`` arrives.

``--mode socketio`` (Engine.IO v4 / Socket.IO v5 over a WebSocket, no polling)
    the upgrade on ``/socket.io/?EIO=4&transport=websocket`` (default path);
    wait for the Engine.IO open packet ``0{"sid":...}``; send the Socket.IO
    CONNECT ``--connect-packet`` (``40``, or ``40{"token":"<jwt>"}``); wait for
    ``40{...}`` (``44...`` = refused: the connection fails with the server's
    text, not retried); send ``--subscribe`` (default
    ``420["subscribe",{"channel":"route:500-D:UP"}]``); *ready* at the ack
    ``43<id>[...]`` that contains ``"subscribed"``. Engine.IO pings (text
    ``2``) are answered with ``3`` at any time (counted as ``pings``).

After that a connection only counts complete incoming data frames that carry
``channel_message`` (native ``{"type":"channel_message",...}``, Socket.IO
``42["channel_message",{...}]``; header parsed for 2/4/10-byte lengths; server
frames are unmasked; WebSocket pings get a pong, a close frame fails the
connection). Binary frames (``--protocol fastgw.v1.zstd``: zstd channel
messages) and frames with RSV1 set (``--extensions permessage-deflate``:
compressed messages) are counted as channel messages too, without being
decompressed; ``welcome`` and ``subscribed`` stay uncompressed text on such
connections. Several frames in one socket read (a gateway's flush window) are
each counted. Any other data frame after *ready* is counted as ``other``
(reported by ``stats``; it should stay 0).

Controlled over stdin/stdout, one command per line, one reply line each::

    connect N           -> ready <ok> <failed> <seconds> [<first error>]
    expect K [TIMEOUT] [open]
                        -> armed             (immediately), then later
                           done <t_last> <seconds_since_armed>
                           or timeout <reached>/<N> frames=<got>/<wanted> lost=<L>
    retarget K          -> retargeted <reached>/<N>   (only while a round runs:
                           every connection of the round now needs K frames
                           counted since it was armed; a round armed with
                           ``open`` and a huge K for an open-ended publish
                           schedule is closed this way once the controller
                           knows how many it sent; if
                           that completes the round, ``done`` follows with the
                           time of the last counted frame)
    stats               -> stats key=value ...  (frames, rx_bytes, compressed, pings, cpu, ...;
                           first_frame=<a counted payload, 80 chars, \\xNN-escaped>)
    counts              -> counts alive=<n> min=<k> max=<k> total=<k>  (counted frames per live connection)
    quit                -> bye               (closes every connection, exits)

``t_last`` is ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across
processes on the same host) when the last expected frame was parsed, so the
controller can time a round from the moment it fired the first trigger.

Every wait is bounded: connects by ``--connect-timeout``, rounds by the
TIMEOUT argument (default ``--round-timeout``), and the whole process exits
when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the project depends on uvloop
    uvloop = None

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MARKER = b"channel_message"
SUBSCRIBED = b'"subscribed"'
#: per ``--mode``: default request target and subscribe message
DEFAULT_PATH = {"native": "/ws", "socketio": "/socket.io/?EIO=4&transport=websocket"}
DEFAULT_SUBSCRIBE = {
    "native": '{"type":"subscribe","id":"1","channel":"route:500-D:UP"}',
    "socketio": '420["subscribe",{"channel":"route:500-D:UP"}]',
}


def masked_text_frame(payload: bytes) -> bytes:
    """A final, masked client-to-server text frame (RFC 6455 §5.3)."""
    return _masked_frame(payload, 0x1)


def _masked_frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return head + key + body


class Refused(ConnectionError):
    """The server answered the setup with a refusal (Socket.IO ``44``, an error ack): not retried."""


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.conns: list[Client] = []
        self.n_target = 0  # connections taking part in the current round
        self.reached = 0
        self.round_waiter: asyncio.Future | None = None
        self.t_last = 0.0
        self.lost = 0
        self.errors: list[str] = []
        self.total_frames = 0
        self.last_payload_len = 0
        #: head of a counted payload (the last one of the first socket read that counted any)
        self.first_counted = b""
        self.control_frames = 0
        self.other_frames = 0
        #: Engine.IO pings answered (``--mode socketio``)
        self.pings = 0
        #: counted frames that were binary or RSV1 (compressed channel messages)
        self.compressed_frames = 0
        #: bytes read from all sockets (handshakes included; take deltas around rounds)
        self.rx_bytes = 0
        #: monotonic time of the last socket read that completed a counted frame
        self.t_last_counted = 0.0
        self.round_conns: list[Client] = []
        self.round_k = 0
        #: set for rounds armed with ``open``: record t_last_counted (for ``retarget``)
        self.track_last = False
        #: lowercase tokens the 101 response must contain (offered subprotocol/extension)
        self.must_negotiate = [x.lower().encode() for x in (args.protocol, args.extensions.split(";")[0]) if x]
        #: the connection class of ``--mode``; the Socket.IO CONNECT frame it sends (socketio)
        self.client_class = CLIENTS[args.mode]
        self.connect_frame = masked_text_frame(args.connect_packet.encode())

    def note_reached(self) -> None:
        self.reached += 1
        if self.reached >= self.n_target:
            self.t_last = time.monotonic()
            w = self.round_waiter
            if w is not None and not w.done():
                w.set_result(None)


class Client(asyncio.Protocol):
    """One connection; the setup of the native protocol (subclasses: other protocols' setup)."""

    __slots__ = (
        "fleet",
        "transport",
        "buf",
        "upgraded",
        "ready",
        "subscribed_sent",
        "count",
        "target",
        "hit",
        "request",
        "subscribe_frame",
    )

    def __init__(self, fleet: Fleet, request: bytes, subscribe_frame: bytes, ready: asyncio.Future) -> None:
        self.fleet = fleet
        self.transport = None
        self.buf = b""
        self.upgraded = False
        self.ready = ready
        self.subscribed_sent = False
        self.count = 0
        self.target = 1 << 62
        self.hit = True
        self.request = request
        self.subscribe_frame = subscribe_frame

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.upgraded and self.ready.done():
            self.fleet.lost += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost during setup: {exc!r}"))

    def _fail(self, why: str, exc_type: type[ConnectionError] = ConnectionError) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc_type(why))
        if self.transport is not None:
            self.transport.close()

    def other_frame(self, payload: bytes) -> None:
        """A final data frame that is not a channel message: the setup until ready, else ``other``.

        Native: the first one (``welcome``) triggers the subscribe, ready at ``"subscribed"``."""
        if self.ready.done():
            self.fleet.other_frames += 1
        elif not self.subscribed_sent:
            self.subscribed_sent = True
            self.transport.write(self.subscribe_frame)
        elif SUBSCRIBED in payload:
            self.ready.set_result(None)
        else:
            self.fleet.other_frames += 1

    def data_received(self, data: bytes) -> None:
        self.fleet.rx_bytes += len(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self._fail("oversized handshake response")
                else:
                    self.buf = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self._fail("upgrade refused: " + data[:300].decode("latin-1", "replace"))
                return
            for want in self.fleet.must_negotiate:  # offered subprotocol / extension
                if want not in data[:end].lower():
                    self._fail("not negotiated: " + want.decode())
                    return
            self.upgraded = True
            data = data[end + 4 :]
            if not data:
                return
        n = len(data)
        i = 0
        counted = 0
        compressed = 0
        last = last_end = 0  # the last counted payload of this read
        fleet = self.fleet
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
                ln = int.from_bytes(data[i + 2 : i + 10], "big")
                hl = 10
            if b1 & 0x80:  # servers must not mask, but parse it anyway
                hl += 4
            start = i + hl
            end = start + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op >= 8:
                fleet.control_frames += 1
                if op == 0x9 and self.transport is not None:  # ping -> pong
                    self.transport.write(_masked_frame(data[start:end], 0xA))
                elif op == 0x8:
                    self._fail("close frame from server: " + data[start:end][:64].hex())
                    return
            elif b0 & 0x80:  # final data frame
                if b0 & 0x42:  # binary (zstd) or RSV1 (permessage-deflate): a channel message
                    counted += 1
                    compressed += 1
                    last, last_end = start, end
                elif data.find(MARKER, start, end) >= 0:
                    counted += 1
                    last, last_end = start, end
                else:
                    self.other_frame(data[start:end])
                    if self.transport is None or self.transport.is_closing():
                        return  # failed during the setup
            i = end
        if i < n:
            self.buf = data[i:]
        if counted:
            fleet.total_frames += counted
            fleet.last_payload_len = last_end - last
            if not fleet.first_counted:
                fleet.first_counted = data[last:last_end]
            if compressed:
                fleet.compressed_frames += compressed
            if fleet.track_last:
                fleet.t_last_counted = time.monotonic()
            self.count += counted
            if not self.hit and self.count >= self.target:
                self.hit = True
                fleet.note_reached()


class SocketIOClient(Client):
    """Engine.IO v4 / Socket.IO v5 setup: open packet, CONNECT, subscribe event with an ack."""

    __slots__ = ("opened",)

    def __init__(self, fleet: Fleet, request: bytes, subscribe_frame: bytes, ready: asyncio.Future) -> None:
        super().__init__(fleet, request, subscribe_frame, ready)
        self.opened = False

    def other_frame(self, payload: bytes) -> None:
        fleet = self.fleet
        if payload == b"2":  # Engine.IO ping -> pong, at any time
            fleet.pings += 1
            if self.transport is not None:
                self.transport.write(masked_text_frame(b"3"))
        elif self.ready.done():
            fleet.other_frames += 1
        elif not self.opened:
            if payload[:1] != b"0":
                self._fail("expected the Engine.IO open packet, got " + repr(payload[:120]))
                return
            self.opened = True
            self.transport.write(fleet.connect_frame)
        elif not self.subscribed_sent:
            if payload[:2] == b"40":
                self.subscribed_sent = True
                self.transport.write(self.subscribe_frame)
            elif payload[:2] == b"44":
                self._fail("connect refused: " + payload[:200].decode("utf-8", "replace"), Refused)
            else:
                fleet.other_frames += 1
        elif payload[:2] == b"43":  # the subscribe ack
            if SUBSCRIBED in payload:
                self.ready.set_result(None)
            else:
                self._fail("subscribe refused: " + payload[:200].decode("utf-8", "replace"), Refused)
        elif payload[:2] in (b"41", b"44"):
            self._fail("disconnected during setup: " + payload[:200].decode("utf-8", "replace"))
        else:
            fleet.other_frames += 1


CLIENTS: dict[str, type[Client]] = {"native": Client, "socketio": SocketIOClient}


async def connect_all(fleet: Fleet, n: int) -> tuple[int, int, float, str]:
    args = fleet.args
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.concurrency)
    path = args.path
    host_hdr = f"{args.host}:{args.port}"
    subscribe = masked_text_frame(args.subscribe.encode())
    client_class = fleet.client_class
    offer = ""
    if args.protocol:
        offer += f"Sec-WebSocket-Protocol: {args.protocol}\r\n"
    if args.extensions:
        offer += f"Sec-WebSocket-Extensions: {args.extensions}\r\n"
    sources = [s for s in args.sources.split(",") if s] if args.sources else []
    failed = 0
    first_error = ""
    t0 = time.monotonic()
    deadline = t0 + args.connect_timeout

    async def one(idx: int) -> None:
        nonlocal failed, first_error
        async with sem:
            key = base64.b64encode(os.urandom(16)).decode()
            req = (
                f"GET {path} HTTP/1.1\r\nHost: {host_hdr}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
            ).encode()
            last_exc: BaseException | None = None
            for _attempt in range(3):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last_exc = TimeoutError("connect deadline passed")
                    break
                ready = loop.create_future()
                proto_factory = lambda: client_class(fleet, req, subscribe, ready)  # noqa: E731
                transport = None
                try:
                    if sources:
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        sock.bind((sources[idx % len(sources)], 0))
                        sock.setblocking(False)
                        try:
                            await asyncio.wait_for(loop.sock_connect(sock, (args.host, args.port)), remaining)
                        except BaseException:
                            sock.close()
                            raise
                        transport, proto = await loop.create_connection(proto_factory, sock=sock)
                    else:
                        transport, proto = await asyncio.wait_for(
                            loop.create_connection(proto_factory, args.host, args.port), remaining
                        )
                    await asyncio.wait_for(ready, max(0.01, deadline - time.monotonic()))
                    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    fleet.conns.append(proto)
                    return
                except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    last_exc = exc
                    if transport is not None:
                        transport.close()
                    if isinstance(exc, Refused):
                        break  # the server said no: retrying would not change that
                    await asyncio.sleep(0.05)
            failed += 1
            if not first_error:
                first_error = repr(last_exc)[:300]

    await asyncio.gather(*(one(i) for i in range(n)))
    return len(fleet.conns), failed, time.monotonic() - t0, first_error


async def expect(fleet: Fleet, k: int, timeout: float, out, track_last: bool = False) -> None:
    loop = asyncio.get_running_loop()
    conns = [c for c in fleet.conns if c.transport is not None]
    fleet.n_target = len(conns)
    fleet.reached = 0
    fleet.t_last = 0.0
    waiter = loop.create_future()
    fleet.round_waiter = waiter
    base_total = fleet.total_frames
    for c in conns:
        c.target = c.count + k
        c.hit = False
    fleet.round_conns = conns
    fleet.round_k = k
    fleet.t_last_counted = 0.0
    fleet.track_last = track_last
    t_armed = time.monotonic()
    out(f"armed {len(conns)}")
    if not conns:
        waiter.set_result(None)
    try:
        await asyncio.wait_for(waiter, timeout)
        out(f"done {fleet.t_last:.6f} {fleet.t_last - t_armed:.6f}")
    except asyncio.TimeoutError:
        got = fleet.total_frames - base_total
        out(f"timeout {fleet.reached}/{fleet.n_target} frames={got}/{k * fleet.n_target} lost={fleet.lost}")
        for c in conns:  # stop counting this round
            c.hit = True
    finally:
        fleet.round_waiter = None
        fleet.round_conns = []
        fleet.round_k = 0
        fleet.track_last = False


def retarget(fleet: Fleet, k: int) -> str:
    """Change the running round's per-connection goal to ``k`` frames since arming."""
    w = fleet.round_waiter
    if w is None or w.done():
        return "error no round running"
    delta = k - fleet.round_k
    fleet.round_k = k
    reached = 0
    for c in fleet.round_conns:
        c.target += delta
        if c.count >= c.target:
            reached += 1
            c.hit = True
        else:
            c.hit = False
    fleet.reached = reached
    if reached >= fleet.n_target:
        # Everything had already arrived: the round ended at the last counted frame.
        fleet.t_last = fleet.t_last_counted or time.monotonic()
        w.set_result(None)
    return f"retargeted {reached}/{fleet.n_target}"


def raise_nofile_limit() -> None:
    """Soft open-files limit up to the hard one (one fd per connection)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    fleet = Fleet(args)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    round_task: asyncio.Task | None = None
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                break  # controller went away
            parts = raw.decode().split()
            if not parts:
                continue
            cmd = parts[0]
            if cmd == "connect":
                ok, failed, secs, err = await connect_all(fleet, int(parts[1]))
                out(f"ready {ok} {failed} {secs:.3f} {err}".rstrip().replace("\n", " "))
            elif cmd == "expect":
                if round_task is not None and not round_task.done():
                    out("error round already running")
                    continue
                timeout = float(parts[2]) if len(parts) > 2 else args.round_timeout
                round_task = asyncio.ensure_future(
                    expect(fleet, int(parts[1]), timeout, out, track_last="open" in parts[3:])
                )
            elif cmd == "retarget":
                out(retarget(fleet, int(parts[1])))
            elif cmd == "stats":
                alive = sum(1 for c in fleet.conns if c.transport is not None)
                # one token on one line, also for binary (zstd, deflate) payloads
                first = "".join(chr(b) if 0x21 <= b < 0x7F else f"\\x{b:02x}" for b in fleet.first_counted[:80])
                out(
                    f"stats conns={len(fleet.conns)} alive={alive} lost={fleet.lost} "
                    f"frames={fleet.total_frames} payload_len={fleet.last_payload_len} "
                    f"control={fleet.control_frames} other={fleet.other_frames} pings={fleet.pings} "
                    f"cpu={cpu_seconds():.3f} compressed={fleet.compressed_frames} rx_bytes={fleet.rx_bytes} "
                    f"first_frame={first}"
                )
            elif cmd == "counts":
                counts = [c.count for c in fleet.conns if c.transport is not None]
                out(f"counts alive={len(counts)} min={min(counts, default=0)} max={max(counts, default=0)} "
                    f"total={sum(counts)}")
            elif cmd == "quit":
                break
            else:
                out(f"error unknown command {cmd!r}")
    finally:
        if round_task is not None:
            round_task.cancel()
        for c in fleet.conns:
            if c.transport is not None:
                c.transport.abort()
        out("bye")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=tuple(CLIENTS), default="native", help="the protocol's setup handshake")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default=None, help="request target (default: by mode), including any ?token=...")
    p.add_argument("--connect-packet", default="40",
                   help='socketio: the Socket.IO CONNECT sent after the open packet, e.g. 40{"token":"..."}')
    p.add_argument("--subscribe", default=None,
                   help="text sent to subscribe (default: by mode; native: once the welcome arrived)")
    p.add_argument("--concurrency", type=int, default=500, help="handshakes in flight")
    p.add_argument("--protocol", default="", help="Sec-WebSocket-Protocol to offer (must be accepted)")
    p.add_argument("--extensions", default="",
                   help="Sec-WebSocket-Extensions to offer, e.g. permessage-deflate (must be accepted)")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--round-timeout", type=float, default=60.0)
    p.add_argument("--sources", default="", help="comma-separated 127.0.0.x source addresses")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = p.parse_args()
    args.path = args.path or DEFAULT_PATH[args.mode]
    args.subscribe = args.subscribe or DEFAULT_SUBSCRIBE[args.mode]
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    raise_nofile_limit()
    if uvloop is not None:
        uvloop.install()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:  # stopped by the harness: no traceback in the log
        pass


if __name__ == "__main__":
    main()
