"""Input schemas of the Kafka topics, as msgspec structs (documented in ``docs/ingest.md``).

Decoding with ``msgspec.json.Decoder(T)`` (or ``msgspec.convert(obj, T)``) checks
types, required fields and every ``Meta`` constraint in one pass; a failure is a
``schema`` rejection. Unknown fields are ignored (producers may add fields before
the gateway knows them). Checks that need the GTFS feed or the clock
(``unknown_route``, ``bad_coordinates``, ``future_timestamp``) are made by the
processors, so that they get their own reason codes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "ID_PATTERN",
    "ID_RE",
    "BBOX",
    "OCCUPANCY_STATUSES",
    "LocationData",
    "AlertData",
    "NotificationData",
    "PointsEarned",
    "RankChange",
    "Achievement",
    "UserEvent",
    "PERIODS",
    "json_schemas",
]

#: Channel-safe identifier (same grammar as ``fastgw.channels``): user, alert, achievement ids.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
ID_RE = re.compile(ID_PATTERN)

#: Bengaluru bounding box (south, north, west, east), degrees. Every stop and shape
#: point of the packaged 40-route subset lies inside it (12.78-13.31 N, 77.38-77.77 E).
BBOX = (12.6, 13.4, 77.3, 77.9)

#: GTFS-Realtime ``VehiclePosition.OccupancyStatus`` names accepted in JSON too.
OCCUPANCY_STATUSES = (
    "EMPTY",
    "MANY_SEATS_AVAILABLE",
    "FEW_SEATS_AVAILABLE",
    "STANDING_ROOM_ONLY",
    "CRUSHED_STANDING_ROOM_ONLY",
    "FULL",
    "NOT_ACCEPTING_PASSENGERS",
    "NO_DATA_AVAILABLE",
    "NOT_BOARDABLE",
)

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
ShortText = Annotated[str, Meta(min_length=1, max_length=64)]
#: Epoch milliseconds (2001-09-09 .. 5138-11-16: an epoch-*seconds* value is refused
#: instead of being read as January 1970) or an ISO 8601 string with a UTC offset.
Timestamp = Union[Annotated[int, Meta(ge=10**12, lt=10**14)], Annotated[str, Meta(max_length=40)]]
PERIODS = ("daily", "weekly", "monthly")
Period = Literal["daily", "weekly", "monthly"]
Points = Annotated[int, Meta(ge=-1_000_000, le=1_000_000)]


class LocationData(Struct, kw_only=True):
    """One vehicle position, the JSON value of a ``location-updates`` record.

    Units: degrees, km/h, degrees clockwise from north, metres. ``timestamp`` is
    when the position was observed. ``latitude``/``longitude`` are only typed
    here; the processor checks they are finite and inside :data:`BBOX`.
    """

    vehicle_id: ShortText
    route_id: ShortText
    direction: Literal["UP", "DOWN"]
    trip_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    latitude: float
    longitude: float
    speed: Annotated[float, Meta(ge=0.0, le=150.0)] | None = None
    heading: Annotated[float, Meta(ge=0.0, le=360.0)] | None = None
    accuracy: Annotated[float, Meta(ge=0.0, le=10_000.0)] | None = None
    timestamp: Timestamp
    contributor_count: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    confidence: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    user_id: Id | None = None
    source: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,31}$")] | None = None
    occupancy_status: Literal[OCCUPANCY_STATUSES] | None = None  # type: ignore[valid-type]


class AlertData(Struct, kw_only=True):
    """A service alert, the JSON value of a ``service-alerts`` record.

    ``affected_routes`` empty means network-wide (published on ``alerts:all`` only).
    Times: epoch ms or ISO 8601; ``timestamp`` defaults to the Kafka record time.
    """

    alert_id: Id
    severity: Literal["info", "warning", "critical"]
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    message: Annotated[str, Meta(max_length=4000)] = ""
    affected_routes: Annotated[list[ShortText], Meta(max_length=100)] = []
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    timestamp: Timestamp | None = None


class NotificationData(Struct, kw_only=True):
    """A message for one user, the JSON value of a ``system-notifications`` record.

    ``user_id`` may be left out when the Kafka key carries it; ``notification_id``
    defaults to a hash of the record (stable across redeliveries).
    """

    notification_id: Id | None = None
    user_id: Id | None = None
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    body: Annotated[str, Meta(max_length=2000)] = ""
    category: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "system"
    data: dict[str, Any] = {}
    timestamp: Timestamp | None = None


class _UserEventBase(Struct, kw_only=True, tag_field="event_type"):
    """Fields every ``user-events`` record may carry (``event_type`` selects the kind)."""

    user_id: Id | None = None
    display_name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    event_id: Id | None = None
    timestamp: Timestamp | None = None


class PointsEarned(_UserEventBase, tag="points_earned"):
    """``points`` (negative for a correction) added to the daily, weekly and monthly boards,
    global and, with ``route_id``, that route's."""

    points: Points
    route_id: ShortText | None = None
    reason: Annotated[str, Meta(max_length=200)] | None = None


class RankChange(_UserEventBase, tag="rank_change"):
    """The backend's authoritative total ``points`` of a user on one board (re-syncs the
    in-memory leaderboard, e.g. after a gateway restart). ``old_rank``/``new_rank`` are
    informational."""

    period: Period
    points: Annotated[int, Meta(ge=0, le=1_000_000_000)]
    route_id: ShortText | None = None
    old_rank: Annotated[int, Meta(ge=1)] | None = None
    new_rank: Annotated[int, Meta(ge=1)] | None = None


class Achievement(_UserEventBase, tag="achievement"):
    """An unlocked achievement: a ``user_notification`` (category ``achievement``) to the
    user, and ``points`` (bonus, default 0) counted like ``points_earned``."""

    achievement_id: Id
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    description: Annotated[str, Meta(max_length=1000)] = ""
    points: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    route_id: ShortText | None = None


UserEvent = Union[PointsEarned, RankChange, Achievement]

# Shared decoders (thread-safe, reusable).
LOCATION_DECODER = msgspec.json.Decoder(LocationData)
ALERT_DECODER = msgspec.json.Decoder(AlertData)
NOTIFICATION_DECODER = msgspec.json.Decoder(NotificationData)
USER_EVENT_DECODER = msgspec.json.Decoder(UserEvent)


def json_schemas() -> dict[str, Any]:
    """Machine-readable JSON Schemas (draft 2020-12) of every input, keyed by topic role."""
    return {
        "location": msgspec.json.schema(LocationData),
        "alerts": msgspec.json.schema(AlertData),
        "notifications": msgspec.json.schema(NotificationData),
        "user_events": msgspec.json.schema(UserEvent),
    }
