"""In-process counters of one gateway instance.

Plain ints, short int lists and Counters: cheap enough for the hot path
(``Hub.deliver``, ``Hub._flush``), and nothing here is touched per subscriber.
They are read, never reset, by ``GET /api/stats`` (:meth:`Stats.snapshot`), by
``fastgw.metrics`` (turned into Prometheus samples at scrape time), by
``fastgw.influx`` (the same samples in line protocol) and by the admin dashboard
(the attributes, :meth:`Stats.latency_quantiles`). See docs/observability.md.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

__all__ = [
    "CloseReason",
    "Stats",
    "Histogram",
    "LatencyHistogram",
    "CHANNEL_TYPES",
    "LATENCY_BUCKETS",
    "BATCH_BUCKETS",
    "channel_type",
]

#: Channel families (``channels.Channel.kind``): the only values of a ``channel_type``
#: label. Anything else (a malformed name from a foreign publisher) counts as ``other``.
CHANNEL_TYPES: tuple[str, ...] = ("route", "stop", "alerts", "leaderboard", "user", "system")
_CHANNEL_TYPES = frozenset(CHANNEL_TYPES)

#: Upper bounds (seconds) of the delivery-latency histograms. Timestamps on the wire
#: have millisecond precision, so nothing finer than 1 ms; dense up to 1 s (window-0
#: fan-out takes milliseconds, the cellular/slow flush windows 100/500 ms).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
)
#: Upper bounds of the batch-size histogram (messages in one batched socket write).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 5, 10, 20, 50, 100, 250, 1000)


def channel_type(channel: str) -> str:
    """The family of a channel (``route:500-D:UP`` → ``route``); ``other`` if unknown."""
    family = channel.partition(":")[0]
    return family if family in _CHANNEL_TYPES else "other"


class Histogram:
    """Fixed buckets as a plain int list: ``counts[i]`` holds observations ``<= bounds[i]``
    (and above ``bounds[i-1]``); ``counts[-1]`` is the ``+Inf`` bucket. Cumulated only
    when read (:meth:`cumulative`), as Prometheus wants it."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, weight: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += weight
        self.sum += value * weight
        self.count += weight

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, observations <= it), ..., (inf, count)]``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


class LatencyHistogram(Histogram):
    """A :class:`Histogram` that also keeps the last two minutes in 10-second slots,
    for quantiles over a recent window (:meth:`quantiles`). An observation is one
    ``bisect``, a few integer additions and one float comparison (is the current slot
    over?); a slot list is allocated once per 10 s."""

    __slots__ = ("current", "slot_end", "_ring")

    SLOT_S = 10.0
    SLOTS = 12  # closed slots kept: 120 s, plus the current one

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(bounds)
        #: Per-bucket counts of the current slot, which ends at ``slot_end`` (epoch s).
        self.current = [0] * len(self.counts)
        self.slot_end = 0.0
        self._ring: deque[tuple[float, list[int]]] = deque(maxlen=self.SLOTS)  # (slot start, counts)

    def observe(self, value: float, weight: int = 1, now: float | None = None) -> None:  # type: ignore[override]
        """Record ``weight`` deliveries that took ``value`` seconds (negative: clock skew, 0)."""
        if value < 0.0:
            value = 0.0
        i = bisect_left(self.bounds, value)
        self.counts[i] += weight
        self.sum += value * weight
        self.count += weight
        if now is None:
            now = time.time()
        if now >= self.slot_end:
            self.rotate(now)
        self.current[i] += weight

    def rotate(self, now: float) -> None:
        """Close the current slot and open the one that contains ``now``."""
        if any(self.current):
            self._ring.append((self.slot_end - self.SLOT_S, self.current))
            self.current = [0] * len(self.counts)
        self.slot_end = (now // self.SLOT_S + 1) * self.SLOT_S

    def recent(self, window_s: float = 60.0, now: float | None = None) -> list[int]:
        """Per-bucket counts of roughly the last ``window_s`` seconds: the 10 s slots that
        end within it, the current partial one included; at most two minutes."""
        if now is None:
            now = time.time()
        since = now - min(window_s, self.SLOT_S * self.SLOTS)
        total = [0] * len(self.counts)
        slots = [counts for start, counts in self._ring if start + self.SLOT_S > since]
        if self.slot_end > since:
            slots.append(self.current)
        for counts in slots:
            for i, n in enumerate(counts):
                total[i] += n
        return total

    def quantiles(self, qs: Sequence[float], window_s: float = 60.0,
                  now: float | None = None) -> list[float | None]:
        """Estimated quantiles over the recent window (linear within a bucket, as
        Prometheus' ``histogram_quantile``); None when nothing was observed."""
        counts = self.recent(window_s, now)
        total = sum(counts)
        if not total:
            return [None for _ in qs]
        return [_bucket_quantile(q, self.bounds, counts, total) for q in qs]


def _bucket_quantile(q: float, bounds: tuple[float, ...], counts: list[int], total: int) -> float:
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):  # the +Inf bucket: the largest finite bound is all we know
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]


