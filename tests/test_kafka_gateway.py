"""Kafka → processors → hub → WebSocket, against a real Apache Kafka broker (KRaft)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson
import pytest

from fastgw.config import Config
from fastgw.server import Gateway
from fastgw.transit.gtfs import load_feed
from tests.conftest import SECRET, eventually, token

pytestmark = pytest.mark.kafka


def topics_for(test_id: str) -> tuple[tuple[str, str], ...]:
    return tuple((role, f"{test_id}.{role}") for role in ("location", "alerts", "notifications", "user_events"))


async def start_gateway(bootstrap: str, test_id: str, **options) -> Gateway:
    gw = Gateway(Config(
        host="127.0.0.1", port=0, jwt_secret=SECRET, simulator=False, kafka=bootstrap,
        kafka_topics=topics_for(test_id), kafka_group_prefix=f"g-{test_id}", kafka_dlq_topic=f"{test_id}.dlq",
        **options,
    ))
    await gw.start()
    return gw


def location_record(seq: int, *, vehicle: str = "KA-01-F-0001", dist_fraction: float = 0.3) -> bytes:
    """A report of a bus on 500-D UP, placed on the route shape (so it projects cleanly)."""
    pattern = load_feed().routes["500-D"].directions["UP"]
    lat, lon, heading = pattern.shape.point_at(pattern.shape.length_m * dist_fraction)
    return orjson.dumps({
        "vehicle_id": vehicle, "route_id": "500-D", "direction": "UP",
        "latitude": lat, "longitude": lon, "speed": 20.0, "heading": heading, "accuracy": 5.0,
        "timestamp": int(time.time() * 1000), "contributor_count": 3, "confidence": 0.9,
        "source": "test", "seq": seq,
    })


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def ws_client(gw: Gateway, session: aiohttp.ClientSession, *channels: str):
    ws = await session.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('rider', admin=True)}")
    await ws.receive_json(timeout=5)
    for i, channel in enumerate(channels):
        await ws.send_json({"type": "subscribe", "id": str(i), "channel": channel})
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    return ws


async def test_location_report_reaches_websocket_with_stop_arrivals(kafka_bootstrap):
    test_id = f"t{uuid.uuid4().hex[:8]}"
    gw = await start_gateway(kafka_bootstrap, test_id)
    pattern = load_feed().routes["500-D"].directions["UP"]
    position = pattern.shape.length_m * 0.3
    next_stop = next(s for s in pattern.stops if s.dist_m > position)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await ws_client(gw, session, "route:500-D:UP", f"stop:{next_stop.stop_id}:arrivals")
            await produce(kafka_bootstrap, f"{test_id}.location", [(b"500-D", location_record(1))])
            got: dict[str, dict] = {}
            deadline = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < deadline:
                msg = await ws.receive_json(timeout=30)
                if msg["type"] == "channel_message":
                    got[msg["message"]["type"]] = msg["message"]
            loc, arrival = got["location_update"], got["stop_arrival"]
            assert loc["vehicle_id"] == "KA-01-F-0001" and loc["data_freshness"] == "fresh"
            assert loc["next_stop_id"] == next_stop.stop_id
            assert arrival["stop_id"] == next_stop.stop_id and arrival["route_number"]
            expected_eta = (next_stop.dist_m - position) / (20.0 / 3.6)
            assert abs(arrival["eta_seconds"] - expected_eta) < max(30.0, 0.2 * expected_eta)
            await ws.close()
    finally:
        await gw.stop()


async def test_malformed_records_go_to_the_dlq_and_valid_ones_keep_flowing(kafka_bootstrap):
    from aiokafka import AIOKafkaConsumer

    test_id = f"t{uuid.uuid4().hex[:8]}"
    gw = await start_gateway(kafka_bootstrap, test_id)
    bad = [
        b"{not json", b'{"vehicle_id": 5}', b"\x08\x96\x01 not protobuf either",
        orjson.dumps({**orjson.loads(location_record(0)), "latitude": 48.85}),  # Paris
        orjson.dumps({**orjson.loads(location_record(0)), "route_id": "NO-SUCH-ROUTE"}),
    ]
    records = []
    for i in range(10):
        records.append((b"500-D", location_record(i, vehicle=f"V{i}")))
        if i < len(bad):
            records.append((b"500-D", bad[i]))
    try:
        async with aiohttp.ClientSession() as session:
            ws = await ws_client(gw, session, "route:500-D:UP")
            await produce(kafka_bootstrap, f"{test_id}.location", records)
            seen = set()
            deadline = time.monotonic() + 30
            while len(seen) < 10 and time.monotonic() < deadline:
                msg = await ws.receive_json(timeout=30)
                if msg["type"] == "channel_message":
                    seen.add(msg["message"]["vehicle_id"])
            assert seen == {f"V{i}" for i in range(10)}
            await ws.close()
        consumer = AIOKafkaConsumer(f"{test_id}.dlq", bootstrap_servers=kafka_bootstrap,
                                    auto_offset_reset="earliest", group_id=f"dlq-{test_id}")
        await consumer.start()
        try:
            dead = []
            deadline = time.monotonic() + 20
            while len(dead) < len(bad) and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    dead.extend(batch)
        finally:
            await consumer.stop()
        assert sorted(r.value for r in dead) == sorted(bad)
        reasons = [dict(r.headers)["fastgw-reason"].decode() for r in dead]
        assert {"malformed_json", "schema", "bad_coordinates", "unknown_route"} <= set(reasons)
        assert gw.kafka.stats.dead_lettered == len(bad)
    finally:
        await gw.stop()


async def test_broker_restart_mid_stream_loses_nothing(kafka_bootstrap, kafka_control):
    test_id = f"t{uuid.uuid4().hex[:8]}"
    gw = await start_gateway(kafka_bootstrap, test_id)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await ws_client(gw, session, "route:500-D:UP")
            seen: set[str] = set()

            async def collect(expected: int, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while len(seen) < expected and time.monotonic() < deadline:
                    try:
                        msg = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        break
                    if msg["type"] == "channel_message":
                        seen.add(msg["message"]["vehicle_id"])

            await produce(kafka_bootstrap, f"{test_id}.location",
                          [(b"500-D", location_record(i, vehicle=f"A{i}")) for i in range(20)])
            await collect(20, 30)
            await kafka_control.stop()
            await asyncio.sleep(2)  # the gateway notices, keeps serving WebSockets
            async with session.get(f"http://127.0.0.1:{gw.port}/healthz") as r:
                assert r.status == 200
            await kafka_control.start()
            await produce(kafka_bootstrap, f"{test_id}.location",
                          [(b"500-D", location_record(i, vehicle=f"B{i}")) for i in range(20)])
            await collect(40, 60)
            assert seen == {f"A{i}" for i in range(20)} | {f"B{i}" for i in range(20)}
            await ws.close()
    finally:
        await gw.stop()


@pytest.mark.parametrize("fmt", ["json", "gtfs-rt"])
async def test_simulate_command_produces_records_the_processor_accepts(kafka_bootstrap, fmt):
    import subprocess
    import sys

    from aiokafka import AIOKafkaConsumer

    from fastgw.processing.pipeline import build_processors

    topic = f"sim-{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fastgw", "simulate", "--kafka", kafka_bootstrap, "--topic", topic,
         "--buses", "40", "--rate", "80", "--duration", "1.5", "--format", fmt, "--seed", "7"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    produced = int(result.stdout.split()[1])
    # How many of the 40 buses are in service depends on the time of day in Bengaluru (the
    # simulator follows the timetable: at 2 a.m. IST fewer than 40 run), so no fixed count.
    assert produced > 0
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=f"check-{topic}")
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
            if fmt == "json" and len(records) >= produced:
                break
            if fmt == "gtfs-rt" and records and time.monotonic() > deadline - 15:
                break
    finally:
        await consumer.stop()
    location = build_processors()["location"]
    updates = 0
    for record in records:
        assert record.key is not None
        outputs = location.process(record.value, record.key, record.timestamp)
        updates += sum(1 for o in outputs if o.message["type"] == "location_update" and o.channel == "system:all_updates")
    assert updates >= (produced if fmt == "json" else 1)


@pytest.mark.parametrize("engine", ["memory", "redis"])
async def test_notification_for_offline_user_is_queued_before_commit(kafka_bootstrap, engine, request):
    """With Redis the queue is Redis's, and the commit waits until Redis has stored it."""
    test_id = f"t{uuid.uuid4().hex[:8]}"
    options = {"redis": request.getfixturevalue("redis_url")} if engine == "redis" else {}
    gw = await start_gateway(kafka_bootstrap, test_id, **options)
    queued_at_commit: list[int] = []

    async def first_commit_sees_queue() -> None:  # runs between settle() and commit()
        queued_at_commit.append(len(await gw.offline.pending("rider5")))

    try:
        settle = gw.kafka.settle

        async def settle_then_look() -> None:
            await settle()
            if not queued_at_commit:
                await first_commit_sees_queue()

        gw.kafka.settle = settle_then_look
        record = orjson.dumps({"notification_id": "n1", "user_id": "rider5", "title": "Your bus is near",
                               "body": "500-D is 2 stops away", "category": "trip",
                               "timestamp": int(time.time() * 1000)})
        await produce(kafka_bootstrap, f"{test_id}.notifications", [(b"rider5", record)])
        # stored in the offline queue, then committed
        assert await eventually(lambda: gw.kafka.stats.commits >= 1, timeout=30)
        assert queued_at_commit == [1]
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('rider5')}")
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "subscribe", "id": "n", "channel": "user:rider5:notifications"})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
            queued = await ws.receive_json(timeout=5)
            assert queued["type"] == "queued_message"
            assert queued["message"]["message"]["title"] == "Your bus is near"
            assert (await ws.receive_json(timeout=5))["type"] == "queue_sync_complete"
            await ws.close()
    finally:
        await gw.stop()


