"""Native WebSocket clients on ``fastgw.native_ws`` (aiohttp released after the upgrade),
over real loopback sockets: framing, close codes, heartbeat, deflate, and that nothing
of aiohttp stays alive per connection."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import os
import socket
import struct
import time
import zlib

import aiohttp
import orjson
import pytest
from aiohttp import web

from fastgw import native_ws
from fastgw.profiles import ZSTD_SUBPROTOCOL
from tests.conftest import eventually, token
from tests.rawws import RawWebSocket


def frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    """One client frame, built by hand (``rsv``: the RSV bits, e.g. 0x40)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, bit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def connect(gw, query: str = "", headers: dict[str, str] | None = None) -> RawWebSocket:
    raw = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token()}{query}", headers=headers)
    welcome = await asyncio.to_thread(raw.recv_json)
    assert welcome["type"] == "welcome"
    return raw


def frames_until_eof(raw: RawWebSocket, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    out = []
    try:
        while True:
            opcode, payload, _ = raw.recv_frame(timeout=timeout)
            out.append((opcode, payload))
    except (ConnectionError, OSError):
        return out


async def closed_with(gw, raw: RawWebSocket, data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    raw.sock.sendall(data)
    frames = await asyncio.to_thread(frames_until_eof, raw)
    raw.close()
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    assert len(closes) == 1, frames
    return int.from_bytes(closes[0][:2], "big"), frames


async def all_gone(gw) -> bool:
    return await eventually(lambda: not gw.connections and not gw._native)


# --- close codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,code",
    [
        (frame(b"{}", rsv=0x20), 1002),  # RSV2
        (frame(b"{}", rsv=0x40), 1002),  # RSV1 without permessage-deflate
        (frame(b"{}", opcode=0x0), 1002),  # continuation of nothing
        (frame(b"", opcode=0x3), 1002),  # unknown opcode
        (frame(b"", opcode=0x9, fin=False), 1002),  # fragmented control frame
        (frame(b"x" * 126, opcode=0x9), 1002),  # control frame over 125 bytes
        (frame(struct.pack("!H", 1005), opcode=0x8), 1002),  # close code that may not be sent
        (frame(b"\x03", opcode=0x8), 1002),  # one-byte close payload
        (frame(b'{"a":1}', fin=False) + frame(b"{}"), 1002),  # new message inside a fragmented one
        (frame(b"\xff\xfe"), 1007),  # not UTF-8
        (frame(b'{"a":"\xc3', fin=False) + frame(b'"}', opcode=0x0), 1007),  # split, still not UTF-8
        (frame(struct.pack("!H", 1000) + b"\xff", opcode=0x8), 1007),  # close reason not UTF-8
        (frame(b"x" * 5000), 1009),
        (frame(b"x" * 4096), 1009),  # the limit itself is refused, as aiohttp did
        (frame(b"x" * 3000, fin=False) + frame(b"x" * 1500, opcode=0x0), 1009),  # fragments add up
    ],
    ids=["rsv2", "rsv1", "orphan-continuation", "opcode3", "fragmented-ping", "long-ping", "close-1005",
         "close-1-byte", "interleaved-data", "utf8", "utf8-fragments", "close-reason-utf8", "too-big",
         "exactly-max", "too-big-fragments"],
)
async def test_malformed_input_is_closed_with_its_code(start_gateway, data, code):
    gw = await start_gateway(max_frame_size=4096)
    raw = await connect(gw)
    got, _ = await closed_with(gw, raw, data)
    assert got == code
    assert await all_gone(gw)
    assert gw.stats.connections_closed["protocol_error"] == 1


async def test_oversized_frame_is_refused_from_its_header(start_gateway):
    """1009 as soon as the length is known: the payload is never waited for."""
    gw = await start_gateway(max_frame_size=4096)
    raw = await connect(gw)
    raw.sock.sendall(frame(b"x" * 100_000)[:20])
    code, _ = await closed_with(gw, raw, b"")
    assert code == 1009


async def test_a_frame_just_under_the_limit_is_accepted(start_gateway):
    gw = await start_gateway(max_frame_size=4096)
    raw = await connect(gw)
    body = orjson.dumps({"type": "ping", "id": "p", "pad": "x" * 4000})
    assert len(body) < 4096
    raw.sock.sendall(frame(body))
    reply = await asyncio.to_thread(raw.recv_json)
    assert reply["type"] in ("pong", "error")  # answered, not closed
    raw.close()


# --- framing ----------------------------------------------------------------------------


async def test_ping_is_answered_with_its_payload(gateway):
    raw = await connect(gateway)
    raw.sock.sendall(frame(b"hello", opcode=0x9))
    opcode, payload, _ = await asyncio.to_thread(raw.recv_frame)
    assert (opcode, payload) == (0xA, b"hello")
    raw.sock.sendall(frame(b"", opcode=0xA))  # an unsolicited pong is ignored
    raw.send_json({"type": "ping", "id": "after"})
    assert (await asyncio.to_thread(raw.recv_json))["id"] == "after"
    raw.close()


async def test_fragmented_message_with_a_ping_in_between(gateway):
    raw = await connect(gateway)
    body = orjson.dumps({"type": "ping", "id": "frag"})
    raw.sock.sendall(frame(body[:5], fin=False) + frame(b"zz", opcode=0x9) + frame(body[5:9], opcode=0x0, fin=False)
                     + frame(body[9:], opcode=0x0))
    opcode, payload, _ = await asyncio.to_thread(raw.recv_frame)
    assert (opcode, payload) == (0xA, b"zz")
    assert (await asyncio.to_thread(raw.recv_json))["id"] == "frag"
    raw.close()


async def test_frames_split_across_reads_and_unmasked_frames(gateway):
    raw = await connect(gateway)
    data = frame(orjson.dumps({"type": "ping", "id": "split"})) + frame(orjson.dumps({"type": "ping", "id": "bare"}),
                                                                         mask=False)
    for i in range(len(data)):  # one byte per write
        raw.sock.sendall(data[i:i + 1])
        await asyncio.sleep(0.001)
    assert (await asyncio.to_thread(raw.recv_json))["id"] == "split"
    assert (await asyncio.to_thread(raw.recv_json))["id"] == "bare"
    raw.close()


async def test_commands_sent_together_are_answered_in_order(gateway):
    raw = await connect(gateway)
    ids = [f"r{i}" for i in range(15)]
    raw.sock.sendall(b"".join(frame(orjson.dumps({"type": "ping", "id": i})) for i in ids[:5])
                     + frame(orjson.dumps({"type": "subscribe", "id": "s", "channel": "route:500-D:UP"}))
                     + b"".join(frame(orjson.dumps({"type": "ping", "id": i})) for i in ids[5:]))
    got = [(await asyncio.to_thread(raw.recv_json))["id"] for _ in range(16)]
    assert got == ids[:5] + ["s"] + ids[5:]
    protocol = next(iter(gateway._native))
    assert await eventually(lambda: protocol._task is None and protocol._pending is None)  # no task when idle
    raw.close()


async def test_frames_behind_the_upgrade_request_are_not_lost(gateway):
    """A client that sends its first frame in the same packet as the request."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws?token={token()} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(request + frame(orjson.dumps({"type": "ping", "id": "early"})))
    raw = RawWebSocket.__new__(RawWebSocket)
    raw.sock, raw.buf = sock, b""

    def read():
        while b"\r\n\r\n" not in raw.buf:
            raw.buf += sock.recv(4096)
        head, _, raw.buf = raw.buf.partition(b"\r\n\r\n")
        accept = base64.b64encode(hashlib.sha1(key.encode() + native_ws.WS_GUID).digest()).decode()
        assert head.startswith(b"HTTP/1.1 101 ") and f"Sec-WebSocket-Accept: {accept}".encode() in head
        return raw.recv_json(), raw.recv_json()

    welcome, reply = await asyncio.to_thread(read)
    assert welcome["type"] == "welcome" and reply == {**reply, "type": "pong", "id": "early"}
    sock.close()


# --- closing --------------------------------------------------------------------------


async def test_client_close_frame_is_answered_and_counted_normal(gateway):
    raw = await connect(gateway)
    code, frames = await closed_with(gateway, raw, frame(struct.pack("!H", 1000) + b"bye", opcode=0x8))
    assert code == 1000
    assert await all_gone(gateway)
    assert gateway.stats.connections_closed["normal"] == 1


async def test_client_vanishing_is_unregistered(gateway):
    raws = [await connect(gateway) for _ in range(3)]
    await asyncio.to_thread(raws[0].send_json, {"type": "subscribe", "id": "s", "channel": "route:500-D:UP"})
    await asyncio.to_thread(raws[0].recv_json)
    assert len(gateway.connections) == 3 and len(gateway._native) == 3
    raws[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    raws[0].close()
    raws[1].sock.shutdown(socket.SHUT_WR)  # FIN only
    raws[2].close()
    assert await all_gone(gateway)
    assert gateway.stats.connections_active == 0
    assert gateway.hub.subscriber_count("route:500-D:UP") == 0
    assert gateway.stats.connections_closed["normal"] == 3
    raws[1].close()


async def test_binary_frame_on_a_text_connection_waits_for_the_close_answer(gateway):
    """Server-initiated close with a handshake: 1003, then the client's close closes it."""
    raw = await connect(gateway)
    raw.send_frame(b"\x00\x01", opcode=0x2)
    opcode, payload, _ = await asyncio.to_thread(raw.recv_frame)
    assert opcode == 0x8 and payload[:2] == struct.pack("!H", 1003)
    await asyncio.sleep(0.2)
    assert len(gateway.connections) == 1  # waiting for the client's close frame
    raw.send_frame(struct.pack("!H", 1003), opcode=0x8)
    assert await asyncio.to_thread(frames_until_eof, raw) == []
    raw.close()
    assert await all_gone(gateway)
    assert gateway.stats.connections_closed["protocol_error"] == 1


async def test_close_answer_timeout(start_gateway, monkeypatch):
    monkeypatch.setattr(native_ws, "CLOSE_TIMEOUT", 0.3)
    gw = await start_gateway(heartbeat=0.4)
    raw = await connect(gw)
    raw.send_frame(b"\x00", opcode=0x2)  # 1003, and the client never answers
    started = time.monotonic()
    frames = await asyncio.to_thread(frames_until_eof, raw)
    assert frames[0][0] == 0x8 and time.monotonic() - started < 3.0
    raw.close()
    assert await all_gone(gw)


# --- heartbeat --------------------------------------------------------------------------


async def test_silent_client_is_pinged_then_closed(start_gateway):
    gw = await start_gateway(heartbeat=0.3)
    raw = await connect(gw)
    started = time.monotonic()
    frames = await asyncio.to_thread(frames_until_eof, raw)
    raw.close()
    assert frames == [(0x9, b"")]  # one ping, then the connection is dropped without a close frame
    assert 0.3 <= time.monotonic() - started < 2.0
    assert await all_gone(gw)
    assert gw.stats.connections_closed["heartbeat_timeout"] == 1


async def test_a_client_answering_pings_stays(start_gateway):
    gw = await start_gateway(heartbeat=0.3)
    raw = await connect(gw)

    def answer_for(seconds: float) -> int:
        pings = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                opcode, payload, _ = raw.recv_frame(timeout=0.1)
            except (TimeoutError, socket.timeout):
                continue
            if opcode == 0x9:
                pings += 1
                raw.send_frame(payload, opcode=0xA)
        return pings

    pings = await asyncio.to_thread(answer_for, 1.6)
    assert pings >= 3
    assert len(gw.connections) == 1 and gw.stats.connections_closed.get("heartbeat_timeout", 0) == 0
    raw.close()


def test_sweep_interval_bounds():
    assert native_ws.sweep_interval(30.0) == native_ws.MAX_SWEEP_INTERVAL
    assert native_ws.sweep_interval(0.4) == pytest.approx(0.1)


# --- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offer,answer",
    [
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover"),
        ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"),
        ("x-webkit-deflate-frame", None),
    ],
)
async def test_permessage_deflate_negotiation_and_compressed_commands(gateway, offer, answer):
    raw = await asyncio.to_thread(RawWebSocket, gateway.port, f"/ws?token={token()}",
                                  headers={"Sec-WebSocket-Extensions": offer})
    assert raw.response_headers.get("sec-websocket-extensions") == answer
    assert raw.response_headers["connection"].lower() == "upgrade"
    welcome = await asyncio.to_thread(raw.recv_json)
    assert welcome.get("compression") == ({"algorithm": "permessage-deflate"} if answer else None)
    if answer:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)  # with context takeover, as browsers do
        for rid in ("z1", "z2"):
            data = deflater.compress(orjson.dumps({"type": "ping", "id": rid})) + deflater.flush(zlib.Z_SYNC_FLUSH)
            raw.sock.sendall(frame(data[:-4], rsv=0x40))
            opcode, payload, _ = await asyncio.to_thread(raw.recv_frame)
            if payload[:1] != b"{":
                payload = zlib.decompress(payload + b"\x00\x00\xff\xff", -15)
            assert orjson.loads(payload)["id"] == rid
    raw.close()


