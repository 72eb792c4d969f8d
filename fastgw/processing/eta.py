"""Where a bus is on its route, which stops come next, and when it gets there.

Everything here is pure and synchronous. The pieces:

* :class:`PatternIndex` — per route direction, precomputed once: the shape's
  segments in metres (equirectangular projection around Bengaluru), a uniform
  grid of 100 m cells listing the segments within :data:`OFF_ROUTE_M` of each
  cell, the stops (distance, id, name, channel) and the trips (by id, by start).
* :meth:`PatternIndex.project` — nearest point of the shape to a position.
  A vehicle's next report first searches only the segments of its plausible
  along-route window (from its previous projection); otherwise, or if nothing
  there is within 100 m, the grid: it makes the search exact and cheap: every segment within ``OFF_ROUTE_M`` of
  the point is in the point's cell, so the best candidate is the true nearest
  segment (no full scan, ever); a point with no candidate within
  ``OFF_ROUTE_M`` is off-route. With a hint (the vehicle's previous
  projection) a candidate inside the plausible along-route window wins over a
  nearer one outside it unless the latter is more than :data:`WINDOW_PREFERENCE_M`
  nearer: a shape that passes the same road twice does not make a bus jump.
* :class:`TransitIndex` — all patterns of a feed, the service clock; cached per feed.
* :class:`EtaEngine` — per-vehicle state (bounded LRU), speed smoothing, trip
  matching, and the next ``k`` stops' arrival estimates (:class:`Estimate`).

Distances "along the route" are those of the GTFS shape (``shape_dist_traveled``,
haversine metres), interpolated linearly inside a segment exactly as
:meth:`fastgw.transit.gtfs.Shape.point_at` does, so a position produced by
``point_at(d)`` projects back to ``d``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from typing import Iterable, NamedTuple

from fastgw.transit.gtfs import Feed, Pattern, Route, Trip

from .times import ServiceClock

__all__ = [
    "OFF_ROUTE_M",
    "STOPPED_KMH",
    "SPEED_TAU_S",
    "MATCH_WINDOW_S",
    "Projection",
    "StopEta",
    "Estimate",
    "PatternIndex",
    "TransitIndex",
    "EtaEngine",
    "to_xy",
    "stop_confidence",
    "position_confidence",
    "crowding_level",
]

# --------------------------------------------------------------------------
# Constants (documented in docs/ingest.md)
# --------------------------------------------------------------------------

#: Further than this from the route shape: off-route (location_update, no ETAs).
OFF_ROUTE_M = 300.0
#: Below this smoothed speed the bus counts as stopped: ETAs come from the timetable.
STOPPED_KMH = 3.0
#: Time constant of the exponential smoothing of a vehicle's speed.
SPEED_TAU_S = 60.0
#: A trip is matched by schedule only if the bus is at most this early or late on it.
MATCH_WINDOW_S = 3600.0
#: Fastest plausible bus (for the along-route window of the next projection).
MAX_SPEED_MPS = 150.0 / 3.6
#: Tolerance behind the previous projection (GPS noise, a bus reversing a little).
BACKWARD_TOLERANCE_M = 100.0
#: A candidate outside the window wins only if it is this much nearer than the best inside.
WINDOW_PREFERENCE_M = 100.0
#: Local search (segments of the window only) when the window is at most this long ...
LOCAL_SEARCH_MAX_M = 2_000.0
#: ... and its result is taken if within this distance (squared) of the shape.
LOCAL_ACCEPT_D2 = WINDOW_PREFERENCE_M**2
#: A stop within this distance behind or ahead counts as reached, not as "next" (float noise).
AT_STOP_M = 1.0
#: A stopped bus this close to the first stop before its departure waits for the departure.
AT_ORIGIN_M = 50.0
#: Speed samples from successive projections are used only if this close in time.
MAX_SAMPLE_GAP_S = 300.0
#: Assumed GPS accuracy when a report has none (also the builder's default).
DEFAULT_ACCURACY_M = 10.0

GRID_CELL_M = 100.0
_GRID_RADIUS_M = OFF_ROUTE_M + GRID_CELL_M * math.sqrt(0.5)  # cell half-diagonal

#: Equirectangular projection around central Bengaluru. Over the 12.6-13.4 N box the
#: scale error of a fixed reference latitude is below 0.3 %.
LAT0 = 12.97
LON0 = 77.59
M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(LAT0))


def to_xy(lat: float, lon: float) -> tuple[float, float]:
    """Metres east and north of (LAT0, LON0)."""
    return (lon - LON0) * M_PER_DEG_LON, (lat - LAT0) * M_PER_DEG_LAT


def _point_segment_distance(px: float, py: float, x0: float, y0: float, dx: float, dy: float) -> float:
    len2 = dx * dx + dy * dy
    t = ((px - x0) * dx + (py - y0) * dy) / len2 if len2 > 0 else 0.0
    t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
    return math.hypot(x0 + t * dx - px, y0 + t * dy - py)


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


class Projection:
    """A position projected on a shape: ``dist_m`` along it, ``offset_m`` away from it."""

    __slots__ = ("dist_m", "offset_m", "segment")

    def __init__(self, dist_m: float, offset_m: float, segment: int) -> None:
        self.dist_m = dist_m
        self.offset_m = offset_m
        self.segment = segment

    def __repr__(self) -> str:
        return f"Projection(dist_m={self.dist_m:.1f}, offset_m={self.offset_m:.1f}, segment={self.segment})"


class StopEta(NamedTuple):
    """One upcoming stop: how far (m along the route), when (epoch s), how late, how sure.

    ``travel_s`` is ``arrival_ts`` minus the observation time; ``scheduled_ts`` and
    ``delay_s`` (positive: late) are None without a matched trip.
    """

    index: int  # position in the pattern's stop list
    stop_id: str
    distance_m: float
    travel_s: float
    arrival_ts: float
    scheduled_ts: float | None
    delay_s: float | None
    confidence: float


_new_tuple = tuple.__new__


class Estimate:
    """What :meth:`EtaEngine.observe` concluded from one report.

    ``projection`` is None when the vehicle is off-route (then ``stops`` is
    empty). ``basis`` is ``"speed"`` (distance / smoothed speed) or
    ``"timetable"`` (stopped or unknown speed: the matched trip's scheduled
    running time, or the pattern's typical speed without a trip).
    """

    __slots__ = (
        "pattern", "projection", "offset_m", "speed_mps", "basis", "trip", "origin_ts", "next_index", "stops",
    )

    def __init__(self, pattern: "PatternIndex", projection: Projection | None, offset_m: float) -> None:
        self.pattern = pattern
        self.projection = projection
        self.offset_m = offset_m  # distance to the shape (inf: nothing within OFF_ROUTE_M)
        self.speed_mps: float | None = None  # smoothed speed after this report
        self.basis = "speed"
        self.trip: Trip | None = None
        self.origin_ts: float | None = None  # epoch of the matched trip's service-day origin
        #: Index of the first stop ahead (AT_STOP_M tolerance); len(stops) past the last stop.
        self.next_index = len(pattern.stop_dists)
        self.stops: list[StopEta] = []

    @property
    def on_route(self) -> bool:
        return self.projection is not None


# --------------------------------------------------------------------------
# Indexes
# --------------------------------------------------------------------------


class PatternIndex:
    """Precomputed geometry, stops and trips of one route direction."""

    __slots__ = (
        "route_id", "direction", "route_number", "pattern", "length_m", "channels",
        "segments", "segment_starts", "headings", "grid", "stop_dists", "stop_ids", "stop_names", "stop_channels",
        "trips", "trip_by_id", "trip_starts", "longest_trip_s", "typical_speed_mps",
    )

    def __init__(self, route: Route, pattern: Pattern, stop_names: dict[str, str]) -> None:
        self.route_id = route.route_id
        self.direction = pattern.direction
        self.route_number = route.short_name
        self.pattern = pattern
        self.length_m = pattern.length_m
        self.channels = (
            f"route:{route.route_id}:{pattern.direction}",
            f"route:{route.route_id}:all",
            "system:all_updates",
        )
        shape = pattern.shape
        xy = [to_xy(lat, lon) for lat, lon in zip(shape.lats, shape.lons)]
        dists = shape.dists
        segments: list[tuple[int, float, float, float, float, float, float, float]] = []
        for i in range(len(xy) - 1):
            (x0, y0), (x1, y1) = xy[i], xy[i + 1]
            dx, dy = x1 - x0, y1 - y0
            len2 = dx * dx + dy * dy
            inv = 1.0 / len2 if len2 > 0 else 0.0
            segments.append((i, x0, y0, dx, dy, inv, dists[i], dists[i + 1] - dists[i]))
        if not segments:  # a one-point shape: a zero-length segment
            x0, y0 = xy[0]
            segments.append((0, x0, y0, 0.0, 0.0, 0.0, dists[0], 0.0))
        self.segments = tuple(segments)
        self.segment_starts = tuple(seg[6] for seg in segments)
        self.headings = shape.headings or (0.0,)
        self.grid = self._build_grid(segments)
        self.stop_dists = tuple(stop.dist_m for stop in pattern.stops)
        self.stop_ids = tuple(stop.stop_id for stop in pattern.stops)
        self.stop_names = tuple(stop_names.get(stop.stop_id, stop.stop_id) for stop in pattern.stops)
        self.stop_channels = tuple(f"stop:{stop.stop_id}:arrivals" for stop in pattern.stops)
        self.trips = pattern.trips
        self.trip_by_id = {trip.trip_id: trip for trip in pattern.trips}
        self.trip_starts = tuple(trip.start_s for trip in pattern.trips)
        self.longest_trip_s = max((trip.duration_s for trip in pattern.trips), default=0)
        speeds = sorted(self.length_m / trip.duration_s for trip in pattern.trips if trip.duration_s > 0)
        #: Median timetable speed, for a stopped bus without a matched trip (15 km/h if no trips).
        self.typical_speed_mps = speeds[len(speeds) // 2] if speeds else 15.0 / 3.6

    @staticmethod
    def _build_grid(segments: Iterable[tuple]) -> dict[int, tuple]:
        """Cell -> segments that come within OFF_ROUTE_M of some point of the cell."""
        cells: dict[int, list[tuple]] = {}
        r = _GRID_RADIUS_M
        half = GRID_CELL_M / 2
        for seg in segments:
            _, x0, y0, dx, dy, _, _, _ = seg
            ix0 = math.floor((min(x0, x0 + dx) - r) / GRID_CELL_M)
            ix1 = math.floor((max(x0, x0 + dx) + r) / GRID_CELL_M)
            iy0 = math.floor((min(y0, y0 + dy) - r) / GRID_CELL_M)
            iy1 = math.floor((max(y0, y0 + dy) + r) / GRID_CELL_M)
            for ix in range(ix0, ix1 + 1):
                cx = ix * GRID_CELL_M + half
                for iy in range(iy0, iy1 + 1):
                    cy = iy * GRID_CELL_M + half
                    # Any point of the cell is within the half-diagonal of its centre.
                    if _point_segment_distance(cx, cy, x0, y0, dx, dy) <= r:
                        cells.setdefault(ix * 100_003 + iy, []).append(seg)
        return {key: tuple(value) for key, value in cells.items()}

    def project(
        self, lat: float, lon: float, hint_dist: float | None = None, max_advance_m: float = math.inf
    ) -> tuple[Projection | None, float]:
        """Project a position on the shape: ``(projection or None if off-route, offset_m)``.

        ``hint_dist`` (the previous projection of the same vehicle) and
        ``max_advance_m`` (how far it can have gone since) define the window
        ``[hint - BACKWARD_TOLERANCE_M, hint + max_advance_m]`` whose candidates
        are preferred (see the module docstring). ``offset_m`` is ``inf`` when
        no segment lies within :data:`OFF_ROUTE_M`.
        """
        x = (lon - LON0) * M_PER_DEG_LON
        y = (lat - LAT0) * M_PER_DEG_LAT
        if hint_dist is not None and max_advance_m <= LOCAL_SEARCH_MAX_M:
            # Local search: only the segments overlapping the window. Its best point,
            # if within WINDOW_PREFERENCE_M, is what the grid search below would pick
            # too (nothing outside the window can beat it by that margin).
            lo = hint_dist - BACKWARD_TOLERANCE_M
            hi = hint_dist + max_advance_m
            segments = self.segments
            n = len(segments)
            i = bisect_right(self.segment_starts, lo) - 1
            if i < 0:
                i = 0
            best_d2 = LOCAL_ACCEPT_D2
            best = None
            while i < n:
                j, x0, y0, dx, dy, inv, d0, dd = segments[i]
                if d0 > hi:
                    break
                i += 1
                t = ((x - x0) * dx + (y - y0) * dy) * inv
                if t < 0.0:
                    t = 0.0
                elif t > 1.0:
                    t = 1.0
                ex = x0 + t * dx - x
                ey = y0 + t * dy - y
                d2 = ex * ex + ey * ey
                if d2 < best_d2:
                    along = d0 + t * dd
                    if lo <= along <= hi:
                        best_d2, best = d2, (along, j)
            if best is not None:
                offset = math.sqrt(best_d2)
                return Projection(best[0], offset, best[1]), offset
        candidates = self.grid.get(int(math.floor(x / GRID_CELL_M)) * 100_003 + int(math.floor(y / GRID_CELL_M)))
        if not candidates:
            return None, math.inf
        best_d2 = math.inf
        best_seg = -1
        best_dist = 0.0
        if hint_dist is None:
            for i, x0, y0, dx, dy, inv, d0, dd in candidates:
                t = ((x - x0) * dx + (y - y0) * dy) * inv
                if t < 0.0:
                    t = 0.0
                elif t > 1.0:
                    t = 1.0
                ex = x0 + t * dx - x
                ey = y0 + t * dy - y
                d2 = ex * ex + ey * ey
                if d2 < best_d2:
                    best_d2, best_seg, best_dist = d2, i, d0 + t * dd
            offset = math.sqrt(best_d2)
        else:
            lo = hint_dist - BACKWARD_TOLERANCE_M
            hi = hint_dist + max_advance_m
            best_score = math.inf
            for i, x0, y0, dx, dy, inv, d0, dd in candidates:
                t = ((x - x0) * dx + (y - y0) * dy) * inv
                if t < 0.0:
                    t = 0.0
                elif t > 1.0:
                    t = 1.0
                ex = x0 + t * dx - x
                ey = y0 + t * dy - y
                d = math.sqrt(ex * ex + ey * ey)
                along = d0 + t * dd
                score = d if lo <= along <= hi else d + WINDOW_PREFERENCE_M
                if score < best_score:
                    best_score, best_d2, best_seg, best_dist = score, d, i, along
            offset = best_d2  # holds the distance itself in this branch
        if offset > OFF_ROUTE_M:
            return None, offset
        return Projection(best_dist, offset, best_seg), offset

    def project_exhaustive(self, lat: float, lon: float) -> Projection:
        """Nearest point over every segment (no grid, no threshold): for tests and tools."""
        x, y = to_xy(lat, lon)
        best = (math.inf, 0, 0.0)
        for i, x0, y0, dx, dy, inv, d0, dd in self.segments:
            t = ((x - x0) * dx + (y - y0) * dy) * inv
            t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
            d = math.hypot(x0 + t * dx - x, y0 + t * dy - y)
            if d < best[0]:
                best = (d, i, d0 + t * dd)
        return Projection(best[2], best[0], best[1])

    def next_stop_index(self, dist_m: float) -> int:
        """Index of the first stop more than :data:`AT_STOP_M` ahead of ``dist_m`` (== len(stops) past the end)."""
        return bisect_right(self.stop_dists, dist_m + AT_STOP_M)

    def match_trip(self, service_s: float, dist_m: float) -> tuple[Trip | None, float]:
        """The trip whose schedule is nearest: ``(trip, deviation_s)`` or ``(None, inf)``.

        ``service_s`` is the time on one service day's clock. The deviation is
        ``service_s - scheduled time at dist_m`` (positive: late), which for
        these linear timetables is the schedule-position difference divided by
        the trip's speed. Only trips within :data:`MATCH_WINDOW_S` qualify.
        """
        starts = self.trip_starts
        if not starts or self.length_m <= 0:
            return None, math.inf
        frac = min(max(dist_m / self.length_m, 0.0), 1.0)
        # scheduled(dist) = start + duration * frac, in [start, start + longest * frac]
        lo = bisect_left(starts, service_s - MATCH_WINDOW_S - self.longest_trip_s * frac)
        hi = bisect_right(starts, service_s + MATCH_WINDOW_S)
        best: Trip | None = None
        best_abs = MATCH_WINDOW_S
        best_dev = math.inf
        trips = self.trips
        for j in range(lo, hi):
            trip = trips[j]
            dev = service_s - (trip.start_s + (trip.end_s - trip.start_s) * frac)
            a = -dev if dev < 0 else dev
            if a <= best_abs and (best is None or a < best_abs or trip.trip_id < best.trip_id):
                best, best_abs, best_dev = trip, a, dev
        return best, best_dev


class TransitIndex:
    """Every :class:`PatternIndex` of a feed, keyed ``(route_id, direction)``, and its clock."""

    __slots__ = ("feed", "patterns", "route_ids", "route_numbers", "clock", "trip_patterns", "trip_routes")

    _cache: dict[int, "TransitIndex"] = {}

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        names = {stop_id: stop.name for stop_id, stop in feed.stops.items()}
        self.patterns: dict[tuple[str, str], PatternIndex] = {
            (route.route_id, direction): PatternIndex(route, pattern, names)
            for route in feed.routes.values()
            for direction, pattern in route.directions.items()
        }
        self.route_ids = frozenset(feed.routes)
        self.route_numbers = {route_id: route.short_name for route_id, route in feed.routes.items()}
        self.clock = ServiceClock(feed.timezone)
        self.trip_patterns = {
            trip_id: index for index in self.patterns.values() for trip_id in index.trip_by_id
        }
        #: trip id -> (route_id, direction), to complete GTFS-Realtime trip descriptors.
        self.trip_routes = {trip_id: (p.route_id, p.direction) for trip_id, p in self.trip_patterns.items()}

    @classmethod
    def for_feed(cls, feed: Feed) -> "TransitIndex":
        """The index of ``feed``, built once per feed object (building takes ~1 s)."""
        index = cls._cache.get(id(feed))
        if index is None or index.feed is not feed:
            index = cls._cache[id(feed)] = cls(feed)
        return index


# --------------------------------------------------------------------------
# Confidence and crowding (documented rules)
# --------------------------------------------------------------------------


def position_confidence(reported: float | None, accuracy_m: float | None, offset_m: float) -> float:
    """How sure the position is: the reported confidence (else the GPS-accuracy factor)
    times the off-route factor: ``1 - offset/600`` on the route (1 on the shape, 0.5 at
    300 m), a flat 0.25 off it (the exact offset is not computed there)."""
    base = reported if reported is not None else _accuracy_factor(accuracy_m)
    return base * (1.0 - offset_m / 600.0 if offset_m <= OFF_ROUTE_M else 0.25)


def _accuracy_factor(accuracy_m: float | None) -> float:
    # 1 up to 20 m, 0.5 at 120 m, 0.25 at 320 m.
    acc = DEFAULT_ACCURACY_M if accuracy_m is None else accuracy_m
    return 1.0 / (1.0 + max(0.0, acc - 20.0) / 100.0)


def stop_confidence(
    reported: float | None,
    distance_m: float,
    accuracy_m: float | None,
    offset_m: float,
    age_s: float,
    timetable: bool,
) -> float:
    """Confidence of one stop ETA, in [0, 1]::

        (reported confidence or 1) x 1/(1 + distance/10 km) x accuracy factor
        x (1 - offset/600 m) x exp(-age/300 s) x (0.8 if timetable-based)
    """
    c = 1.0 if reported is None else reported
    c *= 1.0 / (1.0 + distance_m / 10_000.0)
    c *= _accuracy_factor(accuracy_m)
    c *= max(0.0, 1.0 - offset_m / 600.0)
    if age_s > 0:
        c *= math.exp(-age_s / 300.0)
    if timetable:
        c *= 0.8
    return min(1.0, max(0.0, c))


_OCCUPANCY_CROWDING = {
    "EMPTY": "low",
    "MANY_SEATS_AVAILABLE": "low",
    "FEW_SEATS_AVAILABLE": "medium",
    "STANDING_ROOM_ONLY": "medium",
    "CRUSHED_STANDING_ROOM_ONLY": "high",
    "FULL": "high",
    "NOT_ACCEPTING_PASSENGERS": "high",
    "NOT_BOARDABLE": "high",
}


def crowding_level(occupancy_status: str | None, contributor_count: int | None) -> str:
    """``low``/``medium``/``high``.

    From the GTFS-Realtime occupancy status when the report has one. Otherwise a
    **placeholder** (there is no passenger-count source yet): more riders
    reporting the same bus means more riders on it — ``contributor_count`` >= 6
    is ``high``, 3-5 ``medium``, else (0-2 or unknown) ``low``.
    """
    level = _OCCUPANCY_CROWDING.get(occupancy_status) if occupancy_status is not None else None
    if level is not None:
        return level
    if contributor_count is None:
        return "low"
    if contributor_count >= 6:
        return "high"
    if contributor_count >= 3:
        return "medium"
    return "low"


# --------------------------------------------------------------------------
# Per-vehicle state and estimation
# --------------------------------------------------------------------------


class _VehicleState:
    __slots__ = ("pattern", "last_ts", "ts", "dist", "speed")

    def __init__(self, pattern: PatternIndex, last_ts: float) -> None:
        self.pattern = pattern
        self.last_ts = last_ts  # newest report accepted (for ordering)
        self.ts: float | None = None  # newest on-route projection ...
        self.dist = 0.0  # ... its distance along the shape
        self.speed: float | None = None  # smoothed speed, m/s


class EtaEngine:
    """Per-vehicle tracking and stop ETAs for one feed.

    Keeps, per vehicle, its last on-route projection and a smoothed speed in an
    LRU of at most ``max_vehicles`` entries (the least recently reported vehicle
    is forgotten first; forgetting only costs the speed history and the
    projection hint). A vehicle that changes route or direction starts afresh.
    """

    def __init__(self, index: TransitIndex, *, k: int = 5, max_vehicles: int = 20_000) -> None:
        if k < 0:
            raise ValueError("k must be >= 0")
        if max_vehicles < 1:
            raise ValueError("max_vehicles must be >= 1")
        self.index = index
        self.k = k
        self.max_vehicles = max_vehicles
        self._vehicles: OrderedDict[str, _VehicleState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vehicles)

    def reset(self) -> None:
        """Forget every vehicle."""
        self._vehicles.clear()

    def observe(
        self,
        vehicle_id: str,
        pattern: PatternIndex,
        lat: float,
        lon: float,
        ts: float,
        *,
        speed_kmh: float | None = None,
        trip_id: str | None = None,
        accuracy_m: float | None = None,
        confidence: float | None = None,
        now: float | None = None,
    ) -> Estimate | None:
        """Take one report into account and estimate the next ``k`` stops.

        Returns None (and changes nothing) when the report is not newer than
        the vehicle's last accepted one (a duplicate or out-of-order report).
        ``now`` (default ``ts``) is used for the data age in the confidence.
        """
        vehicles = self._vehicles
        state = vehicles.get(vehicle_id)
        if state is not None:
            if state.pattern is not pattern:
                state = None  # new route/direction: a new trip, old history does not apply
            elif ts <= state.last_ts:
                return None
            else:
                vehicles.move_to_end(vehicle_id)
        if state is None:
            state = vehicles[vehicle_id] = _VehicleState(pattern, ts)
            vehicles.move_to_end(vehicle_id)  # a replaced entry (new route) keeps its place otherwise
            if len(vehicles) > self.max_vehicles:
                vehicles.popitem(last=False)
        state.last_ts = ts

        prev_ts = state.ts
        if prev_ts is not None:
            dt = ts - prev_ts
            projection, offset = pattern.project(lat, lon, state.dist, dt * MAX_SPEED_MPS)
        else:
            dt = 0.0
            projection, offset = pattern.project(lat, lon)
        est = Estimate(pattern, projection, offset)
        if projection is None:
            return est  # off-route: the state keeps its last on-route projection
        dist = projection.dist_m

        # Speed: reported speed as the sample, else the along-route progress since the
        # previous on-route projection; exponentially smoothed over SPEED_TAU_S.
        sample = speed_kmh / 3.6 if speed_kmh is not None else None
        if sample is None and prev_ts is not None and 0.0 < dt <= MAX_SAMPLE_GAP_S:
            progress = dist - state.dist
            if progress >= -BACKWARD_TOLERANCE_M:
                sample = min(max(progress, 0.0) / dt, MAX_SPEED_MPS)
        speed = state.speed
        if sample is not None:
            if speed is None or prev_ts is None:
                speed = sample
            else:
                speed += (1.0 - math.exp(-max(dt, 0.0) / SPEED_TAU_S)) * (sample - speed)
        state.ts, state.dist, state.speed = ts, dist, speed
        est.speed_mps = speed

        # Trip: the reported one if the feed knows it on this pattern, else by schedule.
        trip = pattern.trip_by_id.get(trip_id) if trip_id is not None else None
        trip, origin = self._trip_and_origin(pattern, trip, ts, dist)
        est.trip = trip
        est.origin_ts = origin

        stop_dists = pattern.stop_dists
        first = est.next_index = bisect_right(stop_dists, dist + AT_STOP_M)
        last = min(first + self.k, len(stop_dists))
        if first >= last:
            return est
        timetable = speed is None or speed * 3.6 < STOPPED_KMH
        length = pattern.length_m
        base_ts = ts
        if timetable:
            est.basis = "timetable"
            if trip is not None:
                # Scheduled running time (linear timetables: the trip's average speed).
                s_per_m = (trip.end_s - trip.start_s) / length if length > 0 else 0.0
                departure = origin + trip.start_s  # type: ignore[operator]
                if dist <= stop_dists[0] + AT_ORIGIN_M and ts < departure:
                    base_ts = departure  # waiting at the terminus: leaves on schedule
            else:
                s_per_m = 1.0 / pattern.typical_speed_mps
        else:
            s_per_m = 1.0 / speed  # type: ignore[operator]
        # Confidence (stop_confidence, inlined): only the distance factor differs between stops.
        c0 = 1.0 if confidence is None else confidence
        if accuracy_m is not None and accuracy_m > 20.0:
            c0 /= 1.0 + (accuracy_m - 20.0) / 100.0
        c0 *= 1.0 - offset / 600.0
        if now is not None and now > ts:
            c0 *= math.exp((ts - now) / 300.0)
        if timetable:
            c0 *= 0.8
        if trip is not None:
            # scheduled(d) = origin + start + (end - start) * d / length, clamped like Trip.scheduled_at
            t_start = origin + trip.start_s  # type: ignore[operator]
            t_end = origin + trip.end_s  # type: ignore[operator]
            sched_per_m = (trip.end_s - trip.start_s) / length if length > 0 else 0.0
        stop_ids = pattern.stop_ids
        stops = est.stops
        for j in range(first, last):
            stop_d = stop_dists[j]
            distance = stop_d - dist
            arrival = base_ts + distance * s_per_m
            if trip is not None:
                if stop_d >= length:
                    scheduled = t_end
                elif stop_d <= 0.0:
                    scheduled = t_start
                else:
                    scheduled = t_start + stop_d * sched_per_m
                delay = arrival - scheduled
            else:
                scheduled = delay = None
            stops.append(
                _new_tuple(
                    StopEta,
                    (j, stop_ids[j], distance, arrival - ts, arrival, scheduled, delay, c0 / (1.0 + distance / 10_000.0)),
                )
            )
        return est

    def _trip_and_origin(
        self, pattern: PatternIndex, trip: Trip | None, ts: float, dist: float
    ) -> tuple[Trip | None, float | None]:
        """The trip (given, else matched by schedule) and the epoch of its service-day origin.

        Service days: today's, and near the day boundary yesterday's (trips past
        midnight have times > 24 h) or tomorrow's (a bus early for a trip just
        after midnight); the one where the bus is nearest its schedule wins.
        """
        clock = self.index.clock
        origin = clock.midnight(ts)
        service_s = ts - origin
        if 8 * 3600 <= service_s <= 22 * 3600:
            origins: tuple[float, ...] = (origin,)
        elif service_s < 8 * 3600:
            origins = (origin, clock.midnight(origin - 43_200))  # and yesterday's service day
        else:
            origins = (origin, clock.midnight(origin + 129_600))  # and tomorrow's
        best_origin: float | None = None
        best_abs = math.inf
        if trip is not None:
            if len(origins) == 1:
                return trip, origin
            at = trip.scheduled_at(dist, pattern.length_m)
            for o in origins:
                a = abs(ts - o - at)
                if a < best_abs:
                    best_origin, best_abs = o, a
            return trip, best_origin
        best_trip = None
        for o in origins:
            candidate, dev = pattern.match_trip(ts - o, dist)
            if candidate is not None and abs(dev) < best_abs:
                best_trip, best_origin, best_abs = candidate, o, abs(dev)
        return best_trip, best_origin