async def test_broker_down_at_start_up_then_back(kafka_bootstrap, kafka_control):
    test_id = f"t{uuid.uuid4().hex[:8]}"
    await kafka_control.stop()
    gw = await start_gateway(kafka_bootstrap, test_id)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await ws_client(gw, session, "route:500-D:UP")  # WebSockets are served meanwhile
            assert await eventually(lambda: gw.kafka.stats.reconnects >= 1, timeout=30)
            await kafka_control.start()
            await produce(kafka_bootstrap, f"{test_id}.location", [(b"500-D", location_record(1, vehicle="late"))])
            deadline = time.monotonic() + 60
            got = None
            while got is None and time.monotonic() < deadline:
                msg = await ws.receive_json(timeout=60)
                if msg["type"] == "channel_message":
                    got = msg["message"]["vehicle_id"]
            assert got == "late"
            await ws.close()
    finally:
        await gw.stop()


async def test_drain_commits_what_was_consumed_and_stops_the_consumers(kafka_bootstrap):
    """The graceful stop ends each consumer after its batch in hand is published and
    committed: the group's committed offset covers every record the gateway handled."""
    from aiokafka.admin import AIOKafkaAdminClient

    test_id = f"t{uuid.uuid4().hex[:8]}"
    gw = await start_gateway(kafka_bootstrap, test_id)
    await produce(kafka_bootstrap, f"{test_id}.location", [(b"500-D", location_record(i)) for i in range(30)])
    assert await eventually(lambda: gw.kafka.stats.records["location"] >= 30, timeout=30)
    await gw.stop(drain_period=1.0)
    assert not any(gw.kafka.stats.up.values())
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"g-{test_id}.location")
    finally:
        await admin.close()
    assert sum(meta.offset for meta in offsets.values()) == 30
