"""Wire profiles over real sockets: reduction, batching windows, conflation, zstd, deflate."""

from __future__ import annotations

import asyncio
import time
import zlib

import aiohttp
import orjson
import pytest
import websockets
import zstandard

from tests.conftest import eventually, token
from tests.rawws import RawWebSocket

LOCATION = {
    "type": "location_update", "vehicle_id": "KA-01-F-1234", "route_id": "500-D", "direction": "UP",
    "latitude": 12.9716049, "longitude": 77.5946371, "speed": 23.4, "heading": 357.6, "accuracy": 8.0,
    "confidence": 0.91, "contributor_count": 4, "data_freshness": "fresh",
    "timestamp": "2026-11-29T08:00:00.000Z", "metadata": {"source": "crowdsourced", "quality_score": 0.8},
}
CHANNEL = "route:500-D:UP"


async def publish(gw, channel: str, message: dict) -> None:
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"http://127.0.0.1:{gw.port}/api/publish", json={"channel": channel, "message": message},
                            headers={"Authorization": f"Bearer {token('ops', admin=True)}"})
        assert resp.status == 200, await resp.text()


async def raw_client(gw, query: str = "", headers: dict | None = None) -> RawWebSocket:
    raw = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token()}{query}", headers=headers)
    return raw


async def subscribe_raw(raw: RawWebSocket, channel: str = CHANNEL) -> dict:
    welcome = await asyncio.to_thread(raw.recv_json)
    raw.send_json({"type": "subscribe", "id": "s", "channel": channel})
    assert (await asyncio.to_thread(raw.recv_json))["type"] == "subscribed"
    return welcome


def frames_in(data: bytes) -> list[tuple[int, bytes]]:
    """Split bytes received in one read into (first byte, payload) per frame."""
    out = []
    while data:
        n, off = data[1] & 0x7F, 2
        if n == 126:
            n, off = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, off = int.from_bytes(data[2:10], "big"), 10
        out.append((data[0], data[off:off + n]))
        data = data[off + n:]
    return out


