"""``GET /metrics``: every family is there, and moves when it should. Real sockets, uvloop.

The exposition is parsed with prometheus_client's own parser, as a scraper would.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastgw.config import Config
from fastgw.server import Gateway
from fastgw.stats import LATENCY_BUCKETS, LatencyHistogram
from tests.conftest import SECRET, eventually, token

LOCATION = {"type": "location_update", "vehicle_id": "KA-01-F-1234", "route_id": "500-D", "direction": "UP",
            "latitude": 12.97, "longitude": 77.59, "speed": 23.5, "heading": 90.0}
ROUTE = "route:500-D:UP"
ADMIN = {"Authorization": f"Bearer {token('ops', admin=True)}"}

#: Families every gateway exposes (memory engine, no Kafka).
CORE_FAMILIES = {
    "fastgw_info": "gauge",
    "fastgw_draining": "gauge",
    "fastgw_connections_max": "gauge",
    "fastgw_outbound_limit_bytes": "gauge",
    "fastgw_connections": "gauge",
    "fastgw_connections_opened": "counter",
    "fastgw_connections_closed": "counter",
    "fastgw_connections_rejected": "counter",
    "fastgw_outbound_buffered_bytes": "gauge",
    "fastgw_outbound_buffered_bytes_max": "gauge",
    "fastgw_outbound_backlogged_connections": "gauge",
    "fastgw_batch_queued_messages": "gauge",
    "fastgw_messages_published": "counter",
    "fastgw_messages_routed": "counter",
    "fastgw_messages_delivered": "counter",
    "fastgw_bytes_written": "counter",
    "fastgw_batched_bytes": "counter",
    "fastgw_batch_writes": "counter",
    "fastgw_batch_size_messages": "histogram",
    "fastgw_delivery_latency_seconds": "histogram",
    "fastgw_gateway_latency_seconds": "histogram",
    "fastgw_subscriptions": "gauge",
    "fastgw_channels": "gauge",
    "fastgw_offline_replayed": "counter",
    "fastgw_resumes": "counter",
    "fastgw_engine_up": "gauge",
    "fastgw_socketio_sessions": "gauge",
    "fastgw_socketio_unjoined_sessions": "gauge",
    "fastgw_socketio_handoffs": "counter",
    "fastgw_metrics_errors": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_resident_memory_bytes": "gauge",
}


class Scrape:
    """One parsed ``/metrics`` answer: families by name, sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, frozenset(s.labels.items())): s.value
                        for f in self.families.values() for s in f.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), default)

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


async def scrape(gw: Gateway, accept: str | None = None) -> Scrape:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.port}/metrics", headers=headers) as r:
        assert r.status == 200
        return Scrape(await r.text())


async def publish(gw: Gateway, channel: str, message: dict) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{gw.port}/api/publish", headers=ADMIN,
                          json={"channel": channel, "message": message}) as r:
            assert r.status == 200, await r.text()


async def client(session: aiohttp.ClientSession, gw: Gateway, user: str = "rider", query: str = ""):
    ws = await session.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token(user)}{query}")
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    return ws


async def subscribe(ws, channel: str, rid: str = "s") -> None:
    await ws.send_json({"type": "subscribe", "id": rid, "channel": channel})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "subscribed", reply


