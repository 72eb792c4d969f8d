"""Socket.IO long-polling with ``--workers``: requests that reach the wrong worker are
handed over, connection and all, to the worker that owns the session.

Real supervisor and worker processes, a real redis-server, real sockets; every request
on a new TCP connection, so the kernel spreads them over both workers.
"""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import socketio

from tests.conftest import SECRET, token
from tests.sio_raw import RawPolling
from tests.test_workers import admin_token, start_workers  # noqa: F401  (fixture)

CHANNEL = "route:335E:UP"
ALERT = {"type": "service_alert", "alert_id": "a1", "route_id": "335E", "severity": "info", "title": "t",
         "message": "m"}


async def stats(port: int, admin: str) -> list[dict]:
    """/api/stats of as many workers as answer (one connection each)."""
    seen = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(30):
            async with http.get(f"http://127.0.0.1:{port}/api/stats",
                                headers={"Authorization": f"Bearer {admin}"}) as resp:
                body = await resp.json()
                seen[body["node"]] = body["socketio"]
    return list(seen.values())


async def test_polling_sessions_work_whichever_worker_a_request_reaches(start_workers, redis_url):
    gw = start_workers("--redis", redis_url, "--no-simulator", "--jwt-secret", SECRET,
                       "--connect-rate", "0", "--connect-rate-per-ip", "0")
    await gw.wait_serving()
    admin = admin_token()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for i in range(12):
            client = await RawPolling.open(http, gw.port)
            assert await client.post('40{"token":"%s"}' % token(f"r{i}")) == (200, "ok")
            [reply] = await client.packets()
            assert reply.startswith('40{"sid"'), reply
            assert (await client.post('421["subscribe",{"channel":"%s"}]' % CHANNEL))[0] == 200
            [ack] = await client.packets()
            assert json.loads(ack[3:])[0]["type"] == "subscribed"
    handed = [s.get("handed_over", 0) for s in await stats(gw.port, admin)]
    assert sum(handed) > 0, handed  # some requests did reach the other worker
    gw.signal(signal.SIGTERM)
    assert gw.wait(20) == 0


async def test_python_socketio_polls_then_upgrades_across_workers(start_workers, redis_url):
    gw = start_workers("--redis", redis_url, "--no-simulator", "--jwt-secret", SECRET,
                       "--connect-rate", "0", "--connect-rate-per-ip", "0")
    await gw.wait_serving()
    admin = admin_token()
    for attempt in range(6):
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue = asyncio.Queue()
        client.on("channel_message", lambda envelope, *rest: got.put_nowait(envelope))
        await client.connect(f"http://127.0.0.1:{gw.port}", auth={"token": token(f"p{attempt}")},
                             transports=["polling", "websocket"], wait_timeout=5)
        try:
            reply = await client.call("subscribe", {"channel": CHANNEL}, timeout=5)
            assert reply["type"] == "subscribed"
            async with aiohttp.ClientSession() as http:
                alert = {**ALERT, "alert_id": f"a{attempt}"}
                async with http.post(f"http://127.0.0.1:{gw.port}/api/publish",
                                     json={"channel": CHANNEL, "message": alert},
                                     headers={"Authorization": f"Bearer {admin}"}) as resp:
                    assert resp.status == 200
            envelope = await asyncio.wait_for(got.get(), 5)
            assert envelope["message"]["alert_id"] == f"a{attempt}"
            assert client.transport() == "websocket"
        finally:
            await client.disconnect()
    gw.signal(signal.SIGTERM)
    assert gw.wait(20) == 0
