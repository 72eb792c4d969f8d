"""The packaged BMTC GTFS subset: loading it and asking where a bus is.

``data/bmtc-subset.json.gz`` is written by ``scripts/build_gtfs_subset.py``
(see ``data/NOTICE.md`` for its source and ODbL licence). It keeps, per route
direction, one stop pattern, one shape and the trips' start and end times;
intermediate stop times are linear in distance along the shape (the build
script verifies this against the original ``stop_times.txt``), so a trip's
position at any time follows from its start and end alone.

Everything here is pure Python and immutable; :func:`load_feed` parses the
file once and caches the result.
"""

from __future__ import annotations

import gzip
import json
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "Feed",
    "Route",
    "Pattern",
    "PatternStop",
    "Shape",
    "Stop",
    "Trip",
    "load_feed",
    "DATA_FILE",
]

#: File name of the packaged subset inside ``fastgw/transit/data``.
DATA_FILE = "bmtc-subset.json.gz"
#: The only file format :func:`load_feed` understands.
SUPPORTED_FORMAT = "fastgw-gtfs-subset/1"


def _bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlon = math.radians(lon2 - lon1)
    y = math.sin(dlon) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlon)
    return math.degrees(math.atan2(y, x)) % 360.0


def _segment_headings(lats: tuple[float, ...], lons: tuple[float, ...]) -> tuple[float, ...]:
    """Bearing of each segment; zero-length segments borrow a neighbour's bearing."""
    headings: list[float | None] = [
        _bearing_deg(lats[i], lons[i], lats[i + 1], lons[i + 1])
        if (lats[i], lons[i]) != (lats[i + 1], lons[i + 1])
        else None
        for i in range(len(lats) - 1)
    ]
    known = [h for h in headings if h is not None]
    previous = known[0] if known else 0.0  # leading repeats take the first real bearing
    filled = []
    for heading in headings:
        previous = heading if heading is not None else previous
        filled.append(previous)
    return tuple(filled)


@dataclass(frozen=True, slots=True)
class Shape:
    """A route direction's polyline with cumulative distances (metres) per point."""

    lats: tuple[float, ...]
    lons: tuple[float, ...]
    dists: tuple[float, ...]
    #: Bearing of segment ``i`` (point ``i`` to ``i + 1``); derived, not passed in.
    headings: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.lats) == len(self.lons) == len(self.dists) >= 1):
            raise ValueError("a shape needs at least one point and equal-length coordinate tuples")
        object.__setattr__(self, "headings", _segment_headings(self.lats, self.lons))

    @property
    def length_m(self) -> float:
        """Distance along the shape from its first to its last point."""
        return self.dists[-1]

    def point_at(self, dist_m: float) -> tuple[float, float, float]:
        """``(lat, lon, heading_deg)`` at ``dist_m`` along the shape.

        Distances outside ``[0, length_m]`` clamp to the end points. The
        heading is the bearing of the segment the point lies on.
        """
        dists = self.dists
        if len(dists) == 1:
            return self.lats[0], self.lons[0], 0.0
        if dist_m <= dists[0]:
            return self.lats[0], self.lons[0], self.headings[0]
        if dist_m >= dists[-1]:
            return self.lats[-1], self.lons[-1], self.headings[-1]
        i = bisect_right(dists, dist_m) - 1  # dists[i] <= dist_m < dists[i + 1]
        span = dists[i + 1] - dists[i]
        frac = (dist_m - dists[i]) / span if span > 0 else 0.0
        lat = self.lats[i] + frac * (self.lats[i + 1] - self.lats[i])
        lon = self.lons[i] + frac * (self.lons[i + 1] - self.lons[i])
        return lat, lon, self.headings[i]


@dataclass(frozen=True, slots=True)
class Stop:
    """A bus stop. ``name_kn`` is the Kannada name, when the source has one."""

    stop_id: str
    name: str
    name_kn: str | None
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class PatternStop:
    """A stop on a pattern, at ``dist_m`` metres along the pattern's shape."""

    stop_id: str
    dist_m: float


@dataclass(frozen=True, slots=True)
class Trip:
    """One scheduled run of a pattern.

    Times are seconds since midnight of the service day and may exceed 24 h
    for trips that run past midnight. The bus moves at constant speed from
    0 m at ``start_s`` to the pattern's last stop at ``end_s``.
    """

    trip_id: str
    start_s: int
    end_s: int

    @property
    def duration_s(self) -> int:
        return self.end_s - self.start_s

    def dist_at(self, t_s: float, pattern_length: float) -> float:
        """Scheduled distance along the shape at service time ``t_s``.

        Linear in time from 0 m at ``start_s`` to ``pattern_length`` (the last
        stop's distance) at ``end_s``; clamped outside the trip.
        """
        if t_s <= self.start_s:
            return 0.0
        if t_s >= self.end_s:
            return pattern_length
        return pattern_length * (t_s - self.start_s) / (self.end_s - self.start_s)

    def scheduled_at(self, dist_m: float, pattern_length: float) -> float:
        """Service time at which the bus is scheduled to be ``dist_m`` along the shape.

        The inverse of :meth:`dist_at`, clamped to ``[start_s, end_s]``.
        """
        if pattern_length <= 0 or dist_m <= 0:
            return float(self.start_s)
        if dist_m >= pattern_length:
            return float(self.end_s)
        return self.start_s + (self.end_s - self.start_s) * dist_m / pattern_length


