"""``location-updates`` records -> ``location_update`` + ``stop_arrival`` messages.

One record is a JSON :class:`~fastgw.processing.schemas.LocationData` object or
a GTFS-Realtime ``FeedMessage`` (see :mod:`fastgw.processing.gtfs_rt`); the
format is told by content. Each vehicle position yields:

* one ``location_update`` (built by :func:`fastgw.messages.location_update`) on
  ``route:{route_id}:{direction}``, ``route:{route_id}:all`` and ``system:all_updates``;
* one ``stop_arrival`` on ``stop:{stop_id}:arrivals`` for each of the next
  ``eta_stops`` stops, unless the bus is off-route (> 300 m from the shape) or
  past its last stop.

A report that is not newer than the vehicle's last accepted one (a redelivery
or an out-of-order report) yields nothing: it is not an error, it is counted in
``stats["out_of_order"]``. See ``docs/ingest.md`` for the rules.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import msgspec

from fastgw.messages import location_update
from fastgw.transit.gtfs import Feed, load_feed

from .base import Output, Rejected, new_output
from .eta import (
    DEFAULT_ACCURACY_M,
    EtaEngine,
    PatternIndex,
    TransitIndex,
    crowding_level,
    position_confidence,
)
from .gtfs_rt import decode_vehicle_positions
from .schemas import BBOX, LOCATION_DECODER, LocationData
from .times import iso_ms, parse_timestamp

__all__ = ["LocationProcessor", "FRESH_S", "RECENT_S", "FUTURE_TOLERANCE_S", "MAX_AGE_S", "freshness"]

#: ``data_freshness`` is ``fresh`` below this age (s), ``recent`` below RECENT_S, else ``stale``.
FRESH_S = 30.0
RECENT_S = 120.0
#: Reports observed more than this after the processing time are ``future_timestamp``.
FUTURE_TOLERANCE_S = 60.0
#: Reports older than this are ``stale_timestamp`` (default of ``max_age_s``).
MAX_AGE_S = 600.0
DEFAULT_SOURCE = "crowdsourced"

_SOUTH, _NORTH, _WEST, _EAST = BBOX
_JSON_START = frozenset(b"{[")
_WHITESPACE = frozenset(b" \t\r\n")


def freshness(age_s: float) -> str:
    """``fresh`` (< 30 s), ``recent`` (< 2 min) or ``stale``."""
    if age_s < FRESH_S:
        return "fresh"
    if age_s < RECENT_S:
        return "recent"
    return "stale"


class LocationProcessor:
    """The ``location`` role's processor. Keeps per-vehicle state (bounded LRU)."""

    topic_role = "location"

    def __init__(
        self,
        feed: Feed | None = None,
        *,
        eta_stops: int = 5,
        max_record_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
        max_age_s: float = MAX_AGE_S,
        max_vehicles: int = 20_000,
    ) -> None:
        self.feed = feed if feed is not None else load_feed()
        self.index = TransitIndex.for_feed(self.feed)
        self.engine = EtaEngine(self.index, k=eta_stops, max_vehicles=max_vehicles)
        self.eta_stops = eta_stops
        self.max_record_bytes = max_record_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._by_route: dict[str, dict[str, PatternIndex]] = {}
        for (route_id, direction), pattern in self.index.patterns.items():
            self._by_route.setdefault(route_id, {})[direction] = pattern
        # Scheduled times repeat from report to report (same trip, same next stops).
        self._iso_cache: dict[int, str] = {}
        self.stats: dict[str, int] = {"vehicles": 0, "out_of_order": 0, "off_route": 0, "stop_arrivals": 0}

    def reset(self) -> None:
        """Forget every vehicle (speed history, projections, ordering)."""
        self.engine.reset()
        self._iso_cache.clear()

    def _scheduled_iso(self, ms: int) -> str:
        cache = self._iso_cache
        text = cache.get(ms)
        if text is None:
            if len(cache) >= 20_000:
                cache.clear()
            text = cache[ms] = iso_ms(ms)
        return text

    # ------------------------------------------------------------------

    def process(
        self, value: bytes, key: bytes | None, timestamp_ms: int | None, now: float | None = None
    ) -> list[Output]:
        """Outputs for one record (the Kafka key is not used: routes come from the value)."""
        if now is None:
            now = self._clock()
        size = len(value)
        if size > self.max_record_bytes:
            raise Rejected("oversized", f"{size} bytes > {self.max_record_bytes}")
        if size == 0:
            raise Rejected("empty", "no value")
        first = value[0]
        if first not in _JSON_START and first in _WHITESPACE:
            stripped = bytes(value).lstrip()
            first = stripped[0] if stripped else 0
        if first in _JSON_START:
            try:
                records = [LOCATION_DECODER.decode(value)]
            except RecursionError:
                raise Rejected("malformed_json", "nested too deeply") from None
            except msgspec.DecodeError as exc:  # ValidationError is a subclass
                reason = "schema" if isinstance(exc, msgspec.ValidationError) else "malformed_json"
                if value[0] != 0x0A:
                    raise Rejected(reason, str(exc)) from None
                # '\n' is also the first byte of a serialized FeedMessage (header, field 1):
                # after the whitespace a header length of 91 or 123 bytes reads as '[' or '{'.
                try:
                    records = self._decode_protobuf(value, timestamp_ms)
                except Rejected:
                    raise Rejected(reason, str(exc)) from None
        else:
            records = self._decode_protobuf(value, timestamp_ms)
        if len(records) == 1:
            return self._emit(*self._check(records[0], now), now)
        # Validate every vehicle before changing any state: a rejected record has no effect.
        checked = [self._check(record, now) for record in records]
        outputs: list[Output] = []
        for item in checked:
            outputs += self._emit(*item, now)
        return outputs

    def _decode_protobuf(self, value: bytes, timestamp_ms: int | None) -> list[LocationData]:
        return decode_vehicle_positions(
            bytes(value), trip_routes=self.index.trip_routes, record_timestamp_ms=timestamp_ms
        )

    def _check(self, record: LocationData, now: float) -> tuple[LocationData, PatternIndex, int]:
        """Feed and clock checks: ``(record, pattern, timestamp_ms)`` or :class:`Rejected`."""
        directions = self._by_route.get(record.route_id)
        pattern = directions.get(record.direction) if directions is not None else None
        if pattern is None:
            if record.route_id in self.index.route_ids:
                raise Rejected("unknown_route", f"route {record.route_id!r} has no direction {record.direction}")
            raise Rejected("unknown_route", f"route {record.route_id!r} is not in the GTFS feed")
        lat, lon = record.latitude, record.longitude
        if not (_SOUTH <= lat <= _NORTH and _WEST <= lon <= _EAST):  # also false for NaN
            raise Rejected("bad_coordinates", f"({lat}, {lon}) is outside 12.6-13.4 N, 77.3-77.9 E")
        try:
            ms = parse_timestamp(record.timestamp)
        except ValueError as exc:
            raise Rejected("schema", f"timestamp: {exc}") from None
        ts = ms / 1000.0
        if ts > now + FUTURE_TOLERANCE_S:
            raise Rejected("future_timestamp", f"observed {ts - now:.1f} s after now")
        if now - ts > self.max_age_s:
            raise Rejected("stale_timestamp", f"observed {now - ts:.1f} s ago (max {self.max_age_s:g} s)")
        return record, pattern, ms

    def _emit(self, record: LocationData, pattern: PatternIndex, ms: int, now: float) -> list[Output]:
        ts = ms / 1000.0
        vehicle_id = record.vehicle_id
        est = self.engine.observe(
            vehicle_id,
            pattern,
            record.latitude,
            record.longitude,
            ts,
            speed_kmh=record.speed,
            trip_id=record.trip_id,
            accuracy_m=record.accuracy,
            confidence=record.confidence,
            now=now,
        )
        stats = self.stats
        if est is None:
            stats["out_of_order"] += 1
            return []
        stats["vehicles"] += 1
        age = now - ts
        projection = est.projection
        source = record.source or DEFAULT_SOURCE
        trip = est.trip
        trip_id = record.trip_id if record.trip_id is not None else (trip.trip_id if trip is not None else None)
        accuracy = record.accuracy
        confidence = position_confidence(record.confidence, accuracy, est.offset_m)
        speed = record.speed
        if speed is None:
            speed = est.speed_mps * 3.6 if est.speed_mps is not None else 0.0
        heading = record.heading
        if heading is None:
            heading = pattern.headings[projection.segment] if projection is not None else 0.0
        next_id = next_name = next_distance = None
        if projection is not None:
            j = est.next_index
            if j < len(pattern.stop_ids):
                next_id = pattern.stop_ids[j]
                next_name = pattern.stop_names[j]
                next_distance = math.floor((pattern.stop_dists[j] - projection.dist_m) * 10.0 + 0.5) / 10.0
        else:
            stats["off_route"] += 1
        contributors = record.contributor_count
        floor = math.floor
        message = location_update(
            vehicle_id=vehicle_id,
            route_id=pattern.route_id,
            direction=pattern.direction,  # type: ignore[arg-type]
            trip_id=trip_id,
            latitude=floor(record.latitude * 1e6 + 0.5) / 1e6,  # round(x, 6) for x > 0, faster
            longitude=floor(record.longitude * 1e6 + 0.5) / 1e6,
            speed=floor(speed * 10.0 + 0.5) / 10.0,
            heading=floor(heading * 10.0 + 0.5) / 10.0,
            accuracy=floor(accuracy * 10.0 + 0.5) / 10.0 if accuracy is not None else DEFAULT_ACCURACY_M,
            timestamp=ts,
            next_stop_id=next_id,
            next_stop_name=next_name,
            distance_to_next_stop=next_distance,
            confidence=floor(confidence * 1000.0 + 0.5) / 1000.0,
            contributor_count=contributors if contributors is not None else 1,
            data_freshness="fresh" if age < FRESH_S else "recent" if age < RECENT_S else "stale",
            source=source,
            quality_score=floor(confidence * (math.exp(-age / 300.0) if age > 0.0 else 1.0) * 1000.0 + 0.5) / 1000.0,
        )
        channels = pattern.channels
        outputs = [new_output(channels[0], message), new_output(channels[1], message), new_output(channels[2], message)]
        stops = est.stops
        if not stops:
            return outputs

        stats["stop_arrivals"] += len(stops)
        observed = iso_ms(ms)
        crowding = crowding_level(record.occupancy_status, contributors)
        route_id, route_number, direction = pattern.route_id, pattern.route_number, pattern.direction
        stop_names, stop_channels = pattern.stop_names, pattern.stop_channels
        trip_id_out = trip.trip_id if trip is not None else trip_id
        basis = est.basis
        append = outputs.append
        scheduled_iso = self._scheduled_iso
        for index, stop_id, distance, _, arrival, scheduled, delay, conf in stops:
            eta = arrival - now
            append(
                new_output(
                    stop_channels[index],
                    {
                        "type": "stop_arrival",
                        "stop_id": stop_id,
                        "stop_name": stop_names[index],
                        "route_id": route_id,
                        "route_number": route_number,
                        "direction": direction,
                        "vehicle_id": vehicle_id,
                        "trip_id": trip_id_out,
                        "eta_seconds": floor(eta + 0.5) if eta > 0.0 else 0,
                        "estimated_arrival": iso_ms(floor(arrival * 1000.0 + 0.5)),
                        "scheduled_arrival": scheduled_iso(floor(scheduled * 1000.0 + 0.5)) if scheduled is not None else None,
                        "delay_minutes": floor(delay / 6.0 + 0.5) / 10.0 if delay is not None else None,
                        "confidence": floor(conf * 1000.0 + 0.5) / 1000.0,
                        "crowding_level": crowding,
                        "timestamp": observed,
                        "metadata": {"distance_m": floor(distance * 10.0 + 0.5) / 10.0, "basis": basis},
                    },
                )
            )
        return outputs
