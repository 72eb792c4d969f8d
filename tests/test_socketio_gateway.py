"""The gateway's Socket.IO endpoint, byte for byte over real loopback sockets.

Clients written elsewhere (socket.io-client from npm, python-socketio) are in
``test_socketio_clients.py``; the official protocol suites' cases in
``test_socketio_conformance.py``. Here: auth, requests and acks, frame-once
fan-out over both transports, the upgrade under traffic, the offline queue,
connection state recovery, drain, limits, bad input, and leaks.
"""

from __future__ import annotations

import asyncio
import gc
import json

import aiohttp
import pytest

from fastgw.socketio.engine import Session
from tests.conftest import eventually, token
from tests.sio_raw import RawPolling, RawWS, base
from tests.test_server import LOCATION

CHANNEL = "route:500-D:UP"
ALERT = {"type": "service_alert", "alert_id": "a1", "route_id": "500-D", "severity": "info", "title": "t",
         "message": "m"}


def alert(i: int) -> dict:
    return {**ALERT, "alert_id": f"a{i}"}


async def joined(http, gw, user: str = "rider1", **auth) -> RawWS:
    client = await RawWS.open(http, gw.port)
    reply = await client.connect({"token": token(user), **auth})
    assert reply.startswith("40{"), reply
    client.connect_reply = json.loads(reply[2:])
    return client


# --- connect and auth ----------------------------------------------------------------


async def test_connect_reply_carries_sid_and_pid(gateway):
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        assert set(client.connect_reply) == {"sid", "pid"}
        assert client.handshake["upgrades"] == [] and client.handshake["pingInterval"] == 25000
        assert client.handshake["pingTimeout"] == 20000 and client.handshake["maxPayload"] == 1_000_000
        assert await eventually(lambda: len(gateway.connections) == 1)
        conn = next(iter(gateway.connections))
        assert conn.session_id == client.connect_reply["pid"] and conn.principal.user_id == "rider1"


@pytest.mark.parametrize("auth", [{"token": "not-a-jwt"}, {}, None, {"token": 42}])
async def test_bad_or_missing_token_is_a_connect_error(gateway, auth):
    async with aiohttp.ClientSession() as http:
        client = await RawWS.open(http, gateway.port)
        reply = await client.connect(auth)
        assert reply.startswith("44{"), reply
        error = json.loads(reply[2:])
        assert error["data"] == {"code": "unauthorized"} and error["message"]
        assert not gateway.connections
        # the session stays open: the client may try again with a good token
        assert (await client.connect({"token": token("rider1")})).startswith("40{")


async def test_token_in_the_query_string_works_too(gateway):
    async with aiohttp.ClientSession() as http:
        client = await RawWS.open(http, gateway.port, f"&token={token('rider2')}")
        assert (await client.connect()).startswith("40{")
        assert next(iter(gateway.connections)).principal.user_id == "rider2"


async def test_unknown_namespace_is_refused(gateway):
    async with aiohttp.ClientSession() as http:
        client = await RawWS.open(http, gateway.port)
        assert await client.connect({"token": token("rider1")}, "/admin") == \
            '44/admin,{"message":"Invalid namespace"}'


# --- requests ----------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_are_acknowledged_with_the_native_replies(gateway):
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        reply = await client.call("subscribe", {"channel": CHANNEL}, ack_id=7)
        assert reply == {"type": "subscribed", "id": None, "channel": CHANNEL, "subscriberCount": 1, "offset": "0"}
        refused = await client.call("subscribe", {"channel": "user:someone-else:notifications"}, ack_id=8)
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        bad = await client.call("subscribe", {"channel": "nope"}, ack_id=9)
        assert bad["type"] == "error" and bad["code"] == "invalid_channel"
        assert (await client.call("unsubscribe", {"channel": CHANNEL}, ack_id=10))["type"] == "unsubscribed"
        assert gateway.hub.subscriber_count(CHANNEL) == 0
        pong = await client.call("ping", {}, ack_id=11)
        assert pong["type"] == "pong"


async def test_a_request_without_ack_is_answered_with_an_event(gateway):
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        await client.send('42["subscribe",{"channel":"route:500-D:UP"}]')
        name, reply = await client.event()
        assert name == "subscribed" and reply["channel"] == CHANNEL


async def test_unknown_event_and_non_object_argument_get_errors(gateway):
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        assert (await client.call("fly", {}, ack_id=1))["code"] == "bad_request"
        assert (await client.call("subscribe", "route:500-D:UP", ack_id=2))["code"] == "bad_request"


# --- fan-out -------------------------------------------------------------------------


