"""Prometheus metrics: ``GET /metrics`` (text format 0.0.4, or OpenMetrics when asked).

Nothing here runs on the hot path. The hub and the server keep plain ints, short
int lists and Counters in :class:`fastgw.stats.Stats`; at scrape time
:class:`GatewayCollector` reads them, together with the live connections, the hub's
channels, the engine's ``status()`` and the Kafka source's snapshot, and turns them
into samples. Each gateway has its own :class:`CollectorRegistry` (tests run several
gateways in one process; nothing is registered globally), also used by
``fastgw.influx`` to push the same figures.

Labels never carry a user id or a channel name: channel families (``route``,
``stop``...), profiles, devices, reasons, Kafka topics and partitions only. The full
list, types and meanings: docs/observability.md.

``/metrics`` is not authenticated (Prometheus scrapers do not carry our JWTs and
nothing in it identifies a rider); keep it off the public ingress (docs/observability.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable, Iterator

from aiohttp import web
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from fastgw.profiles import PROFILES, Wire
from fastgw.stats import CHANNEL_TYPES, CloseReason, Histogram, channel_type

__all__ = ["add_routes", "build_registry", "registry_of", "GatewayCollector", "REGISTRY_KEY"]

log = logging.getLogger("fastgw.metrics")

REGISTRY_KEY = web.AppKey("fastgw.metrics.registry", CollectorRegistry)

#: Label values always present (0 until something happens), so that ``rate()`` and
#: alerts see a series from the first scrape.
DEVICES = ("android", "ios", "web", "unknown")
PROTOCOLS = ("native", "socketio")
BASE_REJECTED = ("auth", "limit", "draining", "origin")


def add_routes(app: web.Application, gateway: Any) -> None:
    """Register ``GET /metrics`` on ``app`` for ``gateway`` (and its registry as ``app[REGISTRY_KEY]``)."""
    registry = build_registry(gateway)
    app[REGISTRY_KEY] = registry

    async def handle_metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(registry), headers={"Content-Type": content_type,
                                                                 "Cache-Control": "no-store"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    app.router.add_get("/metrics", handle_metrics)


def build_registry(gateway: Any) -> CollectorRegistry:
    """A registry of ``gateway``'s figures, plus the process (CPU, memory, open file
    descriptors against their limit), Python platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def registry_of(gateway: Any) -> CollectorRegistry:
    """The registry that ``add_routes`` made for ``gateway`` (a new one if it has no app)."""
    app = getattr(gateway, "app", None)
    if app is not None and REGISTRY_KEY in app:
        return app[REGISTRY_KEY]
    return build_registry(gateway)


