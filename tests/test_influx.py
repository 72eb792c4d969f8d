"""``--influx-url``: the metrics pushed in line protocol to a real HTTP endpoint.

There is no InfluxDB here: a tiny aiohttp server in the test plays its
``POST /api/v2/write`` (query parameters, ``Authorization: Token``, 204) and parses
the line protocol it receives, escapes included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from fastgw.influx import to_line_protocol
from tests.conftest import eventually, token

ROUTE = "route:500-D:UP"
LOCATION = {"type": "location_update", "vehicle_id": "KA-01-F-1234", "route_id": "500-D", "direction": "UP",
            "latitude": 12.97, "longitude": 77.59, "speed": 23.5, "heading": 90.0}


# --- line protocol parsing (the test's own, independent of fastgw.influx) ------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash; escapes kept."""
    parts, current, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current += text[i:i + 2]
            i += 2
            continue
        if ch == sep:
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, float]
    timestamp: int


def parse_line(line: str) -> Point:
    head, fields_text, stamp = _split(line, " ")
    measurement, *tag_items = _split(head, ",")
    tags = {}
    for item in tag_items:
        key, value = _split(item, "=")
        tags[_unescape(key)] = _unescape(value)
    fields = {}
    for item in _split(fields_text, ","):
        key, value = _split(item, "=")
        assert not value.endswith("i") and not value.startswith('"'), f"fields are floats: {line}"
        fields[_unescape(key)] = float(value)
    return Point(_unescape(measurement), tags, fields, int(stamp))


# --- a fake InfluxDB ---------------------------------------------------------------------------------


@dataclass
class FakeInflux:
    port: int = 0
    status: int = 204  # what the write endpoint answers
    writes: list[list[Point]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2/write?org=bmtc&bucket=gateway&precision=ns"

    def latest(self, measurement: str, **tags: str) -> Point | None:
        for points in reversed(self.writes):
            for point in points:
                if point.measurement == measurement and all(point.tags.get(k) == v for k, v in tags.items()):
                    return point
        return None


@pytest.fixture
async def influx():
    fake = FakeInflux()

    async def write(request: web.Request) -> web.Response:
        body = await request.text()
        fake.requests.append({"query": dict(request.query), "headers": dict(request.headers)})
        if fake.status != 204:
            return web.json_response({"code": "internal error", "message": "test says no"}, status=fake.status)
        fake.writes.append([parse_line(line) for line in body.splitlines() if line])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/v2/write", write)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = site._server.sockets[0].getsockname()[1]
    yield fake
    await runner.cleanup()


# --- tests -------------------------------------------------------------------------------------------


async def test_metrics_are_pushed_in_line_protocol(start_gateway, influx):
    gw = await start_gateway(influx_url=influx.url, influx_token="t0k3n", influx_interval=0.1,
                             window_cellular_ms=20)
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('rider')}&profile=cellular&device=ios")
        await ws.receive_json(timeout=5)
        await ws.send_json({"type": "subscribe", "id": "1", "channel": ROUTE})
        await ws.receive_json(timeout=5)
        gw.hub.publish(ROUTE, LOCATION)
        assert (await ws.receive_json(timeout=5))["type"] == "channel_message"

        def pushed_delivery() -> bool:
            point = influx.latest("fastgw_messages_delivered_total", channel_type="route")
            return point is not None and point.fields["counter"] == 1

        assert await eventually(pushed_delivery, timeout=10)
        connections = influx.latest("fastgw_connections", profile="cellular", device="ios")
        await ws.close()
    request = influx.requests[-1]
    assert request["query"] == {"org": "bmtc", "bucket": "gateway", "precision": "ns"}
    assert request["headers"]["Authorization"] == "Token t0k3n"
    assert request["headers"]["Content-Type"].startswith("text/plain")
    points = influx.writes[-1]
    now_ns = time.time_ns()
    assert all(p.tags["node"] == "test" and p.tags["host"] for p in points)
    assert all(abs(p.timestamp - now_ns) < 600 * 10**9 for p in points)  # ns since the epoch
    assert len({p.timestamp for p in points}) == 1  # one push, one timestamp
    assert connections is not None and connections.fields == {"gauge": 1.0}
    assert connections.tags["protocol"] == "native"
    # a histogram is one point: count, sum and a field per bucket upper bound
    latency = influx.latest("fastgw_delivery_latency_seconds")
    assert latency is not None and latency.fields["count"] >= 1 and latency.fields["+Inf"] == latency.fields["count"]
    assert "0.001" in latency.fields and "60.0" in latency.fields and "sum" in latency.fields  # as le="60.0"
    assert influx.latest("fastgw_connections_closed_total", reason="slow_consumer").fields == {"counter": 0.0}
    assert influx.latest("process_open_fds") is not None
    # the same figures as /metrics: the pushes are counted there too
    assert gw.stats.influx_pushes["ok"] >= 1 and gw.stats.influx_pushes["error"] == 0


