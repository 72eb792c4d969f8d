"""ETA engine: projection on the shape, next stops, speed, timetable fallback, delays.

Hand-checked on route 500-D UP (a real road polyline, 29,793.1 m, 36 stops).
Values used below, read from the packaged subset (``tests/test_gtfs.py`` checks
them against the original GTFS):

=======  ========  ===========================
stop_id  dist_m    name
=======  ========  ===========================
20823        0.0   Hebbala
20919      937.0   Kempapura Hebbala (ORR)
22593     2412.0   Veeranapalya
20998     3224.9   Manyatha Tech Park
20884     3667.5   Nagawara Junction
20815     4390.0   HBR Layout
21522     5074.2   Hennuru Junction
=======  ========  ===========================

Trips: ``500-D_UP_0750`` 28200-34200 s, ``500-D_UP_0755`` 28500-35400,
``500-D_UP_0800`` 28800-35700 (08:00-09:55 IST), ``500-D_UP_0810`` 29400-36300.
Timetables are linear in distance: scheduled(d) = start + (end - start) * d / 29793.1.

Reference time: 2026-11-30 08:10:00 IST = 1796006400 (02:40:00Z).
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest

from fastgw.channels import parse_channel
from fastgw.processing.eta import (
    M_PER_DEG_LAT,
    M_PER_DEG_LON,
    OFF_ROUTE_M,
    EtaEngine,
    PatternIndex,
    TransitIndex,
    crowding_level,
    stop_confidence,
)
from fastgw.processing.location import LocationProcessor
from fastgw.transit.gtfs import Feed, Pattern, PatternStop, Route, Shape, Stop, Trip, load_feed

IST = ZoneInfo("Asia/Kolkata")
T0810 = 1_796_006_400.0  # 2026-11-30 08:10:00 IST
LENGTH = 29_793.1


def ist(*args: int) -> float:
    return datetime(*args, tzinfo=IST).timestamp()


@pytest.fixture(scope="module")
def feed() -> Feed:
    return load_feed()


@pytest.fixture(scope="module")
def index(feed) -> TransitIndex:
    return TransitIndex.for_feed(feed)


@pytest.fixture(scope="module")
def up(index) -> PatternIndex:
    return index.patterns[("500-D", "UP")]


@pytest.fixture
def engine(index) -> EtaEngine:
    return EtaEngine(index, k=5)


def at(pattern: PatternIndex, dist_m: float) -> tuple[float, float]:
    lat, lon, _ = pattern.pattern.shape.point_at(dist_m)
    return lat, lon


def offset_point(lat: float, lon: float, bearing_deg: float, metres: float) -> tuple[float, float]:
    """Move ``metres`` towards ``bearing_deg`` (local flat earth, as the engine projects)."""
    b = math.radians(bearing_deg)
    return lat + metres * math.cos(b) / M_PER_DEG_LAT, lon + metres * math.sin(b) / M_PER_DEG_LON


def test_reference_time_is_0810_ist():
    assert ist(2026, 11, 30, 8, 10) == T0810
    assert datetime.fromtimestamp(T0810, IST).strftime("%H:%M") == "08:10"


# ---------------------------------------------------------------- projection


@pytest.mark.parametrize("dist_m", [0.0, 937.0, 1674.5, 2412.0, 15_000.0, LENGTH])
def test_point_on_the_shape_projects_back_to_its_distance(up, dist_m):
    projection, offset = up.project(*at(up, dist_m))
    assert projection is not None
    assert projection.dist_m == pytest.approx(dist_m, abs=0.05)
    assert offset < 0.05


def test_noisy_point_projects_to_the_foot_of_the_perpendicular(up):
    # 1674.5 m lies inside shape segment 24 (1671.1 -> 1721.5 m, bearing 98.9 deg).
    # 15 m to its left (bearing 8.9 deg) the nearest shape point is still 1674.5 m.
    lat, lon = offset_point(*at(up, 1674.5), 98.87805 - 90.0, 15.0)
    projection, offset = up.project(lat, lon)
    assert projection.segment == 24
    assert projection.dist_m == pytest.approx(1674.5, abs=0.5)
    assert offset == pytest.approx(15.0, abs=0.1)
    exhaustive = up.project_exhaustive(lat, lon)  # no grid: same answer
    assert exhaustive.dist_m == pytest.approx(projection.dist_m, abs=1e-6)


def test_grid_projection_equals_exhaustive_search_near_the_route(up):
    import random

    rng = random.Random(5)
    for _ in range(300):
        lat, lon = offset_point(*at(up, rng.uniform(0, LENGTH)), rng.uniform(0, 360), rng.uniform(0, 280))
        projection, offset = up.project(lat, lon)
        exhaustive = up.project_exhaustive(lat, lon)
        assert projection is not None
        assert offset == pytest.approx(exhaustive.offset_m, abs=1e-6)


def test_point_far_from_the_route_is_off_route(up):
    lat, lon = offset_point(*at(up, 1674.5), 8.9, 500.0)
    projection, offset = up.project(lat, lon)
    assert projection is None
    assert up.project_exhaustive(lat, lon).offset_m > OFF_ROUTE_M


def _out_and_back_feed() -> Feed:
    """A synthetic route that goes 1 km east and comes back 30 m further north."""
    lat0, lon0 = 12.97, 77.59
    pts_m = [(0.0, 0.0), (1000.0, 0.0), (1000.0, 30.0), (0.0, 30.0)]  # (east, north)
    lats = tuple(lat0 + n / M_PER_DEG_LAT for _, n in pts_m)
    lons = tuple(lon0 + e / M_PER_DEG_LON for e, _ in pts_m)
    shape = Shape(lats=lats, lons=lons, dists=(0.0, 1000.0, 1030.0, 2030.0))
    stops = {f"S{i}": Stop(f"S{i}", f"Stop {i}", None, lats[0], lons[0]) for i in range(4)}
    pattern = Pattern(
        "LOOP", "UP", "Stop 3", shape,
        (PatternStop("S0", 0.0), PatternStop("S1", 600.0), PatternStop("S2", 1430.0), PatternStop("S3", 2030.0)),
        (Trip("LOOP_UP_0800", 28_800, 29_800),),
    )  # fmt: skip
    route = Route("LOOP", "L", "Loop", "000000", {"UP": pattern})
    return Feed({"LOOP": route}, stops, "Asia/Kolkata", "test", "test")


def test_previous_projection_keeps_the_bus_on_its_leg_of_an_out_and_back_shape():
    feed = _out_and_back_feed()
    pattern = TransitIndex.for_feed(feed).patterns[("LOOP", "UP")]
    lat = 12.97 + 20.0 / M_PER_DEG_LAT  # 20 m north: 20 m from the outbound leg, 10 m from the return
    lon = 77.59 + 500.0 / M_PER_DEG_LON
    alone, _ = pattern.project(lat, lon)
    assert alone.dist_m == pytest.approx(1530.0, abs=0.01)  # nearest: the return leg
    hinted, offset = pattern.project(lat, lon, hint_dist=400.0, max_advance_m=417.0)
    assert hinted.dist_m == pytest.approx(500.0, abs=0.01)  # the outbound leg, where the bus was
    assert offset == pytest.approx(20.0, abs=0.01)
    # Through the engine: first report at 400 m, the next 10 s later at the ambiguous point.
    engine = EtaEngine(TransitIndex.for_feed(feed), k=2)
    engine.observe("bus", pattern, 12.97, 77.59 + 400.0 / M_PER_DEG_LON, T0810, speed_kmh=36.0)
    est = engine.observe("bus", pattern, lat, lon, T0810 + 10, speed_kmh=36.0)
    assert est.projection.dist_m == pytest.approx(500.0, abs=0.01)
    assert [s.stop_id for s in est.stops] == ["S1", "S2"]


# ---------------------------------------------------------------- next stops and ETAs


def test_bus_exactly_at_a_stop_gets_the_following_stops(engine, up):
    # At Veeranapalya (2412.0 m), 18 km/h = 5 m/s, trip 500-D_UP_0800 at 08:10:00 IST.
    est = engine.observe("KA-01-F-0001", up, *at(up, 2412.0), T0810, speed_kmh=18.0, trip_id="500-D_UP_0800")
    assert est.basis == "speed"
    assert [s.stop_id for s in est.stops] == ["20998", "20884", "20815", "21522", "20903"]
    # distances: 3224.9 - 2412 = 812.9; 3667.5 - 2412 = 1255.5; 4390 - 2412 = 1978.0
    assert [round(s.distance_m, 1) for s in est.stops[:3]] == [812.9, 1255.5, 1978.0]
    # travel = distance / 5 m/s
    assert [round(s.travel_s, 2) for s in est.stops[:3]] == [162.58, 251.1, 395.6]
    first = est.stops[0]
    # scheduled at 3224.9 m: 28800 + 6900 * 3224.9 / 29793.1 = 29546.88 s = 08:12:26.88 IST
    assert first.scheduled_ts == pytest.approx(ist(2026, 11, 30, 8, 12, 26) + 0.878, abs=0.01)
    # estimated 08:10:00 + 162.58 s = 08:12:42.58, 15.70 s late
    assert first.delay_s == pytest.approx(15.70, abs=0.01)
    assert est.trip.trip_id == "500-D_UP_0800"


def test_bus_halfway_between_two_stops(engine, up):
    # Midway between Kempapura (937.0) and Veeranapalya (2412.0): 1674.5 m; 24 km/h = 6.667 m/s.
    est = engine.observe("KA-01-F-0002", up, *at(up, 1674.5), T0810, speed_kmh=24.0, trip_id="500-D_UP_0800")
    assert est.stops[0].stop_id == "22593"
    assert est.stops[0].distance_m == pytest.approx(737.5, abs=0.5)
    assert est.stops[0].travel_s == pytest.approx(737.5 / (24 / 3.6), abs=0.1)  # 110.6 s
    # Scheduled at 2412 m: 28800 + 6900 * 2412 / 29793.1 = 29358.61 s (08:09:18.61);
    # estimated 08:10:00 + 110.625 = 08:11:50.63 -> 152.0 s late
    assert est.stops[0].delay_s == pytest.approx(152.01, abs=0.1)


def test_stopped_bus_uses_the_timetable(engine, up):
    # Same place, speed 0: scheduled running time 6900 * 737.5 / 29793.1 = 170.80 s to 22593,
    # 6900 * (3224.9 - 1674.5) / 29793.1 = 359.07 s to 20998.
    est = engine.observe("KA-01-F-0003", up, *at(up, 1674.5), T0810, speed_kmh=0.0, trip_id="500-D_UP_0800")
    assert est.basis == "timetable"
    assert est.stops[0].travel_s == pytest.approx(170.80, abs=0.1)
    assert est.stops[1].travel_s == pytest.approx(359.07, abs=0.1)
    # Scheduled at 1674.5 m: 29187.81 s (08:06:27.81); at 08:10:00 the bus is 212.19 s late,
    # and a timetable ETA keeps that delay at every stop.
    for stop in est.stops:
        assert stop.delay_s == pytest.approx(212.19, abs=0.1)


def test_unknown_speed_on_first_report_uses_the_timetable(engine, up):
    est = engine.observe("KA-01-F-0004", up, *at(up, 1674.5), T0810, trip_id="500-D_UP_0800")
    assert est.basis == "timetable"
    assert est.stops[0].travel_s == pytest.approx(170.80, abs=0.1)


def test_bus_waiting_at_the_terminus_leaves_on_schedule(engine, up):
    # At Hebbala (0 m) at 07:55, stopped, trip 0800: leaves 08:00, reaches Kempapura
    # 6900 * 937 / 29793.1 = 217.01 s later (the original stop_times say 08:33:37 for 0830).
    now = ist(2026, 11, 30, 7, 55)
    est = engine.observe("KA-01-F-0005", up, *at(up, 0.0), now, speed_kmh=0.0, trip_id="500-D_UP_0800")
    assert est.stops[0].stop_id == "20919"
    assert est.stops[0].arrival_ts == pytest.approx(ist(2026, 11, 30, 8, 0) + 217.01, abs=0.01)
    assert est.stops[0].delay_s == pytest.approx(0.0, abs=1e-6)


def test_trip_is_matched_by_schedule_when_not_given(engine, up):
    # At 2412 m at 08:10: 0750 is 714 s late, 0755 341 s late, 0800 41 s late, 0810 559 s early.
    est = engine.observe("KA-01-F-0006", up, *at(up, 2412.0), T0810, speed_kmh=18.0)
    assert est.trip.trip_id == "500-D_UP_0800"
    assert est.stops[0].delay_s == pytest.approx(15.70, abs=0.01)


def test_unknown_trip_id_falls_back_to_schedule_matching(engine, up):
    est = engine.observe("KA-01-F-0007", up, *at(up, 2412.0), T0810, speed_kmh=18.0, trip_id="500-D_UP_0800~virtual")
    assert est.trip.trip_id == "500-D_UP_0800"


def test_no_trip_within_an_hour_means_no_schedule(index):
    # 335-E UP has two trips a day; at 03:00 none is within MATCH_WINDOW_S.
    pattern = index.patterns[("335-E", "UP")]
    engine = EtaEngine(index, k=2)
    assert all(abs(t.start_s - 3 * 3600) > 7200 for t in pattern.trips)
    est = engine.observe("bus", pattern, *at(pattern, 500.0), ist(2026, 11, 30, 3, 0), speed_kmh=20.0)
    assert est.trip is None
    assert est.stops and all(s.scheduled_ts is None and s.delay_s is None for s in est.stops)


def test_speed_is_smoothed_over_reports(engine, up):
    # 36 km/h (10 m/s), then 10 s later 18 km/h (5 m/s):
    # 10 + (1 - exp(-10/60)) * (5 - 10) = 9.2324 m/s
    engine.observe("KA-01-F-0008", up, *at(up, 1000.0), T0810, speed_kmh=36.0, trip_id="500-D_UP_0800")
    est = engine.observe("KA-01-F-0008", up, *at(up, 1100.0), T0810 + 10, speed_kmh=18.0, trip_id="500-D_UP_0800")
    assert est.speed_mps == pytest.approx(9.2324, abs=1e-4)
    assert est.stops[0].stop_id == "22593"
    assert est.stops[0].travel_s == pytest.approx((2412.0 - 1100.0) / 9.2324, abs=0.05)  # 142.1 s


def test_speed_is_derived_from_progress_when_not_reported(engine, up):
    engine.observe("KA-01-F-0009", up, *at(up, 1000.0), T0810)
    est = engine.observe("KA-01-F-0009", up, *at(up, 1100.0), T0810 + 10)
    assert est.speed_mps == pytest.approx(10.0, abs=0.01)  # 100 m in 10 s
    assert est.basis == "speed"


def test_slow_bus_below_3_kmh_counts_as_stopped(engine, up):
    est = engine.observe("KA-01-F-0010", up, *at(up, 1674.5), T0810, speed_kmh=2.9, trip_id="500-D_UP_0800")
    assert est.basis == "timetable"
    est = engine.observe("KA-01-F-0011", up, *at(up, 1674.5), T0810, speed_kmh=3.1, trip_id="500-D_UP_0800")
    assert est.basis == "speed"


def test_out_of_order_and_duplicate_reports_are_ignored(engine, up):
    assert engine.observe("KA-01-F-0012", up, *at(up, 1000.0), T0810, speed_kmh=20.0) is not None
    assert engine.observe("KA-01-F-0012", up, *at(up, 1000.0), T0810, speed_kmh=20.0) is None
    assert engine.observe("KA-01-F-0012", up, *at(up, 900.0), T0810 - 5, speed_kmh=20.0) is None
    assert engine.observe("KA-01-F-0012", up, *at(up, 1050.0), T0810 + 5, speed_kmh=20.0) is not None


def test_no_stops_past_the_last_one(engine, up):
    est = engine.observe("KA-01-F-0013", up, *at(up, LENGTH), T0810, speed_kmh=20.0)
    assert est.on_route and est.stops == []
    est = engine.observe("KA-01-F-0014", up, *at(up, LENGTH - 100.0), T0810, speed_kmh=20.0)
    assert [s.stop_id for s in est.stops] == [up.stop_ids[-1]]


def test_vehicle_state_is_bounded(index, up):
    engine = EtaEngine(index, k=1, max_vehicles=3)
    for i in range(10):
        engine.observe(f"bus{i}", up, *at(up, 1000.0), T0810, speed_kmh=20.0)
    assert len(engine) == 3
    # bus0 was forgotten: the same report is new again, bus9 is remembered
    assert engine.observe("bus0", up, *at(up, 1000.0), T0810, speed_kmh=20.0) is not None
    assert engine.observe("bus9", up, *at(up, 1000.0), T0810, speed_kmh=20.0) is None


def test_past_midnight_trip_uses_the_previous_service_day(index):
    # KIA-9_UP_2340: 85200-89700 s (23:40 - 24:55), 32644.9 m; last stop 35805 (airport) at
    # 24:55:00 of 30 Nov = 01 Dec 00:55:00 IST. Bus stopped 1000 m before it at 00:50 on 01 Dec.
    pattern = index.patterns[("KIA-9", "UP")]
    engine = EtaEngine(index, k=1)
    now = ist(2026, 12, 1, 0, 50)
    est = engine.observe("bus", pattern, *at(pattern, 31_644.9), now, speed_kmh=0.0, trip_id="KIA-9_UP_2340")
    assert est.stops[0].stop_id == "35805"
    assert est.stops[0].scheduled_ts == pytest.approx(ist(2026, 12, 1, 0, 55), abs=0.01)
    # scheduled at 31644.9 m: 85200 + 4500 * 31644.9 / 32644.9 = 89562.15 s (00:52:42.15):
    # at 00:50 the bus is 162.15 s early, and stays so under the timetable.
    assert est.stops[0].delay_s == pytest.approx(-162.15, abs=0.01)
    assert est.origin_ts == ist(2026, 11, 30, 0, 0)


# ---------------------------------------------------------------- confidence and crowding


def test_confidence_formula():
    assert stop_confidence(None, 0.0, None, 0.0, 0.0, False) == 1.0
    assert stop_confidence(None, 812.9, None, 0.0, 0.0, False) == pytest.approx(1 / 1.08129)
    # reported 0.9 x distance 1 km (1/1.1) x accuracy 70 m (1/1.5) x offset 60 m (0.9)
    # x age 30 s (exp(-0.1)) x timetable (0.8)
    expected = 0.9 / 1.1 / 1.5 * 0.9 * math.exp(-0.1) * 0.8
    assert stop_confidence(0.9, 1000.0, 70.0, 60.0, 30.0, True) == pytest.approx(expected)


def test_engine_confidence_matches_the_formula(engine, up):
    est = engine.observe(
        "KA-01-F-0015", up, *at(up, 2412.0), T0810, speed_kmh=18.0, accuracy_m=70.0, confidence=0.9, now=T0810 + 30
    )
    for stop in est.stops:
        assert stop.confidence == pytest.approx(
            stop_confidence(0.9, stop.distance_m, 70.0, est.offset_m, 30.0, False), abs=1e-12
        )
    assert est.stops[0].confidence > est.stops[-1].confidence  # further: less sure


@pytest.mark.parametrize(
    ("occupancy", "contributors", "level"),
    [
        (None, None, "low"), (None, 2, "low"), (None, 3, "medium"), (None, 5, "medium"), (None, 6, "high"),
        ("MANY_SEATS_AVAILABLE", 8, "low"), ("STANDING_ROOM_ONLY", 1, "medium"), ("FULL", 1, "high"),
        ("NO_DATA_AVAILABLE", 6, "high"),
    ],
)  # fmt: skip
def test_crowding_level(occupancy, contributors, level):
    assert crowding_level(occupancy, contributors) == level


# ---------------------------------------------------------------- through the processor


def _record(pattern: PatternIndex, dist_m: float, ts: float, **extra) -> bytes:
    lat, lon = at(pattern, dist_m)
    record = {
        "vehicle_id": "KA-57-F-0123",
        "route_id": pattern.route_id,
        "direction": pattern.direction,
        "latitude": lat,
        "longitude": lon,
        "timestamp": int(round(ts * 1000)),
    }
    record.update(extra)
    return orjson.dumps(record)


def test_stop_arrival_messages_hand_checked(feed, up):
    processor = LocationProcessor(feed)
    outputs = processor.process(
        _record(up, 2412.0, T0810, speed=18.0, trip_id="500-D_UP_0800", contributor_count=4), b"500-D", None,
        now=T0810 + 2,
    )
    assert [o.channel for o in outputs] == [
        "route:500-D:UP", "route:500-D:all", "system:all_updates",
        "stop:20998:arrivals", "stop:20884:arrivals", "stop:20815:arrivals", "stop:21522:arrivals",
        "stop:20903:arrivals",
    ]  # fmt: skip
    update = outputs[0].message
    assert update["next_stop_id"] == "20998"
    assert update["next_stop_name"] == "Manyatha Tech Park"
    assert update["distance_to_next_stop"] == 812.9
    arrival = outputs[3].message
    assert arrival == {
        "type": "stop_arrival",
        "stop_id": "20998",
        "stop_name": "Manyatha Tech Park",
        "route_id": "500-D",
        "route_number": "500-D",
        "direction": "UP",
        "vehicle_id": "KA-57-F-0123",
        "trip_id": "500-D_UP_0800",
        "eta_seconds": 161,  # 162.58 s from the observation, observed 2 s ago
        "estimated_arrival": "2026-11-30T02:42:42.580Z",
        "scheduled_arrival": "2026-11-30T02:42:26.878Z",
        "delay_minutes": 0.3,  # 15.70 s
        "confidence": 0.919,  # 1 / (1 + 812.9 / 10000) x exp(-2 / 300)
        "crowding_level": "medium",  # 4 contributors
        "timestamp": "2026-11-30T02:40:00.000Z",
        "metadata": {"distance_m": 812.9, "basis": "speed"},
    }
    assert round(1 / 1.08129 * math.exp(-2 / 300), 3) == 0.919
    for output in outputs:
        parse_channel(output.channel)


def test_off_route_bus_gets_a_location_update_but_no_etas(feed, up):
    processor = LocationProcessor(feed)
    lat, lon = offset_point(*at(up, 1674.5), 8.9, 450.0)
    value = orjson.dumps(
        {"vehicle_id": "KA-57-F-0124", "route_id": "500-D", "direction": "UP", "latitude": lat, "longitude": lon,
         "speed": 20.0, "timestamp": int(T0810 * 1000)}
    )  # fmt: skip
    outputs = processor.process(value, None, None, now=T0810)
    assert [o.channel for o in outputs] == ["route:500-D:UP", "route:500-D:all", "system:all_updates"]
    update = outputs[0].message
    assert "next_stop_id" not in update and "distance_to_next_stop" not in update
    assert update["confidence"] == 0.25  # off-route factor
    assert processor.stats["off_route"] == 1
