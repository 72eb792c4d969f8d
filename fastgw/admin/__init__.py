"""The admin dashboard: ``GET /admin`` and the ``system:stats`` stream (docs/admin.md).

The page (``static/``: plain HTML, CSS and JavaScript, no build step, nothing fetched
from elsewhere) is served without a token; it asks for an admin JWT, checks it against
``/admin/api/session``, draws the route shapes from ``/admin/api/shapes`` and then
reads everything live over the gateway's own WebSocket (``/ws?token=``, the ``full``
profile, JSON text frames): bus positions from ``system:all_updates`` and, once a
second, this module's ``system_stats`` messages on ``system:stats``.

Routes:

=============================  =====  ================================================
``GET /admin``                 none   the page (``/admin/`` redirects here)
``GET /admin/static/{file}``   none   its CSS and JavaScript
``GET /admin/api/session``     admin  who the token is, this node, the channel names
``GET /admin/api/shapes``      admin  route shapes (simplified, quantized; ODbL text)
``GET /admin/api/stats``       admin  a ``system_stats`` payload computed now
=============================  =====  ================================================
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from fastgw.admin.shapes import shapes_json
from fastgw.messages import iso_now
from fastgw.transit.gtfs import load_feed

__all__ = [
    "STATS_CHANNEL",
    "UPDATES_CHANNEL",
    "STATS_MESSAGE_TYPE",
    "STATS_INTERVAL",
    "TOP_CHANNELS",
    "add_routes",
    "stats_stream",
    "stats_payload",
]

log = logging.getLogger("fastgw.admin")

#: Admin-only channel of this module's once-a-second ``system_stats`` messages.
STATS_CHANNEL = "system:stats"
#: Admin-only channel where every ``location_update`` is published (simulator, Kafka).
UPDATES_CHANNEL = "system:all_updates"
STATS_MESSAGE_TYPE = "system_stats"
#: Seconds between two ``system_stats`` messages of one node.
STATS_INTERVAL = 1.0
#: Channels listed in ``top_channels`` (by local subscribers).
TOP_CHANNELS = 10
#: How long the stream waits for the engine (Redis) per tick before it goes without.
ENGINE_TIMEOUT = 0.8

#: Files the page is made of, and their content types. Nothing else is served.
STATIC_FILES = {
    "index.html": "text/html",
    "style.css": "text/css",
    "app.js": "text/javascript",
    "map.js": "text/javascript",
}

#: The page runs only its own files and talks only to this origin (REST and WebSocket).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass
class Rates:
    """Per-second rates of the gateway's counters, updated by :func:`stats_stream`."""

    messages_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    bytes_out_per_s: float = 0.0
    interval_s: float = 0.0
    #: (monotonic time, messages_published, deliveries, bytes_written) at the last tick.
    last: tuple[float, int, int, int] | None = None
    published: int = 0  # system_stats messages this node has published

    def update(self, stats: Any, now: float) -> None:
        counters = (
            int(getattr(stats, "messages_published", 0)),
            int(getattr(stats, "deliveries", 0)),
            int(getattr(stats, "bytes_written", 0)),
        )
        if self.last is not None:
            elapsed = now - self.last[0]
            if elapsed > 0:
                self.messages_per_s = max(0, counters[0] - self.last[1]) / elapsed
                self.deliveries_per_s = max(0, counters[1] - self.last[2]) / elapsed
                self.bytes_out_per_s = max(0, counters[2] - self.last[3]) / elapsed
                self.interval_s = elapsed
        self.last = (now, *counters)


_RATES = web.AppKey("fastgw.admin.rates", Rates)


# --- the page and its data routes --------------------------------------------------