async def test_failed_pushes_are_counted_logged_once_and_never_stop_the_gateway(start_gateway, influx, caplog):
    influx.status = 500
    with caplog.at_level(logging.INFO, logger="fastgw.influx"):
        gw = await start_gateway(influx_url=influx.url, influx_interval=0.05)
        assert await eventually(lambda: gw.stats.influx_pushes["error"] >= 5, timeout=10)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.port}/healthz") as r:
                assert r.status == 200  # still serving
            async with s.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
                text = await r.text()
        assert 'fastgw_influx_pushes_total{result="error"}' in text
        failures = [r for r in caplog.records if r.name == "fastgw.influx" and r.levelno == logging.WARNING]
        assert len(failures) == 1  # rate-limited: one line a minute at most
        assert "HTTP 500" in failures[0].getMessage() and "test says no" in failures[0].getMessage()
        assert "token" not in failures[0].getMessage().lower()
        influx.status = 204  # InfluxDB is back
        assert await eventually(lambda: influx.writes and gw.stats.influx_pushes["ok"] >= 1, timeout=10)
        assert await eventually(lambda: any("succeed again" in r.getMessage() for r in caplog.records), timeout=5)


async def test_unreachable_influx_is_an_error_not_a_crash(start_gateway, caplog):
    from tests.test_cli import free_port

    url = f"http://127.0.0.1:{free_port()}/api/v2/write?org=o&bucket=b"  # nobody listens
    with caplog.at_level(logging.WARNING, logger="fastgw.influx"):
        gw = await start_gateway(influx_url=url, influx_interval=0.05)
        assert await eventually(lambda: gw.stats.influx_pushes["error"] >= 3, timeout=10)
        task = next(t for t in gw._tasks if t.get_name() == "fastgw-influx")
        assert not task.done()
    assert len([r for r in caplog.records if r.name == "fastgw.influx"]) == 1


async def test_precision_in_the_url_sets_the_timestamp_unit(start_gateway, influx):
    url = influx.url.replace("precision=ns", "precision=s")
    gw = await start_gateway(influx_url=url, influx_interval=0.1)
    assert await eventually(lambda: bool(influx.writes), timeout=10)
    stamp = influx.writes[0][0].timestamp
    assert abs(stamp - time.time()) < 600  # seconds, not nanoseconds
    assert gw.stats.influx_pushes["ok"] >= 1


def test_line_protocol_escapes_and_skips_non_finite_values():
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry

    class Odd(Collector):
        def collect(self):
            g = GaugeMetricFamily("odd gauge,x", "d", labels=["k"])
            g.add_metric(["a b,c=d"], 2)
            g.add_metric(["nan"], float("nan"))
            yield g

    registry = CollectorRegistry()
    registry.register(Odd())
    text = to_line_protocol(registry, {"node": "n 1", "empty": ""}, 42)
    lines = text.splitlines()
    assert len(lines) == 1  # NaN is not a value InfluxDB accepts
    point = parse_line(lines[0])
    assert point == Point("odd gauge,x", {"k": "a b,c=d", "node": "n 1"}, {"gauge": 2.0}, 42)


async def test_no_influx_url_no_task(gateway):
    assert not [t for t in gateway._tasks if t.get_name() == "fastgw-influx"]
    await asyncio.sleep(0)
