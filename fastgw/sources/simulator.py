"""A bus simulator: buses move along real BMTC routes as the timetable says.

Every tick the simulator works out which trips of the packaged GTFS subset
(:mod:`fastgw.transit.gtfs`) are running at the current time in Bengaluru,
places each bus on its route shape by linear interpolation between the
trip's start and end time, and publishes one ``location_update`` per bus on
three channels::

    route:{route_id}:{direction}   route:{route_id}:all   system:all_updates

At night few real trips run, so when fewer than ``max_buses / 4`` are active
the simulator adds *virtual* trips: each route direction's timetable is
replayed with a fixed, seeded time shift that puts 02:30 IST near that
direction's busiest moment. Virtual trips carry a ``~virtual`` suffix on
their trip id, so a fresh gateway always shows moving buses.

All randomness (GPS noise, speed jitter, confidence, which trips win when
there are more than ``max_buses``) comes from the ``seed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from fastgw.messages import location_update
from fastgw.transit.gtfs import Feed, Pattern, Route, Trip, load_feed

__all__ = ["ActiveBus", "Simulator", "SYSTEM_CHANNEL", "VIRTUAL_SUFFIX"]

log = logging.getLogger(__name__)

SYSTEM_CHANNEL = "system:all_updates"
VIRTUAL_SUFFIX = "~virtual"
SOURCE = "simulator"

DAY_S = 86_400
#: Quiet time of night (IST) that virtual timetables map to each direction's busiest moment.
VIRTUAL_ANCHOR_S = 2 * 3600 + 30 * 60
#: Seeded spread (±) of the virtual shift, so directions don't all peak together.
VIRTUAL_JITTER_S = 30 * 60
#: Step of the search for a direction's busiest moment.
BUSIEST_SAMPLE_STEP_S = 300

GPS_NOISE_SIGMA_M = 3.0
SPEED_JITTER = 0.08  # ± fraction of the timetable speed
METRES_PER_DEGREE_LAT = 111_320.0

#: Bengaluru-area RTO codes used for made-up registration numbers (KA-01-F-1234).
RTO_CODES = ("01", "02", "03", "04", "05", "41", "50", "51", "53", "57")
REGISTRATION_NUMBERS = 9_999  # 0001..9999 per RTO code

T = TypeVar("T")
#: A running trip before selection: (rank, published trip id, pattern, trip, service_s).
_Candidate = tuple[int, str, Pattern, Trip, float]


@dataclass(frozen=True, slots=True)
class ActiveBus:
    """A bus running a trip at some moment.

    ``service_s`` is the time on the trip's own timetable clock (seconds since
    the service day's midnight, > 24 h for yesterday's late trips, shifted for
    virtual trips).
    """

    vehicle_id: str
    trip_id: str  # as published; virtual trips end in VIRTUAL_SUFFIX
    pattern: Pattern
    trip: Trip
    service_s: float
    virtual: bool

    @property
    def dist_m(self) -> float:
        """Scheduled distance along the route shape, without GPS noise."""
        return self.trip.dist_at(self.service_s, self.pattern.length_m)


class Simulator:
    """Publishes simulated ``location_update`` messages for buses on BMTC routes.

    ``publish(channel, message)`` is called three times per bus per tick. If
    it returns awaitables, :meth:`run` awaits them after each tick.
    """

    def __init__(
        self,
        publish: Callable[[str, dict], object],
        *,
        feed: Feed | None = None,
        max_buses: int = 200,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        routes: Iterable[str] | None = None,
    ) -> None:
        if max_buses < 1:
            raise ValueError("max_buses must be at least 1")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.feed = feed if feed is not None else load_feed()
        self.max_buses = max_buses
        self.interval = interval
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self._publish = publish
        self._clock = clock
        self._tz = ZoneInfo(self.feed.timezone)
        self._rng = random.Random(self.seed)
        self._patterns_by_route = self._select_patterns(routes)
        patterns = [pattern for patterns in self._patterns_by_route.values() for pattern in patterns]
        self._channels = {(p.route_id, p.direction): _channels_of(p) for p in patterns}
        self._virtual_shift_s = {(p.route_id, p.direction): self._virtual_shift(p) for p in patterns}
        self._vehicle_ids = _assign_vehicle_ids(self.feed)
        # Seeded order in which a route's running buses get its share of max_buses;
        # it looks random, so the buses shown are spread along the route.
        self._rank = {trip_id: _digest(f"{self.seed}:{trip_id}") for trip_id in self._vehicle_ids}
        # vehicle_id -> (epoch seconds, dist_m) at the previous tick, for speed.
        self._last_seen: dict[str, tuple[float, float]] = {}
        self._pending: list[Any] = []

    # ------------------------------------------------------------------
    # Which buses run
    # ------------------------------------------------------------------

    def active_buses(self, now: float | None = None) -> list[ActiveBus]:
        """Buses to show at epoch time ``now`` (default: the clock), at most ``max_buses``.

        Real trips come first. When fewer than ``max_buses / 4`` of them run,
        virtual trips fill the remaining places. Both are shared out
        round-robin over the routes.
        """
        now = self._clock() if now is None else now
        service_s = self.local_service_seconds(now)
        real = self._running_by_route(service_s, virtual=False)
        chosen = _round_robin(real, self.max_buses)
        if sum(map(len, real.values())) < self.max_buses / 4:
            virtual = self._running_by_route(service_s, virtual=True)
            chosen += _round_robin(virtual, self.max_buses - len(chosen))
        return [self._active_bus(*candidate) for candidate in chosen]

    def local_service_seconds(self, now: float) -> float:
        """Seconds since local midnight (Asia/Kolkata for BMTC) at epoch ``now``."""
        local = datetime.fromtimestamp(now, self._tz)
        return local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6

    def _running_by_route(self, service_s: float, *, virtual: bool) -> dict[str, list[_Candidate]]:
        """Running trips per route, each list in the seeded order that decides who is shown first."""
        by_route = {}
        for route_id, patterns in self._patterns_by_route.items():
            candidates = [
                candidate for pattern in patterns for candidate in self._running_on(pattern, service_s, virtual)
            ]
            candidates.sort()  # by rank: the tuples start with it
            by_route[route_id] = candidates
        return by_route

    def _running_on(self, pattern: Pattern, service_s: float, virtual: bool) -> list[_Candidate]:
        """Trips of one direction running at ``service_s``: today's and yesterday's past-midnight ones."""
        clock_s, suffix = service_s, ""
        if virtual:
            clock_s = (service_s + self._virtual_shift_s[pattern.route_id, pattern.direction]) % DAY_S
            suffix = VIRTUAL_SUFFIX
        rank = self._rank
        candidates = []
        for trip_clock_s in (clock_s, clock_s + DAY_S):  # + DAY_S: on yesterday's service-day clock
            for trip in pattern.trips_active_at(trip_clock_s):
                trip_id = trip.trip_id + suffix
                candidates.append((rank[trip_id], trip_id, pattern, trip, trip_clock_s))
        return candidates

    def _active_bus(self, _rank: int, trip_id: str, pattern: Pattern, trip: Trip, service_s: float) -> ActiveBus:
        """Turn a chosen candidate into an :class:`ActiveBus`."""
        virtual = trip_id.endswith(VIRTUAL_SUFFIX)
        return ActiveBus(self._vehicle_ids[trip_id], trip_id, pattern, trip, service_s, virtual)

    def _select_patterns(self, routes: Iterable[str] | None) -> dict[str, list[Pattern]]:
        route_ids = sorted(self.feed.routes) if routes is None else sorted(set(routes))
        unknown = [route_id for route_id in route_ids if route_id not in self.feed.routes]
        if unknown:
            raise ValueError(f"routes not in the feed: {unknown}")
        return {route_id: _directions_of(self.feed.routes[route_id]) for route_id in route_ids}

    def _virtual_shift(self, pattern: Pattern) -> int:
        """Seconds added to the local time to read this direction's virtual timetable."""
        pattern_rng = random.Random(f"{self.seed}:{pattern.route_id}:{pattern.direction}")
        jitter = pattern_rng.randint(-VIRTUAL_JITTER_S, VIRTUAL_JITTER_S)
        return (_busiest_moment(pattern) - VIRTUAL_ANCHOR_S + jitter) % DAY_S

    # ------------------------------------------------------------------
    # Ticking
    # ------------------------------------------------------------------

    def step(self, now: float | None = None) -> int:
        """Move every bus to epoch time ``now`` (default: the clock) and publish its position.

        Returns the number of buses published (each on three channels).
        """
        now = self._clock() if now is None else now
        buses = self.active_buses(now)
        last_seen, seen = self._last_seen, {}
        for bus in buses:
            dist_m = bus.dist_m
            message = self._location_message(bus, dist_m, now, last_seen.get(bus.vehicle_id))
            seen[bus.vehicle_id] = (now, dist_m)
            for channel in self._channels[bus.pattern.route_id, bus.pattern.direction]:
                self._send(channel, message)
        self._last_seen = seen  # forget buses that stopped running
        return len(buses)

    async def run(self) -> None:
        """Call :meth:`step` every ``interval`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            try:
                self.step()
            except Exception:  # a bad tick must not end the simulation
                log.exception("simulator step failed")
            await self._await_pending()
            next_tick += self.interval
            delay = next_tick - loop.time()
            if delay < 0:  # fell behind: skip missed ticks instead of bursting
                next_tick, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    def _send(self, channel: str, message: dict) -> None:
        result = self._publish(channel, message)
        if result is not None and inspect.isawaitable(result):
            self._pending.append(result)

    async def _await_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("simulator publish failed: %r", result)

    # ------------------------------------------------------------------
    # Messages
    # ------------------------------------------------------------------

    def _location_message(
        self, bus: ActiveBus, dist_m: float, now: float, previous: tuple[float, float] | None
    ) -> dict:
        """The ``location_update`` for ``bus`` at ``dist_m``, with GPS noise and crowd-report stats."""
        rng = self._rng
        pattern = bus.pattern
        lat, lon, heading = pattern.shape.point_at(dist_m)
        lat, lon = self._with_gps_noise(lat, lon)
        next_stop = pattern.next_stop(dist_m)
        contributors = rng.randint(1, 8)
        # More riders reporting -> more confident fix (0.73..1.0).
        confidence = min(1.0, 0.7 + 0.03 * contributors + rng.uniform(0.0, 0.06))
        return location_update(  # type: ignore[return-value]
            vehicle_id=bus.vehicle_id,
            route_id=pattern.route_id,
            direction=pattern.direction,  # type: ignore[arg-type]
            trip_id=bus.trip_id,
            latitude=round(lat, 6),
            longitude=round(lon, 6),
            speed=round(self._speed_kmh(bus, dist_m, now, previous), 1),
            heading=round(heading, 1),
            timestamp=now,
            accuracy=round(rng.uniform(5.0, 12.0), 1),
            next_stop_id=next_stop.stop_id if next_stop else None,
            next_stop_name=self.feed.stops[next_stop.stop_id].name if next_stop else None,
            distance_to_next_stop=round(next_stop.dist_m - dist_m, 1) if next_stop else None,
            confidence=round(confidence, 3),
            contributor_count=contributors,
            source=SOURCE,
            quality_score=round(confidence * rng.uniform(0.85, 1.0), 3),
        )

    def _with_gps_noise(self, lat: float, lon: float) -> tuple[float, float]:
        """A few metres of Gaussian error, as a phone GPS would report."""
        north_m = self._rng.gauss(0.0, GPS_NOISE_SIGMA_M)
        east_m = self._rng.gauss(0.0, GPS_NOISE_SIGMA_M)
        return (
            lat + north_m / METRES_PER_DEGREE_LAT,
            lon + east_m / (METRES_PER_DEGREE_LAT * math.cos(math.radians(lat))),
        )

    def _speed_kmh(
        self, bus: ActiveBus, dist_m: float, now: float, previous: tuple[float, float] | None
    ) -> float:
        """Speed from the distance covered since the last tick, ± jitter.

        On a bus's first tick the timetable's average speed stands in.
        """
        if previous is not None and now > previous[0] and dist_m >= previous[1]:
            metres_per_s = (dist_m - previous[1]) / (now - previous[0])
        elif bus.trip.start_s < bus.service_s < bus.trip.end_s:
            metres_per_s = bus.pattern.length_m / bus.trip.duration_s
        else:
            metres_per_s = 0.0  # standing at a terminus
        return max(0.0, metres_per_s * 3.6 * (1.0 + self._rng.uniform(-SPEED_JITTER, SPEED_JITTER)))


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------


def _channels_of(pattern: Pattern) -> tuple[str, str, str]:
    """The three channels a bus on ``pattern`` publishes to."""
    return f"route:{pattern.route_id}:{pattern.direction}", f"route:{pattern.route_id}:all", SYSTEM_CHANNEL


def _directions_of(route: Route) -> list[Pattern]:
    """A route's patterns in a fixed order (DOWN, UP)."""
    return [route.directions[direction] for direction in sorted(route.directions)]