async def until(gw: Gateway, predicate, timeout: float = 10.0) -> Scrape:
    """Scrape until ``predicate(scrape)`` holds; fails with the last scrape's text."""
    deadline = time.monotonic() + timeout
    while True:
        result = await scrape(gw)
        if predicate(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the condition:\n{result.text}")
        await asyncio.sleep(0.05)


# --- the endpoint ---------------------------------------------------------------------------


async def test_every_family_is_exposed_with_its_type_and_no_user_data(gateway):
    async with aiohttp.ClientSession() as s:
        ws = await client(s, gateway, "rider-8d1f2c", "&device=ios")
        await subscribe(ws, "user:rider-8d1f2c:notifications")
        await subscribe(ws, ROUTE, "r")
        async with s.get(f"http://127.0.0.1:{gateway.port}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = Scrape(await r.text())
        await ws.close()
    for name, kind in CORE_FAMILIES.items():
        assert name in m.families, name
        assert m.families[name].type == kind, name
    assert m.value("fastgw_info", node="test", version=m.labelsets("fastgw_info")[0]["version"],
                   core=m.labelsets("fastgw_info")[0]["core"], engine="memory") == 1
    assert "fastgw_kafka_consumer_lag_records" not in m.families  # no --kafka
    assert "fastgw_redis_up" not in m.families  # memory engine
    assert "fastgw_influx_pushes" not in m.families  # no --influx-url
    # labels carry families, never a channel name or a user id
    assert "rider-8d1f2c" not in m.text and "500-D" not in m.text
    assert m.value("fastgw_subscriptions", channel_type="user") == 1
    assert m.value("fastgw_subscriptions", channel_type="route") == 1


async def test_openmetrics_is_served_when_asked(gateway):
    m = await scrape(gateway, accept="application/openmetrics-text; version=1.0.0")
    assert m.text.rstrip().endswith("# EOF")
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{gateway.port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")


async def test_each_gateway_has_its_own_registry(start_gateway):
    a, b = await start_gateway(node_id="node-a"), await start_gateway(node_id="node-b")
    async with aiohttp.ClientSession() as s:
        ws = await client(s, a, query="&device=web")
        ma, mb = await scrape(a), await scrape(b)
        await ws.close()
    labels = dict(protocol="native", profile="full", device="web")
    assert ma.value("fastgw_connections", **labels) == 1
    assert mb.value("fastgw_connections", **labels) == 0
    assert ma.labelsets("fastgw_info")[0]["node"] == "node-a"
    assert mb.labelsets("fastgw_info")[0]["node"] == "node-b"


# --- connections ------------------------------------------------------------------------------


async def test_connections_by_profile_and_device_then_closed_normal(gateway):
    cellular_android = dict(protocol="native", profile="cellular", device="android")
    before = await scrape(gateway)
    assert before.value("fastgw_connections", **cellular_android) == 0
    async with aiohttp.ClientSession() as s:
        ws = await client(s, gateway, query="&profile=cellular&device=android")
        during = await scrape(gateway)
        assert during.value("fastgw_connections", **cellular_android) == 1
        assert during.value("fastgw_connections_opened_total") == before.value("fastgw_connections_opened_total") + 1
        await ws.close()
    after = await until(gateway, lambda m: m.value("fastgw_connections", **cellular_android) == 0)
    assert after.value("fastgw_connections_closed_total", reason="normal") == \
        before.value("fastgw_connections_closed_total", reason="normal") + 1
    # every close reason has a series from the start (rate() needs it), slow_consumer included
    for reason in ("normal", "slow_consumer", "heartbeat_timeout", "protocol_error", "flood", "shutdown"):
        assert ("fastgw_connections_closed_total", frozenset({("reason", reason)})) in before.samples


async def test_bad_token_counts_as_rejected_auth(gateway):
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"ws://127.0.0.1:{gateway.port}/ws?token=not-a-jwt")
        assert err.value.status == 401
    m = await scrape(gateway)
    assert m.value("fastgw_connections_rejected_total", reason="auth") == 1
    assert m.value("fastgw_connections_rejected_total", reason="limit") == 0


async def test_connection_limit_rejection(start_gateway):
    gw = await start_gateway(max_connections=1)
    async with aiohttp.ClientSession() as s:
        ws = await client(s, gw)
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('second')}")
        assert err.value.status == 503
        m = await scrape(gw)
        await ws.close()
    assert m.value("fastgw_connections_rejected_total", reason="limit") == 1
    assert m.value("fastgw_connections_max") == 1


async def test_slow_consumer_closed_with_reason_slow_consumer(start_gateway):
    from tests.rawws import RawWebSocket

    gw = await start_gateway(outbound_limit=64 * 1024)
    slow = await asyncio.to_thread(RawWebSocket, gw.port, f"/ws?token={token('slow')}", rcvbuf=4096)
    try:
        await asyncio.to_thread(slow.recv_json)
        slow.send_json({"type": "subscribe", "id": "s", "channel": ROUTE})
        assert (await asyncio.to_thread(slow.recv_json))["type"] == "subscribed"
        big = {**LOCATION, "padding": "x" * 32_000}
        saw_backlog = False
        for seq in range(600):  # the client never reads: the kernel buffers fill, then ours
            gw.hub.publish(ROUTE, {**big, "seq": seq})
            await asyncio.sleep(0)
            if not saw_backlog and seq % 10 == 0:
                m = await scrape(gw)
                saw_backlog = m.value("fastgw_outbound_buffered_bytes_max") > 0
            if gw.stats.connections_closed.get("slow_consumer"):
                break
        m = await until(gw, lambda m: m.value("fastgw_connections_closed_total", reason="slow_consumer") == 1)
        assert saw_backlog  # the send buffer grew before the close
        assert m.value("fastgw_connections_closed_total", reason="normal") == 0
    finally:
        slow.close()


# --- messages, deliveries, latency --------------------------------------------------------------


async def test_publish_counts_by_channel_type_and_latency_per_delivery(start_gateway):
    gw = await start_gateway(window_cellular_ms=50)
    before = await scrape(gw)
    async with aiohttp.ClientSession() as s:
        full = await client(s, gw, "a")
        cellular = await client(s, gw, "b", "&profile=cellular")
        for ws in (full, cellular):
            await subscribe(ws, ROUTE)
        await publish(gw, ROUTE, LOCATION)
        for ws in (full, cellular):
            msg = await ws.receive_json(timeout=5)
            assert msg["type"] == "channel_message"
        m = await until(gw, lambda m: m.value("fastgw_delivery_latency_seconds_count") == 2)
        await full.close()
        await cellular.close()
    assert m.value("fastgw_messages_published_total", channel_type="route") == 1
    assert m.value("fastgw_messages_published_total", channel_type="alerts") == 0
    assert m.value("fastgw_messages_routed_total", channel_type="route") == 1
    assert m.value("fastgw_messages_delivered_total", channel_type="route") == 2
    assert m.value("fastgw_bytes_written_total") > before.value("fastgw_bytes_written_total")
    assert m.value("fastgw_batched_bytes_total") > 0
    assert m.value("fastgw_batch_writes_total") >= 1
    assert m.value("fastgw_batch_size_messages_count") >= 1
    assert m.value("fastgw_batch_size_messages_bucket", le="1.0") >= 1
    # one observation per delivery (full: after fanout; cellular: after its flush)
    assert m.value("fastgw_gateway_latency_seconds_count") == 2
    assert m.value("fastgw_delivery_latency_seconds_bucket", le="+Inf") == 2
    p50, p99 = gw.stats.latency_quantiles()
    assert p50 is not None and p99 is not None and 0 <= p50 <= p99


async def test_latency_is_measured_from_the_messages_own_timestamp(gateway):
    """A location observed 20 s before it was published: the delivery latency counts
    from the observation; the gateway latency from the publish."""
    from fastgw.messages import iso_from_epoch

    async with aiohttp.ClientSession() as s:
        ws = await client(s, gateway)
        await subscribe(ws, ROUTE)
        await publish(gateway, ROUTE, {**LOCATION, "timestamp": iso_from_epoch(time.time() - 20)})
        await ws.receive_json(timeout=5)
        m = await until(gateway, lambda m: m.value("fastgw_delivery_latency_seconds_count") == 1)
        await ws.close()
    assert m.value("fastgw_delivery_latency_seconds_bucket", le="10.0") == 0  # older than 10 s...
    assert m.value("fastgw_delivery_latency_seconds_bucket", le="+Inf") == 1
    assert m.value("fastgw_delivery_latency_seconds_sum") >= 20
    assert m.value("fastgw_gateway_latency_seconds_count") == 1  # ...its publish was not
    assert m.value("fastgw_gateway_latency_seconds_sum") < m.value("fastgw_delivery_latency_seconds_sum")


async def test_batched_latency_is_observed_when_the_flush_writes(start_gateway):
    gw = await start_gateway(window_cellular_ms=200)
    async with aiohttp.ClientSession() as s:
        ws = await client(s, gw, query="&profile=cellular")
        await subscribe(ws, ROUTE)
        other = await client(s, gw, "c", query="&profile=cellular")
        await subscribe(other, "stop:20558:arrivals")  # a second channel: its own group
        gw.hub.publish(ROUTE, LOCATION)  # same event loop: the flush cannot have run yet
        gw.hub.publish(ROUTE, {**LOCATION, "vehicle_id": "KA-01-F-9999"})
        assert gw.stats.delivery_latency.count == 0  # queued, not written
        assert gw.stats.deliveries == 2
        batch = await ws.receive_json(timeout=5)
        assert batch["type"] == "channel_message" or batch["type"] == "batched_messages"
        await eventually(lambda: gw.stats.delivery_latency.count == 2)
        assert gw.stats.batch_sizes.count == 1 and gw.stats.batch_sizes.sum == 2  # one write, two messages
        await ws.close()
        await other.close()
    assert gw.stats.delivery_latency.count == 2


async def test_subscriptions_and_channels_by_type(gateway):
    async with aiohttp.ClientSession() as s:
        a, b = await client(s, gateway, "a"), await client(s, gateway, "b")
        for ws in (a, b):
            await subscribe(ws, ROUTE)
        await subscribe(a, "stop:20558:arrivals", "t")
        await subscribe(a, "alerts:all", "u")
        m = await scrape(gateway)
        assert m.value("fastgw_subscriptions", channel_type="route") == 2
        assert m.value("fastgw_channels", channel_type="route") == 1
        assert m.value("fastgw_subscriptions", channel_type="stop") == 1
        assert m.value("fastgw_subscriptions", channel_type="alerts") == 1
        assert gateway.hub.top_channels(1) == [(ROUTE, 2, 0)]  # for the admin dashboard
        gateway.hub.publish("alerts:all", {"type": "service_alert", "alert_id": "a1", "title": "t"})
        assert gateway.hub.top_channels(1, by="messages") == [("alerts:all", 1, 1)]
        assert (await a.receive_json(timeout=5))["channel"] == "alerts:all"
        await a.send_json({"type": "unsubscribe", "id": "x", "channel": ROUTE})
        assert (await a.receive_json(timeout=5))["type"] == "unsubscribed"
        m = await scrape(gateway)
        assert m.value("fastgw_subscriptions", channel_type="route") == 1
        await a.close()
        await b.close()


def test_latency_quantiles_cover_the_recent_window_only():
    h = LatencyHistogram()
    t0 = 1_000_000.0
    h.observe(0.004, 99, t0)
    h.observe(0.9, 1, t0)
    p50, p99 = h.quantiles((0.5, 0.99), 60.0, t0 + 5)
    assert 0.002 < p50 <= 0.005 and 0.002 < p99 <= 0.005
    p50, p999 = h.quantiles((0.5, 0.999), 60.0, t0 + 5)
    assert 0.75 < p999 <= 1.0
    assert h.quantiles((0.5, 0.99), 60.0, t0 + 200) == [None, None]  # two minutes later: gone
    assert h.count == 100 and h.cumulative()[-1] == (float("inf"), 100)  # the totals stay
    h.observe(-0.5, 1, t0)  # a clock behind the publisher's: counted as 0
    assert h.counts[0] == 1 and len(h.counts) == len(LATENCY_BUCKETS) + 1


# --- Redis ---------------------------------------------------------------------------------------


async def test_redis_up_rtt_and_round_trips(start_gateway, redis_url):
    gw = await start_gateway(redis=redis_url)
    async with aiohttp.ClientSession() as s:
        ws = await client(s, gw)
        await subscribe(ws, ROUTE)
        await publish(gw, ROUTE, LOCATION)
        assert (await ws.receive_json(timeout=5))["type"] == "channel_message"
        m = await until(gw, lambda m: m.get("fastgw_redis_received_total") >= 1)
        await ws.close()
    assert m.value("fastgw_redis_up") == 1
    assert m.value("fastgw_engine_up", engine="redis") == 1
    assert m.value("fastgw_redis_rtt_seconds") > 0
    assert m.value("fastgw_redis_round_trips_total") >= 1
    assert m.value("fastgw_redis_commands_total") >= m.value("fastgw_redis_round_trips_total")
    assert m.value("fastgw_redis_published_total") >= 1
    assert m.value("fastgw_redis_lost_total") == 0
    assert m.value("fastgw_redis_outage_buffer_messages") == 0
    assert m.value("fastgw_redis_live_instances") >= 1


async def test_redis_down_then_up_moves_the_gauge(start_gateway, redis_private):
    gw = await start_gateway(redis=redis_private.url)
    assert (await scrape(gw)).value("fastgw_redis_up") == 1
    redis_private.kill9()
    try:
        for n in range(200):  # traffic makes the engine notice; bounded
            gw.hub.publish("alerts:all", {"type": "service_alert", "alert_id": f"a{n}", "title": "t"})
            if not gw.engine.status()["ok"]:
                break
            await asyncio.sleep(0.1)
        m = await until(gw, lambda m: m.value("fastgw_redis_up") == 0, timeout=30)
        assert m.value("fastgw_engine_up", engine="redis") == 0
        assert m.value("fastgw_redis_outage_buffer_messages") >= 1
    finally:
        await asyncio.to_thread(redis_private.start)
    m = await until(gw, lambda m: m.value("fastgw_redis_up") == 1, timeout=30)
    assert m.value("fastgw_redis_outages_total") >= 1 and m.value("fastgw_redis_reconnects_total") >= 1


# --- Kafka ----------------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_kafka_lag_per_partition_reaches_zero_and_dlq_counts(kafka_bootstrap):
    """Records produced before the gateway starts: after consumption every assigned
    partition of the location topic has a lag sample, and it is 0; rejects are counted."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from tests.test_kafka_gateway import location_record, topics_for

    test_id = f"m{uuid.uuid4().hex[:8]}"
    topic = f"{test_id}.location"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for seq in range(30):
            await producer.send_and_wait(topic, location_record(seq), partition=seq % 3)
        for partition in range(3):
            await producer.send_and_wait(topic, b"{not json", partition=partition)
    finally:
        await producer.stop()

    gw = Gateway(Config(
        host="127.0.0.1", port=0, jwt_secret=SECRET, simulator=False, kafka=kafka_bootstrap,
        kafka_topics=topics_for(test_id), kafka_group_prefix=f"g-{test_id}", kafka_dlq_topic=f"{test_id}.dlq",
        node_id="kafka-test",
    ))
    await gw.start()
    try:
        def consumed(m: Scrape) -> bool:
            lags = {labels["partition"]: m.value("fastgw_kafka_consumer_lag_records", **labels)
                    for labels in m.labelsets("fastgw_kafka_consumer_lag_records") if labels["topic"] == topic}
            return (m.get("fastgw_kafka_records_total", role="location") == 33
                    and sorted(lags) == ["0", "1", "2"] and set(lags.values()) == {0.0})

        m = await until(gw, consumed, timeout=60)
        assert m.value("fastgw_kafka_consumer_up", role="location") == 1
        assert m.value("fastgw_kafka_dead_lettered_total") == 3
        assert sum(m.value("fastgw_kafka_rejected_total", **labels)
                   for labels in m.labelsets("fastgw_kafka_rejected_total")) == 3
        assert m.value("fastgw_kafka_published_total", role="location") >= 30
        assert m.value("fastgw_kafka_commits_total") >= 1
        published = sum(m.value("fastgw_messages_published_total", **labels)
                        for labels in m.labelsets("fastgw_messages_published_total"))
        assert published == m.value("fastgw_kafka_published_total", role="location")
        assert m.value("fastgw_messages_published_total", channel_type="route") >= 1
        assert {"role": "location", "topic": topic, "partition": "1"} in m.labelsets("fastgw_kafka_consumer_lag_records")
    finally:
        await gw.stop()
    assert gw.kafka.stats.up["location"] is False and "location" not in gw.kafka.stats.lag


@pytest.mark.kafka
async def test_kafka_lag_counts_records_until_they_are_committed(kafka_bootstrap):
    """A consumer held before its commit (the engine has not accepted the batch): the
    records fetched and not committed are its lag; released, the lag drains to 0."""
    from tests.test_kafka_gateway import produce

    from fastgw.sources.kafka import KafkaSettings, KafkaSource

    topic = f"lag{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topic, [(None, b"{}") for _ in range(20)])
    release = asyncio.Event()
    settled = 0

    async def settle() -> None:
        nonlocal settled
        settled += 1
        await release.wait()

    class Nothing:
        def process(self, value, key, timestamp):
            return []

    source = KafkaSource(
        KafkaSettings(bootstrap=kafka_bootstrap, topics={"location": topic}, group_prefix=f"g-{topic}",
                      max_batch=5),
        lambda channel, message: None, {"location": Nothing()}, settle=settle,
    )
    task = asyncio.create_task(source.run())
    try:
        assert await eventually(lambda: settled == 1, timeout=60)
        lag = source.stats.lag["location"]  # the broker made the topic: 1 or more partitions
        assert {t for t, _ in lag} == {topic} and sum(lag.values()) == 20  # 5 in hand + 15 behind
        release.set()

        def drained() -> bool:
            now = source.stats.lag.get("location", {})
            return set(now) == set(lag) and set(now.values()) == {0}

        assert await eventually(drained, timeout=30)
        assert source.stats.records["location"] == 20
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