async def test_every_subscriber_gets_the_same_bytes_with_a_recovery_offset(gateway):
    async with aiohttp.ClientSession() as http:
        clients = [await joined(http, gateway, f"r{i}") for i in range(5)]
        for client in clients:
            await client.call("subscribe", {"channel": CHANNEL})
        gateway.hub.publish(CHANNEL, LOCATION)
        received = [await client.recv() for client in clients]
        assert len(set(received)) == 1
        name, envelope, offset = json.loads(received[0][2:])
        assert name == "channel_message" and envelope["type"] == "channel_message"
        assert envelope["channel"] == CHANNEL and envelope["message"]["vehicle_id"] == LOCATION["vehicle_id"]
        assert offset == f"{envelope['offset']} {CHANNEL}"


async def test_native_and_socketio_subscribers_of_one_channel_both_receive(gateway):
    async with aiohttp.ClientSession() as http:
        sio = await joined(http, gateway)
        await sio.call("subscribe", {"channel": CHANNEL})
        native = await http.ws_connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token('n1')}")
        await native.receive_json(timeout=5)
        await native.send_json({"type": "subscribe", "id": "s", "channel": CHANNEL})
        assert (await native.receive_json(timeout=5))["type"] == "subscribed"
        gateway.hub.publish(CHANNEL, alert(1))
        from_native = await native.receive_json(timeout=5)
        name, from_sio, _ = json.loads((await sio.recv())[2:])
        assert from_native == from_sio


async def test_polling_client_gets_buffered_messages_in_one_response(gateway):
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gateway.port)
        assert client.handshake["upgrades"] == ["websocket"]
        assert (await client.post('40{"token":"%s"}' % token("rider1"))) == (200, "ok")
        [reply] = await client.packets()
        assert reply.startswith('40{"sid":')
        assert (await client.post('421["subscribe",{"channel":"route:500-D:UP"}]'))[0] == 200
        [ack] = await client.packets()
        assert ack.startswith('431[{"type":"subscribed"')
        for i in range(3):
            gateway.hub.publish(CHANNEL, alert(i))
        packets = await client.packets()
        assert len(packets) == 3
        assert [json.loads(p[2:])[1]["message"]["alert_id"] for p in packets] == ["a0", "a1", "a2"]


async def test_a_polling_response_holds_at_most_16_packets(gateway):
    """python-engineio's client drops a connection whose payload has more (max_decode_packets)."""
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gateway.port)
        await client.post('40{"token":"%s"}' % token("rider1"))
        await client.packets()
        await client.post('421["subscribe",{"channel":"route:500-D:UP"}]')
        await client.packets()
        for i in range(40):
            gateway.hub.publish(CHANNEL, alert(i))
        batches = [await client.packets() for _ in range(3)]
        assert [len(b) for b in batches] == [16, 16, 8]
        ids = [json.loads(p[2:])[1]["message"]["alert_id"] for b in batches for p in b]
        assert ids == [f"a{i}" for i in range(40)]


async def test_upgrade_under_traffic_loses_and_reorders_nothing(gateway):
    async with aiohttp.ClientSession() as http:
        poll = await RawPolling.open(http, gateway.port)
        await poll.post('40{"token":"%s"}' % token("rider1"))
        await poll.packets()
        await poll.post('421["subscribe",{"channel":"route:500-D:UP"}]')
        await poll.packets()
        stop = asyncio.Event()
        sent = 0

        async def publisher() -> None:
            nonlocal sent
            while not stop.is_set() and sent < 2000:
                gateway.hub.publish(CHANNEL, alert(sent))
                sent += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(publisher())
        seen: list[str] = []
        for _ in range(3):  # a few polls while messages flow
            seen += [json.loads(p[2:])[1]["message"]["alert_id"] for p in await poll.packets()]
        ws = await http.ws_connect(base(gateway.port) + "&transport=websocket&sid=" + poll.sid)
        await ws.send_str("2probe")
        assert await ws.receive_str(timeout=5) == "3probe"
        status, text = await poll.get()  # the pending/next GET ends with a noop, or with what was buffered
        assert status == 200
        seen += [json.loads(p[2:])[1]["message"]["alert_id"] for p in text.split("\x1e") if p.startswith("42")]
        await ws.send_str("5")
        await asyncio.sleep(0.2)
        stop.set()
        await task
        while len(seen) < sent:
            data = await ws.receive_str(timeout=5)
            if data == "2":
                await ws.send_str("3")
                continue
            seen.append(json.loads(data[2:])[1]["message"]["alert_id"])
        assert seen == [f"a{i}" for i in range(sent)]
        assert (await poll.get())[0] == 400  # polling is over for this session
        conn = next(iter(gateway.connections))
        assert conn.encoding.wire.value == "socketio" and conn.transport is not None


