"""The admin dashboard over HTTP and WebSocket: the page, its data routes, ``system:stats``."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from fastgw import admin
from fastgw.admin.shapes import SCALE, shapes_document, simplify
from fastgw.channels import Access, Principal, can_subscribe, parse_channel
from fastgw.transit.gtfs import load_feed
from tests.conftest import token

DATA_ROUTES = ["/admin/api/session", "/admin/api/shapes", "/admin/api/stats"]


def http(gw, path: str) -> str:
    return f"http://127.0.0.1:{gw.port}{path}"


async def get(gw, path: str, tok: str | None = None, *, query: bool = False) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if tok is not None and not query:
        headers["Authorization"] = f"Bearer {tok}"
    if tok is not None and query:
        path += f"?token={tok}"
    async with aiohttp.ClientSession() as s, s.get(http(gw, path), headers=headers, allow_redirects=False) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# --- the page -----------------------------------------------------------------------


async def test_page_is_served_without_a_token(gateway):
    status, headers, body = await get(gateway, "/admin")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    assert "<title>fastgw · admin</title>" in html and 'id="login-form"' in html and 'id="stat-connections"' in html
    assert "/admin/static/app.js" in html and "/admin/static/map.js" in html and "/admin/static/style.css" in html
    assert "ODbL 1.0" in html and "Vivek Matthew" in html  # the data's attribution, in the footer
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp


async def test_static_files_and_nothing_else(gateway):
    for name, kind in [("app.js", "text/javascript"), ("map.js", "text/javascript"), ("style.css", "text/css")]:
        status, headers, body = await get(gateway, f"/admin/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert b"http://" not in body and b"https://" not in body and b"import(" not in body
    for name in ["index.html", "nope.js", "..%2F__init__.py", "%2E%2E%2Fshapes.py"]:
        status, _, _ = await get(gateway, f"/admin/static/{name}")
        assert status == 404, name
    status, headers, _ = await get(gateway, "/admin/")
    assert status == 308 and headers["Location"] == "/admin"


def test_static_files_are_package_data():
    from importlib import resources

    folder = resources.files("fastgw.admin").joinpath("static")
    assert sorted(p.name for p in folder.iterdir() if p.name in admin.STATIC_FILES) == sorted(admin.STATIC_FILES)


# --- data routes: admin only --------------------------------------------------------


@pytest.mark.parametrize("path", DATA_ROUTES)
async def test_data_routes_need_an_admin_token(gateway, path):
    status, headers, body = await get(gateway, path)
    assert status == 401 and orjson.loads(body)["error"] == "unauthorized"
    status, _, body = await get(gateway, path, "not-a-jwt")
    assert status == 401 and orjson.loads(body)["error"] == "unauthorized"
    status, _, body = await get(gateway, path, token("rider42"))
    assert status == 403 and orjson.loads(body) == {"error": "forbidden", "message": "admin token required"}
    for query in (False, True):  # header or ?token=
        status, _, _ = await get(gateway, path, token("ops", admin=True), query=query)
        assert status == 200


async def test_session_says_who_and_where(gateway):
    status, headers, body = await get(gateway, "/admin/api/session", token("ops", admin=True))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    session = orjson.loads(body)
    assert session["user"] == "ops" and session["admin"] is True and session["node"] == "test"
    assert session["engine"] == "memory"
    assert session["channels"] == {"updates": "system:all_updates", "stats": "system:stats"}
    assert session["attribution"] == load_feed().attribution


async def test_shapes_document(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.get(http(gateway, "/admin/api/shapes"), headers={
            "Authorization": f"Bearer {token('ops', admin=True)}", "Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
            assert int(resp.headers["Content-Length"]) < 20_000  # compressed on the wire
            doc = await resp.json()
    feed = load_feed()
    assert doc["attribution"] == feed.attribution and doc["feed_version"] == feed.feed_version
    assert doc["scale"] == SCALE and doc["encoding"] == "delta"
    assert len(doc["routes"]) == len(feed.routes) == 40
    assert doc["points"]["sent"] < doc["points"]["source"]
    min_lat, min_lon, max_lat, max_lon = doc["bbox"]
    for route in doc["routes"]:
        source = feed.routes[route["route_id"]]
        assert route["short_name"] == source.short_name and route["color"] == "#" + source.color
        assert set(route["directions"]) == set(source.directions)
        for direction, d in route["directions"].items():
            shape = source.directions[direction].shape
            points = d["points"]
            assert len(points) % 2 == 0 and all(isinstance(v, int) for v in points)
            lat = lon = 0
            decoded = []
            for i in range(0, len(points), 2):
                lat += points[i]
                lon += points[i + 1]
                decoded.append((lat / SCALE, lon / SCALE))
            # the ends are kept exactly (to 1e-5 degree), everything inside the bbox
            assert decoded[0] == pytest.approx((shape.lats[0], shape.lons[0]), abs=1e-5)
            assert decoded[-1] == pytest.approx((shape.lats[-1], shape.lons[-1]), abs=1e-5)
            assert all(min_lat <= a <= max_lat and min_lon <= b <= max_lon for a, b in decoded)


def test_simplify_keeps_corners_and_drops_collinear_points():
    lats = [12.90, 12.91, 12.92, 12.93, 12.93, 12.93]
    lons = [77.50, 77.50, 77.50, 77.50, 77.51, 77.52]  # north, then east: one corner
    assert simplify(lats, lons, 2.0) == [0, 3, 5]
    assert simplify(lats[:2], lons[:2]) == [0, 1]
    # a route that doubles back: the far point is kept (distance to the segment, not the line)
    assert simplify([12.9, 12.95, 12.91], [77.5, 77.5, 77.5], 5.0) == [0, 1, 2]
    doc = shapes_document(load_feed(), tolerance_m=8.0)
    assert doc["tolerance_m"] == 8.0 and doc["points"]["sent"] < shapes_document(load_feed())["points"]["sent"]


# --- the channel --------------------------------------------------------------------


def test_system_stats_is_an_admin_channel():
    channel = parse_channel("system:stats")
    assert channel.kind == "system" and channel.access is Access.ADMIN
    assert can_subscribe(channel, Principal("ops", admin=True))
    assert not can_subscribe(channel, Principal("rider42")) and not can_subscribe(channel, Principal(None))


async def _ws(gw, tok: str):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={tok}")
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    return session, ws


async def test_system_stats_frames_reach_an_admin(start_gateway):
    gateway = await start_gateway(simulator=True, simulator_interval=0.2, simulator_buses=20)
    session, ws = await _ws(gateway, token("ops", admin=True))
    try:
        await ws.send_json({"type": "subscribe", "id": "s", "channel": "system:stats"})
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "subscribed" and reply["channel"] == "system:stats"
        await ws.send_json({"type": "subscribe", "id": "u", "channel": "route:500-D:all"})
        frames = []
        deadline = time.monotonic() + 6
        while len(frames) < 3 and time.monotonic() < deadline:
            frame = await ws.receive_json(timeout=5)
            if frame["type"] == "channel_message" and frame["channel"] == "system:stats":
                frames.append(frame)
        assert len(frames) >= 3, "system:stats should arrive once a second"
        stamps = [f["messageId"] for f in frames]
        assert len(set(stamps)) == len(stamps)
        m = frames[-1]["message"]
        assert m["type"] == "system_stats" and m["node"] == "test" and m["engine"] == "memory"
        assert set(m) == {"type", "node", "engine", "engine_ok", "timestamp", "interval_s", "connections",
                          "messages_per_s", "deliveries_per_s", "bytes_out_per_s", "latency_ms", "gateway_latency_ms",
                          "channels", "subscriptions", "top_channels", "instances"}
        assert m["connections"] == 1
        assert 0.5 < m["interval_s"] < 1.5
        assert m["messages_per_s"] > 20  # 20 buses × 3 channels, 5 ticks a second
        assert m["deliveries_per_s"] > 0
        for key in ("latency_ms", "gateway_latency_ms"):
            assert set(m[key]) == {"p50", "p99"}
            for value in m[key].values():
                assert value is None or (isinstance(value, float) and value >= 0)
        if hasattr(gateway.stats, "latency_quantiles"):  # deliveries happened: measured
            assert m["latency_ms"]["p99"] is not None
        top = {c["channel"]: c["subscribers"] for c in m["top_channels"]}
        assert top == {"system:stats": 1, "route:500-D:all": 1}
        assert m["channels"] == 2 and m["subscriptions"] == 2
        assert m["instances"] == [{"node": "test", "connections": 1}]
        # the same figures over HTTP
        status, _, body = await get(gateway, "/admin/api/stats", token("ops", admin=True))
        now = orjson.loads(body)
        assert status == 200 and now["type"] == "system_stats" and now["connections"] == 1
    finally:
        await ws.close()
        await session.close()


async def test_system_stats_is_forbidden_to_a_rider(gateway):
    session, ws = await _ws(gateway, token("rider42"))
    try:
        await ws.send_json({"type": "subscribe", "id": "s", "channel": "system:stats"})
        reply = await ws.receive_json(timeout=5)
        assert reply == {"type": "error", "id": "s", "code": "forbidden",
                         "message": "not allowed to subscribe to system:stats"}
        assert gateway.hub.subscriber_count("system:stats") == 0
    finally:
        await ws.close()
        await session.close()


async def test_no_stats_published_while_nobody_watches(gateway):
    await asyncio.sleep(2.3)  # two ticks of the stream
    assert gateway.stats.messages_published == 0
    rates = gateway.app[admin._RATES]
    assert rates.published == 0 and rates.last is not None


async def test_latency_quantiles_are_read_defensively(gateway, monkeypatch):
    rates = admin.Rates()
    payload = await admin.stats_payload(gateway, rates)
    assert set(payload["latency_ms"]) == {"p50", "p99"}

    class WithLatency:  # today's Stats: delivery (default) and gateway latency
        connections_active = 4

        def latency_quantiles(self, window_s=60.0, *, kind="delivery"):
            return (0.0012, 0.0345) if kind == "delivery" else (0.0004, 0.002)

    class DeliveryOnly:  # a Stats without kinds
        def latency_quantiles(self):
            return 0.0012, 0.0345

    class Broken:
        def latency_quantiles(self):
            raise RuntimeError("not yet")

    class Empty:
        def latency_quantiles(self):
            return None, None

    none = {"p50": None, "p99": None}
    for stats, delivery, own in [
        (WithLatency(), {"p50": 1.2, "p99": 34.5}, {"p50": 0.4, "p99": 2.0}),
        (DeliveryOnly(), {"p50": 1.2, "p99": 34.5}, none),
        (Broken(), none, none),
        (Empty(), none, none),
        (object(), none, none),
    ]:
        monkeypatch.setattr(gateway, "stats", stats)
        payload = await admin.stats_payload(gateway, rates)
        assert payload["latency_ms"] == delivery and payload["gateway_latency_ms"] == own


def test_rates_from_counters():
    class Counters:
        messages_published = 100
        deliveries = 1000
        bytes_written = 50_000

    rates, counters = admin.Rates(), Counters()
    rates.update(counters, 10.0)
    assert rates.messages_per_s == 0 and rates.last == (10.0, 100, 1000, 50_000)
    counters.messages_published, counters.deliveries, counters.bytes_written = 300, 1400, 60_000
    rates.update(counters, 12.0)
    assert (rates.messages_per_s, rates.deliveries_per_s, rates.bytes_out_per_s) == (100.0, 200.0, 5000.0)
    assert rates.interval_s == 2.0


async def test_instances_none_when_the_engine_cannot_say(gateway, monkeypatch):
    async def unreachable():
        raise ConnectionError("redis down")

    monkeypatch.setattr(gateway.engine.presence, "instances", unreachable)
    assert (await admin.stats_payload(gateway, admin.Rates()))["instances"] is None


# --- several nodes (Redis) ----------------------------------------------------------


async def test_every_node_streams_its_stats_to_an_admin_on_any_node(start_gateway, redis_url):
    """B has no local subscriber of system:stats: it publishes because A has one (the
    cluster-wide count), and its messages reach A's admin through Redis."""
    a = await start_gateway(redis=redis_url, node_id="A")
    b = await start_gateway(redis=redis_url, node_id="B")
    session, ws = await _ws(a, token("ops", admin=True))
    rider_session, rider = await _ws(b, token("rider42"))  # a connection on B, for its figures
    try:
        await ws.send_json({"type": "subscribe", "id": "s", "channel": "system:stats"})
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        latest: dict[str, dict] = {}
        deadline = time.monotonic() + 10
        while set(latest) != {"A", "B"} and time.monotonic() < deadline:
            frame = await ws.receive_json(timeout=5)
            if frame["type"] == "channel_message" and frame["channel"] == "system:stats":
                latest[frame["message"]["node"]] = frame["message"]
        assert set(latest) == {"A", "B"}, f"stats from {sorted(latest)} only"
        assert latest["A"]["engine"] == latest["B"]["engine"] == "redis"
        assert latest["A"]["connections"] == latest["B"]["connections"] == 1
        assert b.hub.subscriber_count("system:stats") == 0
        # the registry: both instances, each with its connections (it may lag a refresh)
        nodes = {i["node"]: i for i in latest["A"]["instances"] or []}
        assert {"A", "B"} <= set(nodes) and all(isinstance(i.get("connections"), int) for i in nodes.values())
    finally:
        for client, owner in ((ws, session), (rider, rider_session)):
            await client.close()
            await owner.close()