class CloseReason(str, Enum):
    NORMAL = "normal"
    SLOW_CONSUMER = "slow_consumer"
    PROTOCOL = "protocol_error"  # binary frame, oversized frame
    FLOOD = "flood"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    SHUTDOWN = "shutdown"
    DRAIN = "drain"  # moved to another instance by a graceful drain


@dataclass
class Stats:
    """Counters of one gateway instance. Every counter only grows (rates: differences)."""

    connections_active: int = 0
    connections_opened: int = 0
    #: Closed connections by :class:`CloseReason` value.
    connections_closed: Counter[str] = field(default_factory=Counter)
    #: Upgrades refused, by reason (``auth``, ``limit``, ``draining``, ``origin``,
    #: ``rate_ip``, ...): whatever keys the server uses are exported as they are.
    rejected: Counter[str] = field(default_factory=Counter)
    #: Requests of open connections refused by a limit (``requests``: over the client
    #: message rate; ``subscriptions``: over --max-subscriptions).
    limited: Counter[str] = field(default_factory=Counter)
    #: Messages published through this node (``Hub.publish``), in all and by channel type.
    messages_published: int = 0
    published_by_type: Counter[str] = field(default_factory=Counter)
    #: Messages that reached this node's subscribers (once per message per node; with
    #: Redis, messages published on other nodes too), by channel type.
    routed_by_type: Counter[str] = field(default_factory=Counter)
    #: Messages handed to subscribers: written at once, or queued in a batching
    #: connection's window (counted when queued; a conflated one still counts).
    deliveries: int = 0
    delivered_by_type: Counter[str] = field(default_factory=Counter)
    #: Socket writes that carried a whole flush window of a batching connection.
    batch_writes: int = 0
    #: Bytes of unbatched channel-message writes (exact).
    bytes_written: int = 0
    #: Bytes of channel messages queued for batching connections, counted when queued
    #: (frames, or JSON items for ``slow``): conflated items count, batch envelopes do not.
    bytes_batched: int = 0
    #: Source timestamp (the message's own ``timestamp``, else the envelope's) → socket
    #: write; one observation per message per subscriber group, weighted by subscribers.
    delivery_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Envelope timestamp (``Hub.publish`` on whichever node) → socket write: the part
    #: of the latency that the gateway itself (and Redis) adds.
    gateway_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Messages per batched socket write.
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    #: InfluxDB pushes by result (``ok``, ``error``).
    influx_pushes: Counter[str] = field(default_factory=Counter)

    def observe_latency(self, now: float, source: float, published: float, count: int) -> None:
        """``count`` deliveries written at ``now`` (epoch seconds) of a message whose
        source and publish times were ``source`` and ``published``. Both histograms in
        one call: this runs once per message per subscriber group."""
        self.delivery_latency.observe(now - source, count, now)
        self.gateway_latency.observe(now - published, count, now)

    def latency_quantiles(self, window_s: float = 60.0, *, kind: str = "delivery") -> tuple[float | None, float | None]:
        """(p50, p99) in seconds over roughly the last ``window_s`` seconds (10 s slots,
        at most 120 s), or ``(None, None)`` when nothing was delivered meanwhile.
        ``kind``: ``delivery`` (from the source timestamp) or ``gateway`` (from the
        envelope's publish time)."""
        histogram = self.gateway_latency if kind == "gateway" else self.delivery_latency
        p50, p99 = histogram.quantiles((0.5, 0.99), window_s)
        return p50, p99

    def snapshot(self) -> dict[str, object]:
        p50, p99 = self.latency_quantiles()
        return {
            "connections": {
                "active": self.connections_active,
                "opened": self.connections_opened,
                "closed": dict(self.connections_closed),
            },
            "rejected": dict(self.rejected),
            "messages_published": self.messages_published,
            "published_by_channel_type": dict(self.published_by_type),
            "delivered_by_channel_type": dict(self.delivered_by_type),
            "deliveries": self.deliveries,
            "batch_writes": self.batch_writes,
            "bytes_written": self.bytes_written,
            "bytes_batched": self.bytes_batched,
            "latency_ms": {
                "p50": None if p50 is None else round(p50 * 1000, 3),
                "p99": None if p99 is None else round(p99 * 1000, 3),
            },
        }
