"""Load shedding (new-connection rates, the readiness high-water mark) and the graceful
drain, with real sockets; the rolling restart with real gateway processes and Redis."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.conftest import token
from tests.test_redis_gateway import (  # noqa: F401  (fixtures)
    Client,
    http,
    notification,
    notifications_of,
    publish,
    start_gateway as start_process,
)
from tests.test_server import url

ALERT = {"type": "service_alert", "alert_id": "a1", "severity": "info", "title": "t", "message": "m"}


async def upgrade(session: aiohttp.ClientSession, gw) -> aiohttp.ClientResponse | aiohttp.ClientWebSocketResponse:
    try:
        ws = await session.ws_connect(url(gw, query=f"?token={token()}"))
    except aiohttp.WSServerHandshakeError as exc:
        return exc  # type: ignore[return-value]
    await ws.receive_json(timeout=5)
    return ws


async def test_new_connections_per_ip_over_the_rate_get_429(start_gateway):
    gw = await start_gateway(connect_rate_per_ip=0.5, connect_burst_per_ip=3, connect_rate=0)
    async with aiohttp.ClientSession() as s:
        accepted = [await upgrade(s, gw) for _ in range(3)]
        assert all(isinstance(ws, aiohttp.ClientWebSocketResponse) for ws in accepted)
        refused = await upgrade(s, gw)
        assert isinstance(refused, aiohttp.WSServerHandshakeError) and refused.status == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert gw.stats.rejected["rate_ip"] == 1
        for ws in accepted:
            await ws.close()


async def test_new_connections_over_the_instance_rate_get_503(start_gateway):
    gw = await start_gateway(connect_rate_per_ip=0, connect_rate=0.5, connect_burst=2)
    async with aiohttp.ClientSession() as s:
        accepted = [await upgrade(s, gw) for _ in range(2)]
        refused = await upgrade(s, gw)
        assert isinstance(refused, aiohttp.WSServerHandshakeError) and refused.status == 503
        assert int(refused.headers["Retry-After"]) >= 1 and gw.stats.rejected["rate"] == 1
        for ws in accepted:
            await ws.close()


async def test_readyz_turns_503_at_the_high_water_mark_while_still_accepting(start_gateway):
    gw = await start_gateway(max_connections=4, ready_high_water=0.5)
    async with aiohttp.ClientSession() as s:
        first = await upgrade(s, gw)
        r = await s.get(url(gw, "/readyz"))
        assert r.status == 200
        second = await upgrade(s, gw)
        r = await s.get(url(gw, "/readyz"))
        assert r.status == 503 and (await r.json())["status"] == "high_water"
        third = await upgrade(s, gw)  # above the mark, below the limit: still served
        assert isinstance(third, aiohttp.ClientWebSocketResponse)
        for ws in (first, second, third):
            await ws.close()


async def test_drain_spreads_reconnects_and_closes_each_client_at_its_time(start_gateway):
    gw = await start_gateway()
    async with aiohttp.ClientSession() as s:
        clients = []
        for _ in range(30):
            ws = await upgrade(s, gw)
            await ws.send_json({"type": "subscribe", "id": "s", "channel": "alerts:all"})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
            clients.append(ws)

        stopping = asyncio.create_task(gw.stop(drain_period=5.0))  # 30 clients: a 0.3 s window
        told = [await ws.receive_json(timeout=5) for ws in clients]
        assert all(t["type"] == "reconnect" for t in told)
        delays = [t["retryAfterMs"] for t in told]
        assert len(set(delays)) > 1 and 0 <= min(delays) and max(delays) <= 5000  # jittered

        r = await s.get(url(gw, "/readyz"))
        assert r.status == 503 and (await r.json())["status"] == "draining"
        assert (await upgrade(s, gw)).status == 503  # no new clients

        async def closed_at(ws) -> float:
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    assert msg.data == 1001 or msg.type == aiohttp.WSMsgType.CLOSED
                    return time.monotonic()

        started = time.monotonic()
        times = await asyncio.gather(*(closed_at(ws) for ws in clients))
        await stopping
        # nobody is closed before the time it was told (a tick of slack), and in that order
        for delay, at in zip(delays, times):
            assert at - started >= delay / 1000 - 0.1
        order = sorted(range(len(clients)), key=lambda i: times[i])
        assert [delays[i] for i in order] == sorted(delays) or _mostly_sorted([delays[i] for i in order])
        assert gw.stats.connections_closed["drain"] == 30


def _mostly_sorted(values: list[int], slack_ms: int = 100) -> bool:
    """Closes of one 50 ms batch may arrive in any order."""
    return all(b >= a - slack_ms for a, b in zip(values, values[1:]))


async def test_clients_keep_receiving_until_their_turn(start_gateway):
    gw = await start_gateway()
    async with aiohttp.ClientSession() as s:
        ws = await upgrade(s, gw)
        await ws.send_json({"type": "subscribe", "id": "s", "channel": "alerts:all"})
        await ws.receive_json(timeout=5)
        stopping = asyncio.create_task(gw.stop(drain_period=30.0))
        told = await ws.receive_json(timeout=5)
        assert told["type"] == "reconnect"  # one client: a 10 ms window at most
        await stopping
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001


@pytest.mark.parametrize("round_", [1])
async def test_rolling_restart_loses_no_notification(start_process, redis_url, http, round_):
    """Two instances; notifications to two users flow through B without pause while A, which
    holds one user's connection, is drained with SIGTERM. The user follows ``reconnect`` to
    B; the other user is offline throughout. Every notification arrives: live, or from the
    offline queue after reconnecting, and A exits 0."""
    a = await start_process("A", redis_url, "--drain-period", "1")
    b = await start_process("B", redis_url, "--drain-period", "1")
    online, offline = "rider-online", "rider-away"
    client = await Client.connect(http, a, online)
    await client.subscribe(notifications_of(online))
    assert await client.sync() == []

    total = 120
    received: list[str] = []

    async def publisher() -> None:
        for n in range(total):
            await publish(http, b, notifications_of(online), notification(online, n))
            await publish(http, b, notifications_of(offline), notification(offline, n))
            await asyncio.sleep(0.01)

    def titles(frames) -> list[str]:
        out = []
        for f in frames:
            if f["type"] == "channel_message":
                out.append(f["message"]["title"])
            elif f["type"] == "queued_message":
                out.append(f["message"]["message"]["title"])
        return out

    publishing = asyncio.create_task(publisher())
    await asyncio.sleep(0.3)
    a.proc.send_signal(signal.SIGTERM)
    # follow the drain: read until told to reconnect and closed
    while True:
        msg = await client.ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frame = msg.json()
        received += titles([frame])
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    moved = await Client.connect(http, b, online)
    await moved.subscribe(notifications_of(online))
    await publishing
    frames = await moved.sync()
    received += titles(frames)
    # anything still in flight arrives live; the queue replay came with the subscribe
    deadline = time.monotonic() + 5
    while len(set(received)) < total and time.monotonic() < deadline:
        received += titles(await moved.sync())
        await asyncio.sleep(0.05)
    assert a.proc.wait(timeout=15) == 0
    expected = [notification(online, n)["title"] for n in range(total)]
    assert sorted(set(received)) == sorted(expected), f"missing {sorted(set(expected) - set(received))[:10]}"

    away = await Client.connect(http, b, offline)
    await away.subscribe(notifications_of(offline))
    replay = titles(await away.sync())
    assert replay == [notification(offline, n)["title"] for n in range(total - 100, total)]  # newest 100 kept
