"""Session resume on one node (memory engine): subscriptions back, missed messages in order.

The same behaviour across nodes with Redis is in ``tests/test_redis_gateway.py``.
"""

from __future__ import annotations

import aiohttp

from tests.conftest import token
from tests.test_server import LOCATION, publish, subscribe, url

CHANNEL = "route:500-D:UP"
ALERT = {"type": "service_alert", "alert_id": "a1", "route_id": "500-D", "severity": "info",
         "title": "t", "message": "m"}


def alert(i: int) -> dict:
    return {**ALERT, "alert_id": f"a{i}"}


async def connect(session, gw, user: str = "rider1", query: str = ""):
    ws = await session.ws_connect(url(gw, query=f"?token={token(user)}{query}"))
    welcome = await ws.receive_json(timeout=5)
    return ws, welcome["sessionId"]


async def resume(ws, session_id: str, offsets: dict | None = None) -> dict:
    request = {"type": "resume", "id": "r1", "sessionId": session_id}
    if offsets is not None:
        request["offsets"] = offsets
    await ws.send_json(request)
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "resumed", reply
    return reply


async def test_resume_with_client_offsets_sends_missed_then_live(gateway):
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, gateway)
        await subscribe(ws, CHANNEL)
        await publish(gateway, CHANNEL, alert(1))
        first = await ws.receive_json(timeout=5)
        assert first["offset"]
        await ws.close()
        for i in (2, 3):
            await publish(gateway, CHANNEL, alert(i))  # while away
        ws2, new_sid = await connect(s, gateway)
        reply = await resume(ws2, sid, {CHANNEL: first["offset"]})
        assert reply["recovered"] is True and reply["sessionId"] == new_sid
        assert reply["channels"] == [{"channel": CHANNEL, "recovered": True, "missed": 2}]
        missed = [await ws2.receive_json(timeout=5) for _ in range(2)]
        assert [m["message"]["alert_id"] for m in missed] == ["a2", "a3"]
        await publish(gateway, CHANNEL, alert(4))
        live = await ws2.receive_json(timeout=5)
        assert live["message"]["alert_id"] == "a4"  # the subscription itself is back
        await ws2.close()


async def test_resume_without_offsets_uses_what_the_server_last_delivered(gateway):
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, gateway)
        await subscribe(ws, CHANNEL)
        await publish(gateway, CHANNEL, alert(1))
        await ws.receive_json(timeout=5)
        await ws.close()
        await publish(gateway, CHANNEL, alert(2))
        ws2, _ = await connect(s, gateway)
        reply = await resume(ws2, sid)
        assert reply["recovered"] is True and reply["channels"][0]["missed"] == 1
        assert (await ws2.receive_json(timeout=5))["message"]["alert_id"] == "a2"
        await ws2.close()


async def test_resume_reports_a_gap_it_cannot_fill(start_gateway):
    gw = await start_gateway(history_size=3)
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, gw)
        reply = await subscribe(ws, CHANNEL)
        start = reply["offset"]
        await ws.close()
        for i in range(6):  # more than the history keeps
            await publish(gw, CHANNEL, alert(i))
        ws2, _ = await connect(s, gw)
        reply = await resume(ws2, sid, {CHANNEL: start})
        assert reply["recovered"] is False
        assert reply["channels"] == [{"channel": CHANNEL, "recovered": False, "missed": 3}]
        kept = [await ws2.receive_json(timeout=5) for _ in range(3)]  # what is left is still sent
        assert [m["message"]["alert_id"] for m in kept] == ["a3", "a4", "a5"]
        await ws2.close()


async def test_unknown_or_foreign_session_is_not_resumed(gateway):
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, gateway, "rider1")
        await subscribe(ws, CHANNEL)
        await ws.close()
        intruder, _ = await connect(s, gateway, "rider2")
        reply = await resume(intruder, sid)
        assert reply["recovered"] is False and reply["channels"] == []
        await publish(gateway, CHANNEL, alert(1))
        await intruder.send_json({"type": "ping", "id": "p"})
        assert (await intruder.receive_json(timeout=5))["type"] == "pong"  # no channel_message first
        stranger, _ = await connect(s, gateway, "rider1")
        assert (await resume(stranger, "no-such-session"))["recovered"] is False
        await intruder.close()
        await stranger.close()


async def test_resume_restores_filters(gateway):
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, gateway)
        await subscribe(ws, CHANNEL, filters={"types": ["service_alert"]})
        await ws.close()
        await publish(gateway, CHANNEL, LOCATION)
        await publish(gateway, CHANNEL, alert(1))
        ws2, _ = await connect(s, gateway)
        reply = await resume(ws2, sid)
        assert reply["channels"][0]["missed"] == 1
        assert (await ws2.receive_json(timeout=5))["message"]["type"] == "service_alert"
        await publish(gateway, CHANNEL, LOCATION)  # still filtered out live
        await publish(gateway, CHANNEL, alert(2))
        assert (await ws2.receive_json(timeout=5))["message"]["alert_id"] == "a2"
        await ws2.close()


async def test_cellular_resume_sends_only_the_newest_position_of_each_bus(gateway):
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, gateway, query="&profile=cellular")
        reply = await subscribe(ws, CHANNEL)
        await ws.close()
        for i in range(5):  # the same bus moves five times while the rider is away
            await publish(gateway, CHANNEL, {**LOCATION, "speed": 10 + i})
        ws2, _ = await connect(s, gateway, query="&profile=cellular")
        reply = await resume(ws2, sid, {CHANNEL: reply["offset"]})
        assert reply["recovered"] is True and reply["channels"][0]["missed"] == 5
        newest = await ws2.receive_json(timeout=5)
        assert newest["message"]["speed"] == 14
        await ws2.send_json({"type": "ping", "id": "p"})
        assert (await ws2.receive_json(timeout=5))["type"] == "pong"  # nothing else was sent
        await ws2.close()


async def test_resume_validation(gateway):
    async with aiohttp.ClientSession() as s:
        ws, _ = await connect(s, gateway)
        for bad in ({"type": "resume"}, {"type": "resume", "sessionId": 5},
                    {"type": "resume", "sessionId": "x", "offsets": {"a": 1}}):
            await ws.send_json(bad)
            assert (await ws.receive_json(timeout=5))["code"] == "bad_request"
        await ws.close()


async def test_drained_instance_sessions_resume_on_another(start_gateway, redis_url):
    """SIGTERM-style drain on A (close 1001) saves sessions in Redis; the client resumes on B."""
    a = await start_gateway(redis=redis_url, node_id="A")
    b = await start_gateway(redis=redis_url, node_id="B")
    async with aiohttp.ClientSession() as s:
        ws, sid = await connect(s, a)
        reply = await subscribe(ws, CHANNEL)
        await a.stop()
        assert (await ws.receive_json(timeout=5))["type"] == "reconnect"
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001
        await publish(b, CHANNEL, alert(1))  # published while the client moves over
        ws2, _ = await connect(s, b)
        resumed = await resume(ws2, sid, {CHANNEL: reply["offset"]})
        assert resumed["recovered"] is True and resumed["channels"][0]["missed"] == 1
        assert (await ws2.receive_json(timeout=5))["message"]["alert_id"] == "a1"
        await publish(b, CHANNEL, alert(2))
        assert (await ws2.receive_json(timeout=5))["message"]["alert_id"] == "a2"
        await ws2.close()