async def test_subprotocol_is_chosen_from_the_offer(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token()}",
                                protocols=("other", ZSTD_SUBPROTOCOL)) as ws:
            assert ws.protocol == ZSTD_SUBPROTOCOL
            welcome = await ws.receive_json(timeout=5)
            assert welcome["compression"]["algorithm"] == "zstd"
        async with s.ws_connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token()}", protocols=("other",)) as ws:
            assert ws.protocol is None
            assert "compression" not in await ws.receive_json(timeout=5)


@pytest.mark.parametrize(
    "headers",
    [
        {"Upgrade": "h2c", "Connection": "Upgrade"},
        {"Upgrade": "websocket", "Connection": "keep-alive"},
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "12"},
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "c2hvcnQ="},
    ],
    ids=["upgrade", "connection", "version", "key"],
)
async def test_invalid_upgrades_get_400(gateway, headers):
    base = {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{gateway.port}/ws?token={token()}", headers={**base, **headers}) as r:
            assert r.status == 400
    assert not gateway.connections and not gateway._native


# --- nothing of aiohttp per connection ---------------------------------------------------


def _count(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


async def test_no_aiohttp_object_or_task_per_connection(gateway):
    from aiohttp.web_protocol import RequestHandler

    gc.collect()
    handlers, responses, requests = _count(RequestHandler), _count(web.WebSocketResponse), _count(web.BaseRequest)
    tasks = len(asyncio.all_tasks())
    raws = [await connect(gateway) for _ in range(20)]
    for i, raw in enumerate(raws):  # each one has had a command too
        await asyncio.to_thread(raw.send_json, {"type": "subscribe", "id": str(i), "channel": "route:500-D:UP"})
        await asyncio.to_thread(raw.recv_json)
    assert len(gateway.connections) == 20
    await asyncio.sleep(0.05)
    gc.collect()
    assert _count(RequestHandler) == handlers
    assert _count(web.WebSocketResponse) == responses
    assert _count(web.BaseRequest) == requests
    assert len(asyncio.all_tasks()) == tasks
    server = gateway._runner.server
    assert not server._connections  # aiohttp's server no longer knows them
    protocols = list(gateway._native)
    assert all(isinstance(c.transport.get_protocol(), native_ws.NativeWebSocket) for c in gateway.connections)
    assert all(p._task is None and p._buf is None and p._pending is None for p in protocols)
    for raw in raws:
        raw.close()
    assert await all_gone(gateway)


async def test_stop_closes_native_clients_and_saves_their_sessions(start_gateway):
    gw = await start_gateway()
    raws = [await connect(gw) for _ in range(3)]
    for raw in raws:
        await asyncio.to_thread(raw.send_json, {"type": "subscribe", "id": "s", "channel": "route:500-D:UP"})
        await asyncio.to_thread(raw.recv_json)
    saved: list[str] = []
    original = gw.recovery.save

    async def save(session_id, session):
        saved.append(session_id)
        await original(session_id, session)

    gw.recovery.save = save
    await gw.stop()
    assert not gw.connections and not gw._native
    assert len(saved) == 3
    assert gw.stats.connections_closed["drain"] == 3  # stop() drains first
    for raw in raws:
        frames = await asyncio.to_thread(frames_until_eof, raw, 2.0)
        assert frames and frames[-1][0] == 0x8 and frames[-1][1][:2] == struct.pack("!H", 1001)
        raw.close()


class _FakeTransport:
    def __init__(self, buffered: int = 0) -> None:
        self.written: list[bytes] = []
        self.buffered = buffered
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def test_sweep_pings_times_out_and_expires_closes():
    """``sweep`` on its own, with a fake clock: ping after ``heartbeat`` of silence,
    close ``heartbeat / 2`` later, abort a closed transport that never flushes."""
    from fastgw import core
    from fastgw.stats import CloseReason

    class Gw:
        pass

    gw = Gw()
    gw.core = core

    class Conn:
        close_reason = None
        session_id = "s"

    def make(buffered: int = 0) -> native_ws.NativeWebSocket:
        p = native_ws.NativeWebSocket(gw, Conn(), _FakeTransport(buffered), compress=False, max_size=1024)
        p.last_rx = 100.0
        return p

    quiet, chatty, stuck = make(), make(), make(buffered=10)
    protocols = [quiet, chatty, stuck]
    native_ws.sweep(protocols, 109.0, 10.0)
    assert not any(p.transport.written for p in protocols)  # not silent long enough
    native_ws.sweep(protocols, 110.0, 10.0)
    assert all(p.transport.written == [native_ws.PING_FRAME] for p in protocols) and quiet.ping_at == 110.0
    chatty.last_rx = 112.0  # the pong
    native_ws.sweep(protocols, 115.5, 10.0)
    assert quiet.transport.closed and quiet.conn.close_reason is CloseReason.HEARTBEAT_TIMEOUT
    assert stuck.transport.aborted  # unread bytes buffered: nobody will read them
    assert not chatty.transport.is_closing() and chatty.ping_at == 0.0
    # a close frame of ours that is never answered
    chatty.close_handshake(1008, "too many requests")
    assert chatty.transport.written[-1][:1] == b"\x88"
    chatty.transport.buffered = 5
    native_ws.sweep(protocols, chatty.closing_at + native_ws.CLOSE_TIMEOUT + 1, 10.0)
    assert chatty.transport.aborted
