"""The gateway over real loopback sockets, with aiohttp and websockets clients."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt as pyjwt
import orjson
import pytest
import websockets

from fastgw.stats import CloseReason
from tests.conftest import SECRET, eventually, token

LOCATION = {"type": "location_update", "vehicle_id": "KA-01-F-1234", "route_id": "500-D", "direction": "UP",
            "latitude": 12.97, "longitude": 77.59, "speed": 23.5, "heading": 90.0}


def url(gw, path: str = "/ws", query: str = "") -> str:
    scheme = "ws" if path == "/ws" else "http"
    return f"{scheme}://127.0.0.1:{gw.port}{path}{query}"


async def publish(gw, channel: str, message: dict, tok: str | None = None) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as s:
        resp = await s.post(url(gw, "/api/publish"), json={"channel": channel, "message": message},
                            headers={"Authorization": f"Bearer {tok or token('ops', admin=True)}"})
        await resp.read()
        return resp


async def subscribe(ws: aiohttp.ClientWebSocketResponse, channel: str, rid: str = "c1", **extra) -> dict:
    await ws.send_json({"type": "subscribe", "id": rid, "channel": channel, **extra})
    return await ws.receive_json(timeout=5)


# --- connection and auth ----------------------------------------------------------


async def test_welcome_then_subscribe_and_receive(gateway):
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gateway), headers={"Authorization": f"Bearer {token()}"}) as ws:
        welcome = await ws.receive_json(timeout=5)
        assert welcome["type"] == "welcome" and welcome["heartbeat"] == 30
        assert len(welcome["sessionId"]) >= 16 and welcome["serverTime"].endswith("Z")
        reply = await subscribe(ws, "route:500-D:UP")
        assert reply == {"type": "subscribed", "id": "c1", "channel": "route:500-D:UP", "subscriberCount": 1,
                         "offset": "0"}  # no message on the channel yet
        resp = await publish(gateway, "route:500-D:UP", LOCATION)
        assert resp.status == 200
        msg = await ws.receive_json(timeout=5)
        assert msg["type"] == "channel_message" and msg["channel"] == "route:500-D:UP"
        assert msg["message"] == LOCATION and msg["messageId"] and msg["timestamp"].endswith("Z")


async def test_token_in_query_with_websockets_client(gateway):
    async with websockets.connect(url(gateway, query=f"?token={token('rider7')}")) as ws:
        assert orjson.loads(await ws.recv())["type"] == "welcome"
        await ws.send(orjson.dumps({"type": "subscribe", "id": 1, "channel": "user:rider7:notifications"}).decode())
        assert orjson.loads(await ws.recv()) == {
            "type": "subscribed", "id": "1", "channel": "user:rider7:notifications", "subscriberCount": 1}
        note = {"type": "user_notification", "notification_id": "n1", "user_id": "rider7", "title": "Hi"}
        assert (await publish(gateway, "user:rider7:notifications", note)).status == 200
        assert orjson.loads(await ws.recv())["message"] == note


@pytest.mark.parametrize(
    "bad_token",
    [
        "not-a-jwt",
        pyjwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, "another-secret-0123456789abcdef0123", "HS256"),
        pyjwt.encode({"sub": "u1", "exp": int(time.time()) - 3600}, SECRET, "HS256"),  # expired
        pyjwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, None, "none"),  # alg: none
        pyjwt.encode({"sub": "u1"}, SECRET, "HS256"),  # no exp
    ],
    ids=["garbage", "wrong-key", "expired", "alg-none", "no-exp"],
)
async def test_bad_tokens_get_401_before_upgrade(gateway, bad_token):
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(url(gateway, query=f"?token={bad_token}"))
    assert err.value.status == 401
    assert gateway.stats.rejected["auth"] == 1


async def test_missing_token_401_unless_anonymous(start_gateway):
    closed = await start_gateway()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(url(closed))
        assert err.value.status == 401
    open_gw = await start_gateway(allow_anonymous=True)
    async with aiohttp.ClientSession() as s, s.ws_connect(url(open_gw)) as ws:
        await ws.receive_json(timeout=5)
        assert (await subscribe(ws, "stop:20823:arrivals"))["type"] == "subscribed"
        denied = await subscribe(ws, "user:u1:notifications", "c2")
        assert denied["code"] == "forbidden" and denied["id"] == "c2"


async def test_permissions(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url(gateway, query=f"?token={token('u1')}")) as ws:
            await ws.receive_json(timeout=5)
            for channel in ["route:335-E:all", "alerts:all", "alerts:500-D", "leaderboard:weekly",
                            "leaderboard:route:201", "user:u1:notifications"]:
                assert (await subscribe(ws, channel))["type"] == "subscribed", channel
            for channel in ["user:u2:notifications", "system:all_updates"]:
                assert (await subscribe(ws, channel))["code"] == "forbidden", channel
            for channel in ["route:500-D:SIDEWAYS", "weather:today", "route::UP", "x" * 200, "route:a b:UP"]:
                assert (await subscribe(ws, channel))["code"] == "invalid_channel", channel
        async with s.ws_connect(url(gateway, query=f"?token={token('boss', admin=True)}")) as ws:
            await ws.receive_json(timeout=5)
            assert (await subscribe(ws, "system:all_updates"))["type"] == "subscribed"


async def test_unsubscribe_stops_delivery(gateway):
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gateway, query=f"?token={token()}")) as ws:
        await ws.receive_json(timeout=5)
        await subscribe(ws, "alerts:all")
        await ws.send_json({"type": "unsubscribe", "id": "u", "channel": "alerts:all"})
        assert await ws.receive_json(timeout=5) == {"type": "unsubscribed", "id": "u", "channel": "alerts:all"}
        assert gateway.hub.subscriber_count("alerts:all") == 0
        await publish(gateway, "alerts:all", {"type": "service_alert", "alert_id": "a1"})
        await ws.send_json({"type": "ping", "id": "p"})
        # the pong is the next frame: the alert was not delivered
        assert (await ws.receive_json(timeout=5))["type"] == "pong"


async def test_subscription_limit_and_filters(start_gateway):
    gw = await start_gateway(max_subscriptions=3)
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gw, query=f"?token={token()}")) as ws:
        await ws.receive_json(timeout=5)
        for i in range(3):
            assert (await subscribe(ws, f"route:{i}:UP"))["type"] == "subscribed"
        assert (await subscribe(ws, "route:0:UP"))["type"] == "subscribed"  # re-subscribe is not a new one
        assert (await subscribe(ws, "route:9:UP"))["code"] == "limit"
        assert gw.stats.limited["subscriptions"] == 1  # exported as fastgw_requests_limited_total
        await ws.send_json({"type": "unsubscribe", "id": "u", "channel": "route:2:UP"})
        await ws.receive_json(timeout=5)
        reply = await subscribe(ws, "alerts:all", filters={"types": ["service_alert"]})
        assert reply["type"] == "subscribed"
        await publish(gw, "alerts:all", {"type": "user_notification", "notification_id": "x"})
        await publish(gw, "alerts:all", {"type": "service_alert", "alert_id": "a9"})
        msg = await ws.receive_json(timeout=5)
        assert msg["message"]["type"] == "service_alert"  # the notification was filtered out
        bad = await subscribe(ws, "alerts:all", filters={"types": ["nope"]})
        assert bad["code"] == "bad_request"


async def test_max_connections_refused_with_503_and_retry_after(start_gateway):
    gw = await start_gateway(max_connections=2)
    async with aiohttp.ClientSession() as s:
        a = await s.ws_connect(url(gw, query=f"?token={token()}"))
        b = await s.ws_connect(url(gw, query=f"?token={token()}"))
        async with s.get(url(gw, "/readyz")) as r:
            assert r.status == 503
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(url(gw, query=f"?token={token()}"))
        assert err.value.status == 503 and err.value.headers["Retry-After"] == "5"
        assert gw.stats.rejected["limit"] == 1
        await a.close()
        await b.close()
        assert await eventually(lambda: not gw.connections)
        async with s.get(url(gw, "/readyz")) as r:
            assert r.status == 200
        async with s.get(url(gw, "/healthz")) as r:
            assert (await r.json())["status"] == "ok"


# --- fan-out ---------------------------------------------------------------------


async def test_fanout_to_many_clients_in_order(gateway):
    n_clients, n_messages = 200, 20
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        clients = [await s.ws_connect(url(gateway, query=f"?token={token(f'r{i}')}")) for i in range(n_clients)]
        for ws in clients:
            await ws.receive_json(timeout=5)
            await subscribe(ws, "route:500-D:all")
        assert gateway.hub.subscriber_count("route:500-D:all") == n_clients
        for seq in range(n_messages):
            await publish(gateway, "route:500-D:all", {**LOCATION, "seq": seq})

        async def collect(ws):
            return [(await ws.receive_json(timeout=10))["message"]["seq"] for _ in range(n_messages)]

        results = await asyncio.gather(*(collect(ws) for ws in clients))
        assert all(r == list(range(n_messages)) for r in results)
        assert gateway.stats.deliveries == n_clients * n_messages
        for ws in clients:
            await ws.close()


async def test_slow_consumer_is_closed_with_4008_and_others_unaffected(start_gateway):
    from tests.rawws import RawWebSocket

    gw = await start_gateway(outbound_limit=64 * 1024)
    slow = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token('slow')}", rcvbuf=4096)
    await asyncio.to_thread(slow.recv_json)
    slow.send_json({"type": "subscribe", "id": "s", "channel": "route:500-D:UP"})
    assert (await asyncio.to_thread(slow.recv_json))["type"] == "subscribed"
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gw, query=f"?token={token('fast')}")) as fast:
        await fast.receive_json(timeout=5)
        await subscribe(fast, "route:500-D:UP")
        # 32 KB messages: the kernel's own socket buffers (several MB on loopback) fill
        # first, then the transport's buffer grows past the limit.
        big = {**LOCATION, "padding": "x" * 32_000}
        received = 0
        # The slow client never reads; the fast one reads everything. Bounded loop.
        def slow_dropped() -> bool:
            return bool(gw.stats.connections_closed.get("slow_consumer")) or any(
                c.close_reason is CloseReason.SLOW_CONSUMER for c in gw.connections)

        for seq in range(600):
            await publish(gw, "route:500-D:UP", {**big, "seq": seq})
            msg = await fast.receive_json(timeout=5)
            assert msg["message"]["seq"] == seq  # the fast subscriber misses nothing
            received += 1
            if slow_dropped():
                break
        assert slow_dropped() and received < 600
    # Now the slow client reads: buffered frames, then a close frame with code 4008.
    def drain_until_close():
        while True:
            opcode, payload, _ = slow.recv_frame(timeout=10)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()
    code, reason = await asyncio.to_thread(drain_until_close)
    slow.close()
    assert (code, reason) == (4008, "slow consumer")


# --- bad input ---------------------------------------------------------------------


async def test_invalid_json_and_unknown_type_get_error_frames(gateway):
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gateway, query=f"?token={token()}")) as ws:
        await ws.receive_json(timeout=5)
        await ws.send_str("{not json")
        assert (await ws.receive_json(timeout=5))["code"] == "bad_request"
        await ws.send_str('{"type":"teleport","id":"t"}')
        err = await ws.receive_json(timeout=5)
        assert err == {"type": "error", "id": "t", "code": "bad_request", "message": "unknown message type 'teleport'"}
        await ws.send_str("[1,2,3]")
        assert (await ws.receive_json(timeout=5))["code"] == "bad_request"
        await ws.send_str('{"type":"subscribe","id":"x"}')
        assert (await ws.receive_json(timeout=5))["code"] == "bad_request"
        # still alive and serving
        await ws.send_json({"type": "ping", "id": "p"})
        assert (await ws.receive_json(timeout=5))["type"] == "pong"


async def test_binary_frame_closes_1003(gateway):
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gateway, query=f"?token={token()}")) as ws:
        await ws.receive_json(timeout=5)
        await ws.send_bytes(b"\x00\x01")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1003
    assert await eventually(lambda: gateway.stats.connections_closed["protocol_error"] == 1)


async def test_oversized_frame_closes_1009(start_gateway):
    gw = await start_gateway(max_frame_size=1024)
    async with websockets.connect(url(gw, query=f"?token={token()}"), max_size=None) as ws:
        await ws.recv()
        await ws.send("x" * 2000)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009


async def test_flood_gets_errors_then_close_1008(start_gateway):
    gw = await start_gateway(client_rate=5, client_burst=5, client_strikes=3)
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gw, query=f"?token={token()}")) as ws:
        await ws.receive_json(timeout=5)
        for i in range(20):
            await ws.send_json({"type": "ping", "id": str(i)})
        kinds = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            kinds.append(orjson.loads(msg.data).get("code", "pong"))
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
        assert kinds[:5] == ["pong"] * 5 and kinds[5:] == ["rate_limited"] * 3
    assert await eventually(lambda: gw.stats.connections_closed["flood"] == 1)
    assert gw.stats.limited["requests"] == 3


async def test_heartbeat_timeout_closes_silent_client(start_gateway):
    from tests.rawws import RawWebSocket

    gw = await start_gateway(heartbeat=0.4)
    raw = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token()}")

    def read_until_eof():
        opcodes = []
        try:
            while True:
                opcodes.append(raw.recv_frame(timeout=5)[0])
        except ConnectionError:
            return opcodes

    started = time.monotonic()
    opcodes = await asyncio.to_thread(read_until_eof)  # never answers the pings
    raw.close()
    assert 0x9 in opcodes  # the server pinged
    assert time.monotonic() - started < 4.0
    assert await eventually(lambda: not gw.connections)
    assert gw.stats.connections_closed["heartbeat_timeout"] == 1


async def test_publish_api_validation(gateway):
    assert (await publish(gateway, "route:500-D:UP", LOCATION, tok=token("u1"))).status == 403
    assert (await publish(gateway, "weather:now", LOCATION)).status == 400
    assert (await publish(gateway, "route:500-D:UP", {"type": "teleport"})).status == 400
    async with aiohttp.ClientSession() as s:
        async with s.post(url(gateway, "/api/publish"), json={"channel": "alerts:all"}) as r:
            assert r.status == 401
        async with s.post(url(gateway, "/api/publish"), data=b"{oops",
                          headers={"Authorization": f"Bearer {token('ops', admin=True)}"}) as r:
            assert r.status == 400


async def test_shutdown_closes_clients_with_1001(start_gateway):
    gw = await start_gateway()
    async with aiohttp.ClientSession() as s, s.ws_connect(url(gw, query=f"?token={token()}")) as ws:
        await ws.receive_json(timeout=5)
        await gw.stop()  # no drain period: told to reconnect now, then closed
        assert await ws.receive_json(timeout=5) == {"type": "reconnect", "retryAfterMs": 0}
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001


# --- compiled and pure-Python hot paths give the same bytes on the wire ----------------


async def test_wire_bytes_identical_across_implementations():
    from fastgw import _core, _core_py
    from fastgw.config import Config
    from fastgw.server import Gateway
    from tests.rawws import RawWebSocket

    captured = []
    for impl in (_core, _core_py):
        gw = Gateway(Config(host="127.0.0.1", port=0, jwt_secret=SECRET, simulator=False, node_id="same"), core=impl)
        gw.hub.clock = lambda: "2026-11-29T08:00:00.000Z"
        await gw.start()
        try:
            raw = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token()}")
            await asyncio.to_thread(raw.recv_frame)
            raw.send_json({"type": "subscribe", "id": "a", "channel": "route:500-D:UP"})
            frames = [(await asyncio.to_thread(raw.recv_frame))[2]]
            for size in (10, 200, 70_000):
                await publish(gw, "route:500-D:UP", {**LOCATION, "pad": "y" * size})
                frames.append((await asyncio.to_thread(raw.recv_frame))[2])
            raw.close()
        finally:
            await gw.stop()
        captured.append(frames)
    assert captured[0] == captured[1]
    assert [f[1] & 0x7F for f in captured[0]] == [len(captured[0][0]) - 2, 126, 126, 127]


async def test_tests_run_on_uvloop():
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