# --- offline queue and recovery ----------------------------------------------------------


async def test_offline_notifications_are_replayed_as_events_and_acked(gateway):
    channel = "user:rider9:notifications"
    for i in range(3):
        gateway.hub.publish(channel, {"type": "user_notification", "notification_id": f"n{i}", "user_id": "rider9",
                                      "title": f"#{i}"})
    assert len(await gateway.offline.pending("rider9")) == 3
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway, "rider9")
        assert (await client.call("subscribe", {"channel": channel}))["type"] == "subscribed"
        events = [await client.event() for _ in range(4)]
        assert [e[0] for e in events] == ["queued_message"] * 3 + ["queue_sync_complete"]
        assert [e[1]["message"]["message"]["notification_id"] for e in events[:3]] == ["n0", "n1", "n2"]
        up_to = events[3][1]["upTo"]
        await client.send('42["ack",{"upTo":%d}]' % up_to)
        assert await eventually(lambda: False, 0.05) is False
        assert await _eventually_async(lambda: gateway.offline.pending("rider9"), [])


async def _eventually_async(fetch, expected, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await fetch() == expected:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_connection_state_recovery_resumes_the_session_from_the_offset(gateway):
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        pid = client.connect_reply["pid"]
        await client.call("subscribe", {"channel": CHANNEL})
        gateway.hub.publish(CHANNEL, alert(1))
        _, first, offset = await client.event()
        await client.ws.close()
        assert await eventually(lambda: not gateway.connections)
        for i in (2, 3):
            gateway.hub.publish(CHANNEL, alert(i))  # missed
        again = await joined(http, gateway, pid=pid, offset=offset)
        assert again.connect_reply["pid"] == pid  # same pid: socket.recovered is true on the client
        name, resumed = await again.event()
        assert name == "resumed" and resumed["recovered"] is True
        assert resumed["channels"] == [{"channel": CHANNEL, "recovered": True, "missed": 2}]
        missed = [(await again.event())[1]["message"]["alert_id"] for _ in range(2)]
        assert missed == ["a2", "a3"]
        gateway.hub.publish(CHANNEL, alert(4))
        assert (await again.event())[1]["message"]["alert_id"] == "a4"


async def test_recovery_of_an_unknown_or_foreign_session_starts_afresh(gateway):
    async with aiohttp.ClientSession() as http:
        owner = await joined(http, gateway, "owner")
        await owner.call("subscribe", {"channel": CHANNEL})
        pid = owner.connect_reply["pid"]
        await owner.ws.close()
        assert await eventually(lambda: not gateway.connections)
        thief = await joined(http, gateway, "thief", pid=pid, offset=f"0 {CHANNEL}")
        assert thief.connect_reply["pid"] != pid
        name, resumed = await thief.event()
        assert name == "resumed" and resumed["recovered"] is False and resumed["channels"] == []
        assert gateway.hub.subscriber_count(CHANNEL) == 0
        again = await joined(http, gateway, "owner", pid=pid)  # still the owner's to take
        assert again.connect_reply["pid"] == pid


async def test_recovery_can_be_turned_off(start_gateway):
    gw = await start_gateway(socketio_recovery=False)
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gw)
        assert set(client.connect_reply) == {"sid"}


# --- drain, limits, closing ----------------------------------------------------------------


async def test_drain_asks_socketio_clients_to_reconnect_then_closes(start_gateway):
    gw = await start_gateway()
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gw)
        await client.call("subscribe", {"channel": CHANNEL})
        stopping = asyncio.create_task(gw.stop(drain_period=0.2))
        name, notice = await client.event()
        assert name == "reconnect" and notice == {"type": "reconnect", "retryAfterMs": notice["retryAfterMs"]}
        assert await client.closed()
        await stopping
        assert gw.stats.connections_closed["drain"] == 1


async def test_draining_instance_refuses_new_sessions(start_gateway):
    gw = await start_gateway()
    gw.draining = True
    async with aiohttp.ClientSession() as http:
        async with http.get(base(gw.port) + "&transport=polling") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]


async def test_connection_limit_applies_to_socketio_sessions(start_gateway):
    gw = await start_gateway(max_connections=1)
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gw)
        async with http.get(base(gw.port) + "&transport=polling") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "limit" and client.connect_reply