class GatewayCollector(Collector):
    """Turns one gateway's counters and live state into metric families, at scrape time."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        #: Sections that raised while collecting (one broken source must not blank the rest).
        self.errors: Counter[str] = Counter()

    def collect(self) -> Iterator[Metric]:
        for name, section in (
            ("instance", self._instance),
            ("connections", self._connections),
            ("messages", self._messages),
            ("subscriptions", self._subscriptions),
            ("recovery", self._recovery),
            ("socketio", self._socketio),
            ("engine", self._engine),
            ("kafka", self._kafka),
        ):
            try:
                families = list(section())
            except Exception:  # a scrape must not fail because one part of the gateway did
                self.errors[name] += 1
                log.exception("metrics: collecting %s failed", name)
                continue
            yield from families
        errors = CounterMetricFamily("fastgw_metrics_errors_total",
                                     "Scrapes in which collecting a section of the metrics failed.",
                                     labels=["section"])
        for name, n in sorted(self.errors.items()):
            errors.add_metric([name], n)
        yield errors

    # --- sections ---------------------------------------------------------------------

    def _instance(self) -> Iterable[Metric]:
        gw = self.gateway
        from fastgw import __version__

        info = GaugeMetricFamily("fastgw_info", "This gateway instance (always 1).",
                                 labels=["node", "version", "core", "engine"])
        info.add_metric([str(gw.config.node_id), __version__, _core_name(gw.core), _engine_name(gw.engine)], 1)
        yield info
        yield GaugeMetricFamily("fastgw_draining", "1 while the instance drains (refuses upgrades).",
                                value=1 if gw.draining else 0)
        yield GaugeMetricFamily("fastgw_connections_max", "The configured --max-connections.",
                                value=gw.config.max_connections)
        yield GaugeMetricFamily("fastgw_outbound_limit_bytes",
                                "Bytes a connection may buffer before it is closed as a slow consumer.",
                                value=gw.config.outbound_limit)
        if gw.config.influx_url:
            pushes = CounterMetricFamily("fastgw_influx_pushes_total", "InfluxDB pushes by result.",
                                         labels=["result"])
            for result in sorted({"ok", "error", *gw.stats.influx_pushes}):
                pushes.add_metric([result], gw.stats.influx_pushes.get(result, 0))
            yield pushes

    def _connections(self) -> Iterable[Metric]:
        gw = self.gateway
        stats = gw.stats
        counts: Counter[tuple[str, str, str]] = Counter()
        for protocol in PROTOCOLS:
            for profile in PROFILES:
                for device in DEVICES:
                    counts[(protocol, profile, device)] = 0
        buffered = buffered_max = backlogged = queued = 0
        for conn in list(gw.connections):
            protocol = "native" if conn.encoding.wire is Wire.NATIVE else "socketio"
            counts[(protocol, conn.encoding.profile.name, conn.device)] += 1
            transport = conn.transport
            if transport is not None:
                try:
                    size = transport.get_write_buffer_size()
                except Exception:  # closed under us
                    size = 0
                if size:
                    buffered += size
                    backlogged += 1
                    buffered_max = max(buffered_max, size)
            batcher = conn.batcher
            if batcher is not None:
                queued += batcher.pending
        active = GaugeMetricFamily("fastgw_connections", "Open WebSocket connections.",
                                   labels=["protocol", "profile", "device"])
        for key, n in sorted(counts.items()):
            active.add_metric(list(key), n)
        yield active
        yield CounterMetricFamily("fastgw_connections_opened_total", "WebSocket connections accepted.",
                                  value=stats.connections_opened)
        closed = CounterMetricFamily("fastgw_connections_closed_total",
                                     "WebSocket connections closed, by reason.", labels=["reason"])
        for reason in sorted({r.value for r in CloseReason} | set(stats.connections_closed)):
            closed.add_metric([reason], stats.connections_closed.get(reason, 0))
        yield closed
        rejected = CounterMetricFamily("fastgw_connections_rejected_total",
                                       "WebSocket upgrades refused, by reason (auth, limits, draining...).",
                                       labels=["reason"])
        for reason in sorted(set(BASE_REJECTED) | set(stats.rejected)):
            rejected.add_metric([reason], stats.rejected.get(reason, 0))
        yield rejected
        limited = CounterMetricFamily("fastgw_requests_limited_total",
                                      "Client requests refused by a limit, by limit (requests, subscriptions).",
                                      labels=["limit"])
        for limit in sorted({"requests", "subscriptions"} | set(stats.limited)):
            limited.add_metric([limit], stats.limited.get(limit, 0))
        yield limited
        yield GaugeMetricFamily("fastgw_outbound_buffered_bytes",
                                "Bytes waiting in the connections' send buffers (user space), in all.",
                                value=buffered)
        yield GaugeMetricFamily("fastgw_outbound_buffered_bytes_max",
                                "The largest send buffer of one connection, bytes.", value=buffered_max)
        yield GaugeMetricFamily("fastgw_outbound_backlogged_connections",
                                "Connections with bytes waiting in their send buffer.", value=backlogged)
        yield GaugeMetricFamily("fastgw_batch_queued_messages",
                                "Messages queued in batching connections for their next flush.", value=queued)

    def _messages(self) -> Iterable[Metric]:
        stats = self.gateway.stats
        for name, counter, doc in (
            ("fastgw_messages_published_total", stats.published_by_type,
             "Messages published through this instance, by channel type."),
            ("fastgw_messages_routed_total", stats.routed_by_type,
             "Messages that reached this instance's subscribers (once per message), by channel type."),
            ("fastgw_messages_delivered_total", stats.delivered_by_type,
             "Message deliveries to subscribers (written, or queued for a batch), by channel type."),
        ):
            family = CounterMetricFamily(name, doc, labels=["channel_type"])
            for ctype in _channel_types(counter):
                family.add_metric([ctype], counter.get(ctype, 0))
            yield family
        yield CounterMetricFamily("fastgw_bytes_written_total",
                                  "Bytes of channel messages written at once (unbatched connections).",
                                  value=stats.bytes_written)
        yield CounterMetricFamily("fastgw_batched_bytes_total",
                                  "Bytes of channel messages queued for batching connections "
                                  "(counted when queued; conflated ones included, batch envelopes not).",
                                  value=stats.bytes_batched)
        yield CounterMetricFamily("fastgw_batch_writes_total",
                                  "Socket writes that carried a batching connection's flush window.",
                                  value=stats.batch_writes)
        yield _histogram("fastgw_batch_size_messages", "Messages per batched socket write.", stats.batch_sizes)
        yield _histogram("fastgw_delivery_latency_seconds",
                         "From the message's own timestamp (else its publish time) to the socket write, "
                         "per delivery.", stats.delivery_latency)
        yield _histogram("fastgw_gateway_latency_seconds",
                         "From the publish time in the envelope (Hub.publish, any instance) to the socket "
                         "write, per delivery.", stats.gateway_latency)

    def _subscriptions(self) -> Iterable[Metric]:
        channels: dict[str, int] = self.gateway.hub.channels()
        subscriptions: Counter[str] = Counter()
        per_type: Counter[str] = Counter()
        for name, count in channels.items():
            ctype = channel_type(name)
            subscriptions[ctype] += count
            per_type[ctype] += 1
        subs = GaugeMetricFamily("fastgw_subscriptions", "Subscriptions of local connections, by channel type.",
                                 labels=["channel_type"])
        chans = GaugeMetricFamily("fastgw_channels", "Channels with local subscribers, by channel type.",
                                  labels=["channel_type"])
        for ctype in _channel_types(per_type):
            subs.add_metric([ctype], subscriptions.get(ctype, 0))
            chans.add_metric([ctype], per_type.get(ctype, 0))
        yield subs
        yield chans

    def _recovery(self) -> Iterable[Metric]:
        recovery = getattr(self.gateway, "recovery", None)
        if recovery is None:
            return
        yield CounterMetricFamily("fastgw_offline_replayed_total",
                                  "Offline notifications replayed to reconnecting users.",
                                  value=getattr(recovery, "replayed", 0))
        resumes = CounterMetricFamily("fastgw_resumes_total", "Session resumes, by outcome.", labels=["outcome"])
        for outcome, n in sorted(dict(getattr(recovery, "resumes", {})).items()):
            resumes.add_metric([str(outcome)], n)
        yield resumes

    def _socketio(self) -> Iterable[Metric]:
        sio = getattr(self.gateway, "socketio", None)
        if sio is None:
            return
        status = sio.status()
        sessions = GaugeMetricFamily("fastgw_socketio_sessions",
                                     "Engine.IO sessions at /socket.io/, by transport (joined or not).",
                                     labels=["transport"])
        sessions.add_metric(["polling"], status["polling"])
        sessions.add_metric(["websocket"], status["websocket"])
        yield sessions
        yield GaugeMetricFamily("fastgw_socketio_unjoined_sessions",
                                "Engine.IO sessions that have not joined the namespace yet.", value=status["unjoined"])
        handed = CounterMetricFamily("fastgw_socketio_handoffs_total",
                                     "--workers: long-polling connections handed to / received from the worker "
                                     "owning their session.", labels=["direction"])
        handed.add_metric(["out"], status.get("handed_over", 0))
        handed.add_metric(["in"], status.get("received", 0))
        yield handed

    def _engine(self) -> Iterable[Metric]:
        engine = self.gateway.engine
        status = engine.status()
        up = GaugeMetricFamily("fastgw_engine_up", "1 while the engine (memory, or Redis) is usable.",
                               labels=["engine"])
        up.add_metric([str(status.get("engine", "unknown"))], 1 if status.get("ok") else 0)
        yield up
        if "redis" not in status:
            return
        yield GaugeMetricFamily("fastgw_redis_up", "1 while Redis is reachable.",
                                value=1 if status.get("redis") == "up" else 0)
        yield GaugeMetricFamily("fastgw_redis_rtt_seconds", "Round-trip time of the last Redis pipeline (or PING).",
                                value=float(status.get("rtt_ms", 0.0)) / 1000.0)
        for key, name, doc in (
            ("round_trips", "fastgw_redis_round_trips_total", "Redis pipelines sent."),
            ("commands", "fastgw_redis_commands_total", "Redis commands sent (in pipelines)."),
            ("outages", "fastgw_redis_outages_total", "Times Redis became unreachable."),
            ("reconnects", "fastgw_redis_reconnects_total", "Reconnections to Redis after an outage."),
            ("published", "fastgw_redis_published_total", "Messages accepted by Redis (pub/sub, history, queues)."),
            ("queued_offline", "fastgw_redis_queued_offline_total",
             "Notifications kept in a Redis offline queue (no live subscriber)."),
            ("received", "fastgw_redis_received_total", "Pub/sub messages received from Redis."),
            ("outage_republished", "fastgw_redis_outage_republished_total",
             "Messages published while Redis was down, published after it came back."),
            ("lost", "fastgw_redis_lost_total", "Messages dropped beyond the outage buffer while Redis was down."),
        ):
            if key in status:
                yield CounterMetricFamily(name, doc, value=status[key])
        malformed = CounterMetricFamily("fastgw_redis_malformed_total",
                                        "Unreadable data found in Redis, skipped, by kind.", labels=["kind"])
        for kind, n in sorted(dict(status.get("malformed", {})).items()):
            malformed.add_metric([str(kind)], n)
        yield malformed
        if "live_instances" in status:
            yield GaugeMetricFamily("fastgw_redis_live_instances", "Gateway instances alive in the Redis registry.",
                                    value=status["live_instances"])
        outage = getattr(getattr(engine, "broker", None), "_outage", None)
        if outage is not None:
            yield GaugeMetricFamily("fastgw_redis_outage_buffer_messages",
                                    "Messages kept to publish once Redis is back.", value=len(outage))

    def _kafka(self) -> Iterable[Metric]:
        source = getattr(self.gateway, "kafka", None)
        if source is None:
            return
        k = source.stats
        roles = sorted(source.settings.topics)
        up = GaugeMetricFamily("fastgw_kafka_consumer_up", "1 while a role's consumer is connected and polling.",
                               labels=["role"])
        for role in roles:
            up.add_metric([role], 1 if k.up.get(role) else 0)
        yield up
        lag = GaugeMetricFamily("fastgw_kafka_consumer_lag_records",
                                "Records not yet committed by this instance's consumer, per assigned partition "
                                "(high watermark - position + records in hand).",
                                labels=["role", "topic", "partition"])
        for role, partitions in sorted(dict(k.lag).items()):
            for (topic, partition), behind in sorted(partitions.items()):
                lag.add_metric([role, topic, str(partition)], behind)
        yield lag
        for name, counter, doc in (
            ("fastgw_kafka_records_total", k.records, "Kafka records consumed, by role."),
            ("fastgw_kafka_published_total", k.published, "Messages published from Kafka records, by role."),
        ):
            family = CounterMetricFamily(name, doc, labels=["role"])
            for role in sorted(set(roles) | set(counter)):
                family.add_metric([role], counter.get(role, 0))
            yield family
        rejected = CounterMetricFamily("fastgw_kafka_rejected_total", "Kafka records rejected, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(k.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("fastgw_kafka_dead_lettered_total", "Records written to the dead-letter topic.",
                                  value=k.dead_lettered)
        yield CounterMetricFamily("fastgw_kafka_commits_total", "Offset commits.", value=k.commits)
        yield CounterMetricFamily("fastgw_kafka_reconnects_total", "Consumer restarts after a broker error.",
                                  value=k.reconnects)


# --- helpers ------------------------------------------------------------------------------


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    family = HistogramMetricFamily(name, doc, labels=[])
    family.add_metric([], buckets, histogram.sum)
    return family


def _channel_types(counter: Any) -> list[str]:
    return [*CHANNEL_TYPES, *sorted(set(counter) - set(CHANNEL_TYPES))]


def _core_name(core: Any) -> str:
    name = getattr(core, "IMPLEMENTATION", None)
    return name or ("python" if getattr(core, "__name__", "").endswith("_py") else "cython")


def _engine_name(engine: Any) -> str:
    return str(getattr(engine, "name", None) or type(engine).__name__)