def _round_robin(by_route: dict[str, list[T]], limit: int) -> list[T]:
    """Take the 1st of every route, then the 2nd of every route, ... up to ``limit`` items."""
    queues = [by_route[route_id] for route_id in sorted(by_route) if by_route[route_id]]
    chosen: list[T] = []
    rank = 0
    while len(chosen) < limit and queues:
        queues = [queue for queue in queues if rank < len(queue)]
        for queue in queues[: limit - len(chosen)]:
            chosen.append(queue[rank])
        rank += 1
    return chosen


def _busiest_moment(pattern: Pattern) -> int:
    """Time of day (s) when most trips of the pattern run, yesterday's late trips included.

    The earliest such time wins a tie.
    """
    best_s, best_count = 0, -1
    for t_s in range(0, DAY_S, BUSIEST_SAMPLE_STEP_S):
        count = len(pattern.trips_active_at(t_s)) + len(pattern.trips_active_at(t_s + DAY_S))
        if count > best_count:
            best_s, best_count = t_s, count
    return best_s


def _digest(text: str) -> int:
    """Stable 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _registration(slot: int) -> str:
    rto, number = divmod(slot, REGISTRATION_NUMBERS)
    return f"KA-{RTO_CODES[rto]}-F-{number + 1:04d}"


def _assign_vehicle_ids(feed: Feed) -> dict[str, str]:
    """Published trip id (real and virtual) -> vehicle id.

    The vehicle id is a registration number from a hash of the trip id, so it
    is the same in every process. Collisions are resolved by probing the next
    free number, visiting trip ids in sorted order over the whole feed, so
    the result does not depend on which routes a simulator shows.
    """
    slots = len(RTO_CODES) * REGISTRATION_NUMBERS
    trip_ids = sorted(
        trip.trip_id + suffix
        for route in feed.routes.values()
        for pattern in route.directions.values()
        for trip in pattern.trips
        for suffix in ("", VIRTUAL_SUFFIX)
    )
    if len(trip_ids) > slots:
        raise ValueError("more trips than registration numbers")
    taken: set[int] = set()
    assigned = {}
    for trip_id in trip_ids:
        digest = _digest(trip_id)
        slot = digest % slots
        while slot in taken:
            slot = (slot + 1) % slots
        taken.add(slot)
        assigned[trip_id] = _registration(slot)
    return assigned