def add_routes(app: web.Application, gateway: Any) -> None:
    """Register the dashboard's routes on ``app`` (see the module docstring)."""
    app[_RATES] = Rates()
    static = _read_static()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=static["index.html"], content_type="text/html", charset="utf-8",
                            headers=_PAGE_HEADERS)

    async def page_slash(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/admin")

    async def static_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in static or name == "index.html":
            raise web.HTTPNotFound(text='{"error":"not_found","message":"no such file"}',
                                   content_type="application/json")
        return web.Response(body=static[name], content_type=STATIC_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def session(request: web.Request) -> web.Response:
        principal = gateway._admin(request)
        feed = await asyncio.get_running_loop().run_in_executor(None, load_feed)  # parsed once, off the loop
        return _json({
            "user": principal.user_id,
            "admin": principal.admin,
            "node": gateway.config.node_id,
            "engine": _engine_name(gateway),
            "channels": {"updates": UPDATES_CHANNEL, "stats": STATS_CHANNEL},
            "stats_interval_s": STATS_INTERVAL,
            "attribution": feed.attribution,
        })

    async def shapes(request: web.Request) -> web.Response:
        gateway._admin(request)
        body = await asyncio.get_running_loop().run_in_executor(None, shapes_json)  # built once, off the loop
        response = web.Response(body=body, content_type="application/json",
                                headers={"Cache-Control": "private, max-age=3600"})
        response.enable_compression()  # gzip/deflate when the client accepts it (browsers do)
        return response

    async def stats_now(request: web.Request) -> web.Response:
        gateway._admin(request)
        return _json(await stats_payload(gateway, request.app[_RATES]))

    app.add_routes([
        web.get("/admin", page),
        web.get("/admin/", page_slash),
        web.get("/admin/static/{name}", static_file),
        web.get("/admin/api/session", session),
        web.get("/admin/api/shapes", shapes),
        web.get("/admin/api/stats", stats_now),
    ])


def _read_static() -> dict[str, bytes]:
    """The page's files, read once from the package (they ship in the wheel)."""
    folder = resources.files(__name__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}


# --- the system:stats stream --------------------------------------------------------


async def stats_payload(gateway: Any, rates: Rates) -> dict[str, Any]:
    """One ``system_stats`` message: this node's figures now (schema in docs/admin.md)."""
    p50, p99 = _latency_quantiles(gateway.stats)
    gw50, gw99 = _latency_quantiles(gateway.stats, kind="gateway")
    channels: dict[str, int] = gateway.hub.channels()
    top = heapq.nlargest(TOP_CHANNELS, channels.items(), key=lambda item: (item[1], item[0]))
    return {
        "type": STATS_MESSAGE_TYPE,
        "node": gateway.config.node_id,
        "engine": _engine_name(gateway),
        "engine_ok": bool(_engine_status(gateway).get("ok", True)),
        "timestamp": iso_now(),
        "interval_s": round(rates.interval_s, 3),
        "connections": int(getattr(gateway.stats, "connections_active", len(gateway.connections))),
        "messages_per_s": round(rates.messages_per_s, 1),
        "deliveries_per_s": round(rates.deliveries_per_s, 1),
        "bytes_out_per_s": round(rates.bytes_out_per_s),
        "latency_ms": {"p50": p50, "p99": p99},
        "gateway_latency_ms": {"p50": gw50, "p99": gw99},
        "channels": len(channels),
        "subscriptions": sum(channels.values()),
        "top_channels": [{"channel": name, "subscribers": count} for name, count in top],
        "instances": await _instances(gateway),
    }


async def stats_stream(gateway: Any) -> None:
    """Publish this node's ``system_stats`` on ``system:stats`` every second, until cancelled.

    Rates are measured every tick; a message is built and published only while someone
    is subscribed to ``system:stats`` (on this node, or on any node with Redis), so an
    unwatched gateway spends nothing on it and its counters are not disturbed.
    """
    app = getattr(gateway, "app", None)
    rates = app.get(_RATES) if app is not None else None
    if rates is None:
        rates = Rates()
    loop = asyncio.get_running_loop()
    rates.update(gateway.stats, time.monotonic())
    next_tick = loop.time() + STATS_INTERVAL
    while True:
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
        next_tick += STATS_INTERVAL
        if next_tick < loop.time():  # fell behind (a stalled loop): skip, don't burst
            next_tick = loop.time() + STATS_INTERVAL
        try:
            rates.update(gateway.stats, time.monotonic())
            if not await _watched(gateway):
                continue
            gateway.hub.publish(STATS_CHANNEL, await stats_payload(gateway, rates))
            rates.published += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # a bad tick must not end the stream
            log.exception("system:stats tick failed")


async def _watched(gateway: Any) -> bool:
    """Is anyone subscribed to ``system:stats``: here, or (Redis) on another node?"""
    if gateway.hub.subscriber_count(STATS_CHANNEL):
        return True
    if _engine_name(gateway) == "memory":
        return False
    try:
        count = await asyncio.wait_for(gateway.engine.presence.subscriber_count(STATS_CHANNEL, 0), ENGINE_TIMEOUT)
    except Exception:  # engine unreachable: nobody elsewhere can be reached either
        return False
    return bool(count)


async def _instances(gateway: Any) -> list[dict[str, Any]] | None:
    """Live instances from the engine's registry (one without Redis); None if unreachable."""
    try:
        found = await asyncio.wait_for(gateway.engine.presence.instances(), ENGINE_TIMEOUT)
    except Exception as exc:
        log.debug("system:stats without instances: %r", exc)
        return None
    keep = ("node", "connections", "host", "port", "pid", "started", "seen")
    return [{key: item[key] for key in keep if key in item} for item in found if isinstance(item, dict)]


def _latency_quantiles(stats: Any, **kind: str) -> tuple[float | None, float | None]:
    """(p50, p99) latency in milliseconds from ``stats.latency_quantiles(**kind)`` (seconds),
    or None where it is not measured: no delivery in the window, or a ``Stats`` without
    the method (or without that ``kind``)."""
    method = getattr(stats, "latency_quantiles", None)
    if method is None:
        return None, None
    try:
        p50, p99 = method(**kind)
    except Exception:
        return None, None
    return _ms(p50), _ms(p99)


def _ms(seconds: Any) -> float | None:
    if seconds is None:
        return None
    try:
        return round(float(seconds) * 1000.0, 3)
    except (TypeError, ValueError):
        return None


def _engine_status(gateway: Any) -> dict[str, Any]:
    try:
        status = gateway.engine.status()
    except Exception:
        return {}
    return status if isinstance(status, dict) else {}


def _engine_name(gateway: Any) -> str:
    return str(_engine_status(gateway).get("engine", getattr(gateway.engine, "name", "unknown")))


def _json(obj: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})