@dataclass(frozen=True, slots=True)
class Pattern:
    """One direction of a route: its shape, its ordered stops and its trips (sorted by start)."""

    route_id: str
    direction: str  # "UP" | "DOWN"
    headsign: str
    shape: Shape
    stops: tuple[PatternStop, ...]
    trips: tuple[Trip, ...]
    # Derived indexes for bisect, filled in by __post_init__.
    _stop_dists: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _trip_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _longest_trip_s: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stops:
            raise ValueError(f"pattern {self.route_id} {self.direction} has no stops")
        starts = tuple(trip.start_s for trip in self.trips)
        if any(a > b for a, b in zip(starts, starts[1:])):
            raise ValueError(f"trips of {self.route_id} {self.direction} are not sorted by start")
        object.__setattr__(self, "_stop_dists", tuple(stop.dist_m for stop in self.stops))
        object.__setattr__(self, "_trip_starts", starts)
        longest = max((trip.duration_s for trip in self.trips), default=0)
        object.__setattr__(self, "_longest_trip_s", longest)

    @property
    def length_m(self) -> float:
        """Distance of the last stop along the shape: where every trip ends."""
        return self._stop_dists[-1]

    def next_stop(self, dist_m: float) -> PatternStop | None:
        """The first stop strictly ahead of ``dist_m``, or None past the last stop."""
        i = bisect_right(self._stop_dists, dist_m)
        return self.stops[i] if i < len(self.stops) else None

    def trips_active_at(self, t_s: float) -> list[Trip]:
        """Trips with ``start_s <= t_s <= end_s``, ``t_s`` being on this service day's clock."""
        # Only trips that started at most one longest-trip ago can still be running.
        hi = bisect_right(self._trip_starts, t_s)
        lo = bisect_left(self._trip_starts, t_s - self._longest_trip_s, 0, hi)
        return [trip for trip in self.trips[lo:hi] if trip.end_s >= t_s]


@dataclass(frozen=True, slots=True)
class Route:
    """A bus route with its directions keyed ``"UP"`` / ``"DOWN"``."""

    route_id: str
    short_name: str
    long_name: str
    color: str  # hex RRGGBB without '#', as in GTFS
    directions: dict[str, Pattern]


@dataclass(frozen=True, slots=True)
class Feed:
    """The whole subset. ``attribution`` must be shown wherever the data is used (ODbL)."""

    routes: dict[str, Route]
    stops: dict[str, Stop]
    timezone: str
    attribution: str
    feed_version: str

    def patterns(self) -> list[Pattern]:
        """Every route direction, ordered by route id then direction."""
        return [
            route.directions[direction]
            for _, route in sorted(self.routes.items())
            for direction in sorted(route.directions)
        ]


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _shape_from(points: list[list[float]]) -> Shape:
    lats, lons, dists = zip(*points)
    return Shape(lats=lats, lons=lons, dists=dists)


def _pattern_from(route_id: str, direction: str, raw: dict[str, Any]) -> Pattern:
    return Pattern(
        route_id=route_id,
        direction=direction,
        headsign=raw["headsign"],
        shape=_shape_from(raw["shape"]),
        stops=tuple(PatternStop(stop_id, dist) for stop_id, dist in raw["stops"]),
        trips=tuple(Trip(trip_id, start, end) for trip_id, start, end in raw["trips"]),
    )


def _route_from(route_id: str, raw: dict[str, Any]) -> Route:
    directions = {
        direction: _pattern_from(route_id, direction, pattern)
        for direction, pattern in raw["directions"].items()
    }
    return Route(route_id, raw["short_name"], raw["long_name"], raw["color"], directions)


def _feed_from(document: dict[str, Any]) -> Feed:
    if document.get("format") != SUPPORTED_FORMAT:
        found = document.get("format")
        raise ValueError(f"unsupported subset format {found!r}, expected {SUPPORTED_FORMAT!r}")
    return Feed(
        routes={route_id: _route_from(route_id, raw) for route_id, raw in document["routes"].items()},
        stops={
            stop_id: Stop(stop_id, raw["name"], raw["name_kn"], raw["lat"], raw["lon"])
            for stop_id, raw in document["stops"].items()
        },
        timezone=document["timezone"],
        attribution=document["attribution"],
        feed_version=document["feed_version"],
    )


def _read_packaged() -> bytes:
    return resources.files("fastgw.transit").joinpath("data", DATA_FILE).read_bytes()


@lru_cache(maxsize=4)
def _load_cached(path: str | None) -> Feed:
    compressed = Path(path).read_bytes() if path is not None else _read_packaged()
    return _feed_from(json.loads(gzip.decompress(compressed)))


def load_feed(path: str | PathLike[str] | None = None) -> Feed:
    """Load the GTFS subset; by default the one packaged with fastgw.

    The result is cached per path, so repeated calls are free and every
    caller shares the same immutable :class:`Feed`.
    """
    return _load_cached(None if path is None else str(Path(path).resolve()))