async def read_window(raw: RawWebSocket, expected_frames: int, timeout: float = 5.0) -> tuple[list, list[int]]:
    """Read until ``expected_frames`` frames arrived; also report how many bytes each read had."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(frames_in(b"".join(chunks))) < expected_frames and time.monotonic() < deadline:
        chunks.append(await asyncio.to_thread(raw.recv_raw, max(0.1, deadline - time.monotonic())))
    return frames_in(b"".join(chunks)), [len(c) for c in chunks]


# --- profiles and reduction ---------------------------------------------------------


async def test_full_profile_is_unchanged_and_immediate(gateway):
    raw = await raw_client(gateway)
    welcome = await subscribe_raw(raw)
    assert (welcome["profile"], welcome["window"]) == ("full", 0)
    await publish(gateway, CHANNEL, LOCATION)
    assert (await asyncio.to_thread(raw.recv_json))["message"] == LOCATION
    raw.close()


async def test_cellular_reduces_and_batches_one_write(start_gateway):
    gw = await start_gateway(window_cellular_ms=300)
    raw = await raw_client(gw, "&profile=cellular")
    welcome = await subscribe_raw(raw)
    assert (welcome["profile"], welcome["window"]) == ("cellular", 300)
    started = time.monotonic()
    for i in range(5):
        await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": f"V{i}"})
    frames, reads = await read_window(raw, 5)
    elapsed = time.monotonic() - started
    assert len(frames) == 5 and len(reads) == 1  # five frames, one write, one read
    assert gw.stats.batch_writes == 1
    assert 0.2 <= elapsed < 2.0  # held for the window (300 ms from the first), not much longer
    msg = orjson.loads(frames[0][1])["message"]
    assert msg["latitude"] == 12.9716 and msg["longitude"] == 77.59464  # 5 decimals
    assert msg["speed"] == 23 and msg["heading"] == 0
    assert "contributor_count" not in msg and msg["confidence"] == 0.91
    assert msg["metadata"] == {"source": "crowdsourced"}  # quality_score is the non-essential part
    assert [orjson.loads(p)["message"]["vehicle_id"] for _, p in frames] == [f"V{i}" for i in range(5)]
    raw.close()


async def test_conflation_keeps_latest_per_vehicle_and_never_drops_other_types(start_gateway):
    gw = await start_gateway(window_cellular_ms=300)
    raw = await raw_client(gw, "&profile=cellular")
    await subscribe_raw(raw)
    await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": "A", "speed": 1})
    await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": "B", "speed": 2})
    await publish(gw, CHANNEL, {"type": "service_alert", "alert_id": "x1", "title": "Diversion"})
    await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": "A", "speed": 3})
    await publish(gw, CHANNEL, {"type": "service_alert", "alert_id": "x2", "title": "Cleared"})
    await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": "A", "speed": 4})
    frames, _ = await read_window(raw, 4)
    got = [orjson.loads(p)["message"] for _, p in frames]
    assert [(m["type"], m.get("vehicle_id"), m.get("speed"), m.get("alert_id")) for m in got] == [
        ("location_update", "A", 4, None),  # A's newest, in A's first slot
        ("location_update", "B", 2, None),
        ("service_alert", None, None, "x1"),
        ("service_alert", None, None, "x2"),
    ]
    raw.close()


async def test_slow_profile_sends_one_batched_messages_envelope(start_gateway):
    gw = await start_gateway(window_slow_ms=300)
    raw = await raw_client(gw, "&profile=slow")
    welcome = await subscribe_raw(raw)
    assert (welcome["profile"], welcome["window"]) == ("slow", 300)
    for i in range(3):
        await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": f"V{i}"})
    frames, _ = await read_window(raw, 1)
    assert len(frames) == 1
    batch = orjson.loads(frames[0][1])
    assert batch["type"] == "batched_messages" and batch["total_messages"] == 3
    assert batch["batched_at"].endswith("Z") and len(batch["batches"]) == 3
    first = batch["batches"][0]
    assert first["type"] == "channel_message" and first["channel"] == CHANNEL
    assert first["message"]["latitude"] == 12.9716 and "confidence" not in first["message"]
    # a lone message in a window is sent as itself, not wrapped
    await publish(gw, CHANNEL, LOCATION)
    frames, _ = await read_window(raw, 1)
    assert orjson.loads(frames[0][1])["type"] == "channel_message"
    raw.close()


async def test_hello_switches_profile(gateway):
    async with aiohttp.ClientSession() as s, s.ws_connect(
            f"ws://127.0.0.1:{gateway.port}/ws?token={token()}") as ws:
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "subscribe", "id": "s", "channel": CHANNEL})
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "hello", "id": "h", "connection_type": "3g"})
        assert await ws.receive_json(timeout=5) == {"type": "profile", "id": "h", "profile": "slow", "window": 500}
        await ws.send_json({"type": "hello", "id": "h2", "profile": "cellular"})
        assert (await ws.receive_json(timeout=5))["profile"] == "cellular"
        await publish(gateway, CHANNEL, LOCATION)
        msg = (await ws.receive_json(timeout=5))["message"]
        assert msg["longitude"] == 77.59464 and msg["metadata"] == {"source": "crowdsourced"}
        await ws.send_json({"type": "hello", "id": "h3", "profile": "turbo"})
        err = await ws.receive_json(timeout=5)
        assert err["code"] == "bad_request" and "turbo" in err["message"]
        await ws.send_json({"type": "hello", "id": "h4"})
        assert (await ws.receive_json(timeout=5))["code"] == "bad_request"


async def test_unknown_profile_in_query_is_400(gateway):
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token()}&profile=turbo")
    assert err.value.status == 400


# --- zstd -----------------------------------------------------------------------------


async def test_zstd_frames_decode_with_the_published_dictionary(gateway):
    raw = await raw_client(gateway, "&profile=cellular", {"Sec-WebSocket-Protocol": "fastgw.v1.zstd"})
    assert raw.response_headers["sec-websocket-protocol"] == "fastgw.v1.zstd"
    welcome = await subscribe_raw(raw)
    compression = welcome["compression"]
    assert compression["algorithm"] == "zstd"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{gateway.port}{compression['dictUrl']}") as r:
            assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
            dictionary = await r.read()
        async with s.get(f"http://127.0.0.1:{gateway.port}/dict/12345") as r:
            assert r.status == 404
    assert zstandard.ZstdCompressionDict(dictionary).dict_id() == compression["dictId"]
    await publish(gateway, CHANNEL, LOCATION)
    frames, _ = await read_window(raw, 1)
    first_byte, payload = frames[0]
    assert first_byte == 0x82  # final binary frame
    plain = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary)).decompressobj().decompress(payload)
    envelope = orjson.loads(plain)
    assert envelope["message"]["latitude"] == 12.9716 and envelope["message"]["speed"] == 23
    assert len(payload) < len(plain) / 2
    raw.close()


async def test_zstd_client_commands_and_bad_compressed_frames(gateway):
    cctx = zstandard.ZstdCompressor()
    raw = await raw_client(gateway, "", {"Sec-WebSocket-Protocol": "fastgw.v1.zstd"})
    await asyncio.to_thread(raw.recv_json)
    raw.send_frame(cctx.compress(b'{"type":"subscribe","id":"z","channel":"alerts:all"}'), opcode=0x2)
    assert (await asyncio.to_thread(raw.recv_json))["type"] == "subscribed"
    raw.send_frame(b"\x28\xb5\x2f\xfd garbage", opcode=0x2)
    opcode, payload, _ = await asyncio.to_thread(raw.recv_frame)
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1007
    raw.close()
    raw = await raw_client(gateway, "", {"Sec-WebSocket-Protocol": "fastgw.v1.zstd"})
    await asyncio.to_thread(raw.recv_json)
    raw.send_frame(cctx.compress(b" " * 5_000_000), opcode=0x2)  # a small frame that inflates to 5 MB
    opcode, payload, _ = await asyncio.to_thread(raw.recv_frame)
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1009
    raw.close()


# --- permessage-deflate -----------------------------------------------------------------


async def test_permessage_deflate_frames_are_shared_and_decodable(gateway):
    raw = await raw_client(gateway, "", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert "permessage-deflate" in raw.response_headers["sec-websocket-extensions"]
    await subscribe_raw(raw)
    await publish(gateway, CHANNEL, LOCATION)
    frames, _ = await read_window(raw, 1)
    first_byte, payload = frames[0]
    assert first_byte == 0xC1  # FIN + RSV1 (compressed) + text
    plain = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    assert orjson.loads(plain)["message"] == LOCATION
    raw.close()
    # and an ordinary library client with its default extension settings gets the message
    async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token()}") as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"type": "subscribe", "id": "s", "channel": CHANNEL}).decode())
        await ws.recv()
        await publish(gateway, CHANNEL, LOCATION)
        assert orjson.loads(await ws.recv())["message"] == LOCATION


# --- batching keeps the slow-consumer limit ---------------------------------------------------


async def test_batched_slow_consumer_is_closed_with_4008(start_gateway):
    gw = await start_gateway(outbound_limit=64 * 1024, window_cellular_ms=20)
    slow = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token('slow')}&profile=cellular", rcvbuf=4096)
    await subscribe_raw(slow)
    big = {"type": "service_alert", "alert_id": "a", "title": "x" * 30_000}

    def dropped() -> bool:
        return any(c.close_reason and c.close_reason.value == "slow_consumer" for c in gw.connections)

    for _ in range(400):  # bounded: the kernel buffers fill first, then the limit trips
        await publish(gw, CHANNEL, big)
        await asyncio.sleep(0.025)  # let each window flush
        if dropped():
            break
    assert dropped()

    def drain_until_close():
        while True:
            opcode, payload, _ = slow.recv_frame(timeout=10)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")
    assert await asyncio.to_thread(drain_until_close) == 4008
    slow.close()
    assert await eventually(lambda: gw.stats.connections_closed.get("slow_consumer") == 1)


async def test_unknown_subprotocol_is_ignored_and_connection_is_plain_json(gateway):
    raw = await raw_client(gateway, "", {"Sec-WebSocket-Protocol": "mqtt, fastgw.v9"})
    assert "sec-websocket-protocol" not in raw.response_headers
    welcome = await subscribe_raw(raw)
    assert "compression" not in welcome
    await publish(gateway, CHANNEL, LOCATION)
    assert (await asyncio.to_thread(raw.recv_json))["message"] == LOCATION
    raw.close()


@pytest.mark.parametrize(
    "payload,expected_code",
    [
        # corrupt: does not inflate. aiohttp closes such a connection with 1000 (its
        # generic path for reader errors); the gateway counts it as a protocol error.
        (b"\xff\xff\xff\xff not deflate", 1000),
        (zlib.compressobj(9, zlib.DEFLATED, -15).compress(b" " * 2_000_000)
         + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_SYNC_FLUSH), 1009),  # inflates past 64 KiB
    ],
    ids=["corrupt", "bomb"],
)
async def test_bad_deflate_frames_from_client_are_closed(gateway, payload, expected_code):
    raw = await raw_client(gateway, "", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    await asyncio.to_thread(raw.recv_json)
    if expected_code == 1009:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        payload = c.compress(b" " * 2_000_000) + c.flush(zlib.Z_SYNC_FLUSH)
        payload = payload[:-4]  # RFC 7692: the trailing 00 00 ff ff is left off
    raw.send_frame(payload, opcode=0x1 | 0x40)  # RSV1: compressed text frame
    opcode, data, _ = await asyncio.to_thread(raw.recv_frame)
    assert opcode == 0x8 and int.from_bytes(data[:2], "big") == expected_code
    raw.close()
    assert await eventually(lambda: gateway.stats.connections_closed["protocol_error"] == 1)


async def test_large_flushes_are_sliced_and_reach_everyone(start_gateway, monkeypatch):
    import fastgw.hub

    monkeypatch.setattr(fastgw.hub, "FLUSH_SLICE", 2)  # 5 connections → 3 loop callbacks
    gw = await start_gateway(window_cellular_ms=50)
    clients = [await raw_client(gw, "&profile=cellular") for _ in range(5)]
    for raw in clients:
        await subscribe_raw(raw)
    for i in range(3):
        await publish(gw, CHANNEL, {**LOCATION, "vehicle_id": f"V{i}"})
    for raw in clients:
        frames, _ = await read_window(raw, 3)
        assert [orjson.loads(p)["message"]["vehicle_id"] for _, p in frames] == ["V0", "V1", "V2"]
        raw.close()
    assert gw.stats.batch_writes == 5
