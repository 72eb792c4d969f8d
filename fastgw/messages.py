"""Message schemas carried on channels, and the server envelopes around them.

The payload schemas (``location_update``, ``stop_arrival``, ``service_alert``,
``user_notification``, ``leaderboard_update``) use snake_case field names, as
the product design does. Builders return plain dicts so that one encoder
(orjson) serialises them; the TypedDicts document the shape for readers and
type checkers. ``docs/protocol.md`` is the normative description.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import datetime, timezone
from typing import Any, Literal, TypedDict

import orjson

__all__ = [
    "MESSAGE_TYPES",
    "NON_ESSENTIAL_FIELDS",
    "LocationUpdate",
    "location_update",
    "iso_now",
    "iso_from_epoch",
    "MessageIds",
    "encode",
]

#: Payload types a channel message may carry.
MESSAGE_TYPES = frozenset(
    {
        "location_update",
        "stop_arrival",
        "service_alert",
        "user_notification",
        "leaderboard_update",
    }
)

#: Fields that the bandwidth-saving profiles (``cellular``, ``slow``) leave out, per
#: type. ``location_update`` has its own reduction (``_core.reduce_location``); for
#: the others, ``metadata`` is the conventional home of non-essential detail.
NON_ESSENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "stop_arrival": ("metadata",),
    "service_alert": ("metadata",),
    "user_notification": ("metadata",),
    "leaderboard_update": ("metadata",),
}

Direction = Literal["UP", "DOWN"]
Freshness = Literal["fresh", "recent", "stale"]


class LocationMetadata(TypedDict, total=False):
    source: str  # "simulator" | "crowdsourced" | "gtfs-rt"
    quality_score: float  # 0..1, non-essential (dropped on cellular profiles)


class LocationUpdate(TypedDict, total=False):
    type: Literal["location_update"]
    vehicle_id: str
    route_id: str
    direction: Direction
    trip_id: str
    latitude: float
    longitude: float
    speed: float  # km/h
    heading: float  # degrees clockwise from north, 0..360
    accuracy: float  # metres
    next_stop_id: str
    next_stop_name: str
    distance_to_next_stop: float  # metres along the route shape
    confidence: float  # 0..1
    contributor_count: int  # riders whose reports were fused
    data_freshness: Freshness
    timestamp: str  # ISO 8601 UTC, when the position was observed
    metadata: LocationMetadata


def iso_from_epoch(ts: float) -> str:
    """ISO 8601 UTC with millisecond precision and a ``Z`` suffix."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_now() -> str:
    return iso_from_epoch(time.time())


def location_update(
    *,
    vehicle_id: str,
    route_id: str,
    direction: Direction,
    latitude: float,
    longitude: float,
    speed: float,
    heading: float,
    timestamp: float,
    trip_id: str | None = None,
    accuracy: float = 10.0,
    next_stop_id: str | None = None,
    next_stop_name: str | None = None,
    distance_to_next_stop: float | None = None,
    confidence: float = 1.0,
    contributor_count: int = 1,
    data_freshness: Freshness = "fresh",
    source: str = "simulator",
    quality_score: float = 1.0,
) -> LocationUpdate:
    """Build a ``location_update`` payload. Optional fields left as None are omitted."""
    msg: dict[str, Any] = {
        "type": "location_update",
        "vehicle_id": vehicle_id,
        "route_id": route_id,
        "direction": direction,
    }
    if trip_id is not None:
        msg["trip_id"] = trip_id
    msg["latitude"] = latitude
    msg["longitude"] = longitude
    msg["speed"] = speed
    msg["heading"] = heading
    msg["accuracy"] = accuracy
    if next_stop_id is not None:
        msg["next_stop_id"] = next_stop_id
    if next_stop_name is not None:
        msg["next_stop_name"] = next_stop_name
    if distance_to_next_stop is not None:
        msg["distance_to_next_stop"] = distance_to_next_stop
    msg["confidence"] = confidence
    msg["contributor_count"] = contributor_count
    msg["data_freshness"] = data_freshness
    msg["timestamp"] = iso_from_epoch(timestamp)
    msg["metadata"] = {"source": source, "quality_score": quality_score}
    return msg  # type: ignore[return-value]


def encode(obj: Any) -> bytes:
    """The one JSON encoder of the gateway: compact UTF-8, key order kept."""
    return orjson.dumps(obj)


class MessageIds:
    """Unique, ordered message ids: ``<node>-<counter>`` (counter in base 36)."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self, node_id: str | None = None, start: int = 1) -> None:
        self._prefix = (node_id or os.urandom(4).hex()) + "-"
        self._counter = itertools.count(start)

    def next(self) -> str:
        return self._prefix + _base36(next(self._counter))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