async def test_sessions_that_have_not_joined_yet_count_toward_the_limit(start_gateway):
    gw = await start_gateway(max_connections=2)
    async with aiohttp.ClientSession() as http:
        first = await RawPolling.open(http, gw.port)
        second = await RawWS.open(http, gw.port)
        async with http.get(base(gw.port) + "&transport=polling") as resp:
            assert resp.status == 503
        await second.ws.close()
        assert await eventually(lambda: len(gw.socketio.unjoined) == 1)
        assert first.sid in gw.socketio.sessions


async def test_request_flood_closes_the_connection(start_gateway):
    gw = await start_gateway(client_rate=1.0, client_burst=2, client_strikes=3)
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gw)
        for i in range(10):
            await client.send(f'42{i}["ping",{{}}]')
        assert await client.closed()
        assert gw.stats.connections_closed["flood"] == 1


async def test_polling_client_that_stops_reading_is_closed_as_slow_consumer(start_gateway):
    gw = await start_gateway(outbound_limit=4096)
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gw.port)
        await client.post('40{"token":"%s"}' % token("rider1"))
        await client.packets()
        await client.post('421["subscribe",{"channel":"route:500-D:UP"}]')
        await client.packets()
        for i in range(50):  # never fetched
            gw.hub.publish(CHANNEL, alert(i))
        assert await eventually(lambda: not gw.connections)
        assert gw.stats.connections_closed["slow_consumer"] == 1
        assert (await client.get())[0] == 400


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?EIO=3&transport=polling", "?EIO=4", "?EIO=4&transport=flash",
                                   "?EIO=4&transport=polling&sid=unknown"])
async def test_bad_query_is_400(gateway, query):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{gateway.port}/socket.io/{query}") as resp:
            assert resp.status == 400
            assert set(await resp.json()) == {"code", "message"}


@pytest.mark.parametrize("query", ["EIO=3&transport=websocket", "EIO=4&transport=websocket&sid=unknown"])
async def test_bad_websocket_upgrade_is_refused(gateway, query):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"http://127.0.0.1:{gateway.port}/socket.io/?{query}")
        assert refused.value.status == 400


@pytest.mark.parametrize("body", ["abc", "4hello\x1e\x1e2", "b!!!", "40{\"token\":", '42["subscribe"'])
async def test_invalid_packet_over_polling_closes_the_session(gateway, body):
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gateway.port)
        if body.startswith("42"):
            await client.post('40{"token":"%s"}' % token("rider1"))
            await client.packets()
        status, _ = await client.post(body)
        if body.startswith(("40", "42")):
            assert status == 200  # a valid Engine.IO payload holding an invalid Socket.IO packet
        else:
            assert status == 400
        assert (await client.get())[0] == 400
        assert not gateway.socketio.sessions and not gateway.connections


async def test_invalid_packet_over_websocket_closes(gateway):
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        await client.send("42[not json")
        assert await client.closed()
        assert await eventually(lambda: not gateway.connections and not gateway.socketio.sessions)
        assert gateway.stats.connections_closed["protocol_error"] == 1


async def test_post_over_max_payload_is_413_and_closes(start_gateway):
    gw = await start_gateway(socketio_max_payload=2048)
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gw.port)
        assert client.handshake["maxPayload"] == 2048
        status, _ = await client.post("4" + "x" * 3000)
        assert status == 413
        assert (await client.get())[0] == 400


async def test_websocket_message_over_max_payload_closes(start_gateway):
    gw = await start_gateway(socketio_max_payload=2048)
    async with aiohttp.ClientSession() as http:
        client = await RawWS.open(http, gw.port)
        await client.send("4" + "x" * 3000)
        assert await client.closed()
        assert await eventually(lambda: not gw.socketio.sessions)


async def test_second_concurrent_get_is_400_and_closes(gateway):
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gateway.port)
        first = asyncio.create_task(client.get())
        await asyncio.sleep(0.05)
        assert (await client.get())[0] == 400
        assert await first == (200, "1")
        assert (await client.get())[0] == 400


async def test_client_close_between_gets_ends_the_next_get_with_a_noop(gateway):
    async with aiohttp.ClientSession() as http:
        client = await RawPolling.open(http, gateway.port)
        assert await client.post("1") == (200, "ok")
        assert not gateway.socketio.sessions
        assert await client.get() == (200, "6")  # as the reference server: a racing GET ends cleanly
        assert (await client.get())[0] == 400


async def test_ping_timeout_closes_the_connection(start_gateway):
    gw = await start_gateway(socketio_ping_interval=0.1, socketio_ping_timeout=0.1)
    async with aiohttp.ClientSession() as http:
        client = await joined(http, gw)
        assert await client.recv(pong=False) == "2"
        assert await client.closed(2.0)
        assert await eventually(lambda: not gw.connections)
        assert gw.stats.connections_closed["heartbeat_timeout"] == 1


