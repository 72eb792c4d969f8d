"""InfluxDB export: the ``/metrics`` figures pushed in line protocol (``--influx-url``).

Every ``--influx-interval`` seconds the gateway's metric registry (the one behind
``GET /metrics``, see ``fastgw.metrics``) is collected and written with one POST to an
InfluxDB v2 write URL (``http://HOST:8086/api/v2/write?org=O&bucket=B&precision=ns``;
``--influx-token`` is sent as ``Authorization: Token ...``).

Points follow InfluxDB's own mapping of Prometheus metrics ("metric version 1", as
its scrapers and Telegraf's prometheus input write them): the measurement is the
metric name (``_bucket``/``_sum``/``_count`` trimmed for histograms), labels become
tags, and the field is ``counter`` or ``gauge``; a histogram is one point with a
``count`` and a ``sum`` field and one field per bucket named by its upper bound
(``0.005``, ``+Inf``). Every point also carries the tags ``node`` (the instance id)
and ``host``. Values are floats; the timestamp is the push time, in the URL's
``precision`` (ns by default).

A failed push (unreachable, timeout, non-2xx) is counted in
``fastgw_influx_pushes_total{result="error"}`` and logged: the first failure, then at
most one summary line a minute, and one line when pushes succeed again. It never
stops the gateway; the next push carries the current (cumulative) figures, so
nothing but resolution is lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit

import aiohttp
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

__all__ = ["push_forever", "push_once", "to_line_protocol", "PushError"]

log = logging.getLogger("fastgw.influx")

#: Seconds between two "still failing" log lines.
LOG_EVERY = 60.0
#: Time units of the ``precision`` URL parameter, in nanoseconds.
_PRECISION_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


class PushError(Exception):
    """InfluxDB answered something other than 2xx."""


def to_line_protocol(registry: CollectorRegistry, tags: dict[str, str], timestamp: int) -> str:
    """Every sample of ``registry`` as InfluxDB line protocol, one line per point."""
    lines: list[str] = []
    for family in registry.collect():
        if family.type == "histogram":
            lines.extend(_histogram_lines(family, tags, timestamp))
            continue
        field = {"counter": "counter", "gauge": "gauge"}.get(family.type, "value")
        for sample in family.samples:
            if sample.name.endswith("_created"):  # counter creation times: not figures
                continue
            line = _line(sample.name, {**tags, **sample.labels}, {field: sample.value}, timestamp)
            if line:
                lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def _histogram_lines(family: Any, tags: dict[str, str], timestamp: int) -> Iterable[str]:
    points: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        fields = points.setdefault(tuple(sorted(labels.items())), {})
        if sample.name.endswith("_bucket"):
            fields[floatToGoString(float(sample.labels["le"]))] = sample.value
        elif sample.name.endswith("_count"):
            fields["count"] = sample.value
        elif sample.name.endswith("_sum"):
            fields["sum"] = sample.value
    for labels, fields in points.items():
        line = _line(family.name, {**tags, **dict(labels)}, fields, timestamp)
        if line:
            yield line


def _line(measurement: str, tags: dict[str, str], fields: dict[str, float], timestamp: int) -> str | None:
    field_set = ",".join(
        f"{_escape_key(key)}={_float(value)}" for key, value in fields.items() if math.isfinite(value)
    )
    if not field_set:  # NaN/inf only: InfluxDB accepts neither
        return None
    tag_set = "".join(
        f",{_escape_key(key)}={_escape_key(str(value))}" for key, value in sorted(tags.items()) if str(value) != ""
    )
    return f"{_escape_measurement(measurement)}{tag_set} {field_set} {timestamp}"


def _float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text  # "3" is a float in line protocol ("3i" is not)


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_key(text: str) -> str:
    """Tag keys, tag values and field keys: commas, equals signs and spaces escaped."""
    return (text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
            .replace("\n", "\\n"))


def precision_of(url: str) -> str:
    """The ``precision`` query parameter of a write URL (``ns`` if absent or unknown)."""
    value = parse_qs(urlsplit(url).query).get("precision", ["ns"])[-1]
    return value if value in _PRECISION_NS else "ns"


async def push_once(session: aiohttp.ClientSession, url: str, body: str, token: str | None) -> None:
    """One write request; raises on a transport error or a non-2xx answer."""
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if token:
        headers["Authorization"] = f"Token {token}"
    async with session.post(url, data=body.encode(), headers=headers) as response:
        if response.status >= 300:
            detail = (await response.text(errors="replace"))[:200]
            raise PushError(f"HTTP {response.status}: {detail}")


async def push_forever(gateway: Any) -> None:
    """Push the metrics to ``gateway.config.influx_url`` every ``influx_interval`` s, until cancelled."""
    from fastgw.metrics import registry_of

    cfg = gateway.config
    url: str = cfg.influx_url
    interval = max(0.05, float(cfg.influx_interval))
    unit_ns = _PRECISION_NS[precision_of(url)]
    registry = registry_of(gateway)
    tags = {"node": str(cfg.node_id), "host": socket.gethostname()}
    stats = gateway.stats
    failures = 0  # consecutive
    suppressed = 0  # failures not logged since the last line
    last_logged = -math.inf
    timeout = aiohttp.ClientTimeout(total=min(max(interval, 2.0), 10.0))
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                body = to_line_protocol(registry, tags, time.time_ns() // unit_ns)
                await push_once(session, url, body, cfg.influx_token)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the exporter take the gateway down
                stats.influx_pushes["error"] += 1
                failures += 1
                now = loop.time()
                if failures == 1 or now - last_logged >= LOG_EVERY:
                    log.warning("influx: push to %s failed (%s)%s", _redacted(url), _describe(exc),
                                f"; {suppressed} more failures since the last report" if suppressed else "",
                                extra={"failures": failures})
                    last_logged, suppressed = now, 0
                else:
                    suppressed += 1
            else:
                stats.influx_pushes["ok"] += 1
                if failures:
                    log.info("influx: pushes succeed again after %d failures", failures,
                             extra={"failures": failures})
                    failures = suppressed = 0
                    last_logged = -math.inf
            next_at += interval
            delay = next_at - loop.time()
            if delay < 0:  # a slow push: skip the missed ticks rather than burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redacted(url: str) -> str:
    """The URL without credentials a user may have put in it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
