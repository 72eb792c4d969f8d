"""Notifications for offline users: kept, replayed oldest first, trimmed only on ack."""

from __future__ import annotations

import aiohttp
import pytest

from fastgw.engines.memory import MemoryOfflineQueue
from tests.conftest import token

CHANNEL = "user:rider9:notifications"


async def publish(gw, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            note = {"type": "user_notification", "notification_id": f"n{i}", "user_id": "rider9", "title": f"#{i}"}
            r = await s.post(f"http://127.0.0.1:{gw.port}/api/publish", json={"channel": CHANNEL, "message": note},
                             headers={"Authorization": f"Bearer {token('ops', admin=True)}"})
            assert r.status == 200


async def reconnect(gw, session) -> tuple[aiohttp.ClientWebSocketResponse, list[dict]]:
    """Connect as rider9, subscribe to the notifications, return what arrived until sync."""
    ws = await session.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('rider9')}")
    await ws.receive_json(timeout=5)
    await ws.send_json({"type": "subscribe", "id": "n", "channel": CHANNEL})
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    frames = []
    if await gw.offline.pending("rider9"):
        while True:
            frames.append(await ws.receive_json(timeout=5))
            if frames[-1]["type"] == "queue_sync_complete":
                break
    return ws, frames


async def test_offline_notifications_replayed_until_acknowledged(gateway):
    await publish(gateway, 3)  # rider9 is not connected
    async with aiohttp.ClientSession() as session:
        ws, frames = await reconnect(gateway, session)
        assert [f["type"] for f in frames] == ["queued_message"] * 3 + ["queue_sync_complete"]
        assert [f["message"]["message"]["title"] for f in frames[:3]] == ["#0", "#1", "#2"]
        assert frames[0]["message"]["type"] == "channel_message" and frames[0]["message"]["channel"] == CHANNEL
        sync = frames[-1]
        assert sync["message_count"] == 3 and sync["synced_at"].endswith("Z") and sync["upTo"] == frames[2]["seq"]
        await ws.close()  # gone before acknowledging: nothing may be lost

        ws, frames = await reconnect(gateway, session)
        assert len(frames) == 4
        await ws.send_json({"type": "ack", "upTo": frames[1]["seq"]})  # has the first two
        await ws.send_json({"type": "ping", "id": "p"})
        assert (await ws.receive_json(timeout=5))["type"] == "pong"  # the ack was processed
        await ws.close()

        ws, frames = await reconnect(gateway, session)
        assert [f.get("seq") for f in frames[:-1]] and len(frames) == 2
        await ws.send_json({"type": "ack", "upTo": frames[-1]["upTo"]})
        await ws.send_json({"type": "ping", "id": "p"})
        await ws.receive_json(timeout=5)
        assert await gateway.offline.pending("rider9") == []
        # online now: a new notification is delivered live, not queued
        await publish(gateway, 1)
        live = await ws.receive_json(timeout=5)
        assert live["type"] == "channel_message" and await gateway.offline.pending("rider9") == []
        await ws.send_json({"type": "ack", "upTo": "x"})
        assert (await ws.receive_json(timeout=5))["code"] == "bad_request"
        await ws.close()


async def test_queue_keeps_newest_and_expires():
    now = [1000.0]
    q = MemoryOfflineQueue(max_messages=3, retention=60, clock=lambda: now[0])
    seqs = [q.store("u", f"m{i}".encode()) for i in range(5)]
    assert [e for _, e in await q.pending("u")] == [b"m2", b"m3", b"m4"]  # newest 3 kept
    assert await q.ack("u", seqs[3]) == 2 and [e for _, e in await q.pending("u")] == [b"m4"]
    now[0] += 61
    assert await q.pending("u") == []  # older than the retention


@pytest.mark.parametrize("bad", [-1, True, None])
def test_ack_validation(bad):
    from fastgw.protocol import native

    with pytest.raises(native.ProtocolError):
        native.parse_command(f'{{"type":"ack","upTo":{__import__("json").dumps(bad)}}}')