async def test_no_connect_within_the_timeout_closes(start_gateway):
    gw = await start_gateway(socketio_connect_timeout=0.2)
    async with aiohttp.ClientSession() as http:
        client = await RawWS.open(http, gw.port)
        assert await client.closed(2.0)


# --- leaks -----------------------------------------------------------------------------------


async def test_thousands_of_aborted_sessions_leave_nothing_behind(start_gateway):
    gw = await start_gateway(socketio_ping_interval=0.3, socketio_ping_timeout=0.3, connect_rate=0,
                             connect_rate_per_ip=0)
    gc.collect()
    before = sum(isinstance(o, Session) for o in gc.get_objects())
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def abandoned_polling(i: int) -> None:
            client = await RawPolling.open(http, gw.port)
            if i % 3 == 0:  # joined, then gone
                await client.post('40{"token":"%s"}' % token(f"u{i}"))
            if i % 3 == 1:  # a GET cancelled by the client
                with pytest.raises(asyncio.TimeoutError):
                    await client.get(timeout=0.05)

        async def aborted_websocket(i: int) -> None:
            client = await RawWS.open(http, gw.port)
            if i % 2:
                await client.connect({"token": token(f"w{i}")})
                await client.call("subscribe", {"channel": CHANNEL})
            client.ws._response.connection.transport.abort()

        for start in range(0, 2000, 200):
            await asyncio.gather(*(abandoned_polling(i) for i in range(start, start + 200)))
        for start in range(0, 1000, 200):
            await asyncio.gather(*(aborted_websocket(i) for i in range(start, start + 200)))
        assert await eventually(lambda: not gw.socketio.sessions, timeout=10)
    assert not gw.connections and gw.hub.subscriber_count(CHANNEL) == 0
    assert not gw.socketio.engine._waiting_gets and not gw.socketio.unjoined
    gc.collect()
    assert sum(isinstance(o, Session) for o in gc.get_objects()) <= before


# --- metrics ---------------------------------------------------------------------------------


async def test_socketio_clients_show_in_the_metrics(gateway):
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http:
        client = await joined(http, gateway)
        await RawPolling.open(http, gateway.port)  # not joined yet
        async with http.get(f"http://127.0.0.1:{gateway.port}/metrics") as resp:
            text = await resp.text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        labels = (("device", "unknown"), ("profile", "full"), ("protocol", "socketio"))
        assert samples[("fastgw_connections", labels)] == 1
        assert samples[("fastgw_socketio_sessions", (("transport", "websocket"),))] == 1
        assert samples[("fastgw_socketio_sessions", (("transport", "polling"),))] == 1
        assert samples[("fastgw_socketio_unjoined_sessions", ())] == 1
        assert client.connect_reply


async def test_a_get_pending_across_probe_and_upgrade_ends_with_a_noop(gateway):
    """2probe and 5 in one TCP segment: the waiting GET must still end cleanly."""
    async with aiohttp.ClientSession() as http:
        poll = await RawPolling.open(http, gateway.port)
        waiting = asyncio.create_task(poll.get())
        await asyncio.sleep(0.05)
        ws = await http.ws_connect(base(gateway.port) + "&transport=websocket&sid=" + poll.sid)
        ws._writer.transport.write(b"".join(_masked_text(t) for t in ("2probe", "5")))
        assert await ws.receive_str(timeout=5) == "3probe"
        assert await waiting == (200, "6")
        await ws.send_str('40{"token":"%s"}' % token("rider1"))
        assert (await ws.receive_str(timeout=5)).startswith("40{")


def _masked_text(text: str) -> bytes:
    """A client text frame (masked with a zero key, which leaves the payload as is)."""
    data = text.encode()
    return bytes([0x81, 0x80 | len(data)]) + b"\0\0\0\0" + data


async def test_clients_leaving_during_the_handshake_log_no_errors(gateway, caplog):
    """At scale, clients that time out mid-handshake are routine: no ERROR per client."""
    import logging
    import socket
    import struct

    request = ("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    paths = [f"/ws?token={token('r1')}", "/socket.io/?EIO=4&transport=websocket"]
    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        for i in range(60):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            sock.connect(("127.0.0.1", gateway.port))
            sock.sendall(request.format(path=paths[i % 2]).encode())
            sock.close()
        await asyncio.sleep(0.5)
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]
    assert await eventually(lambda: not gateway.connections and not gateway.socketio.sessions)
