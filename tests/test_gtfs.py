"""Tests for the packaged BMTC GTFS subset and fastgw.transit.gtfs.

Expected values were read by hand from the original GTFS folder
(``../shared/data/bmtc``: stops.txt, shapes.txt, stop_times.txt, SOURCE.md).
Tests that re-read that folder skip, with a reason, when it is absent; the
hard-coded values below are checked against the packaged file regardless.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastgw.transit import gtfs
from fastgw.transit.gtfs import Feed, Pattern, PatternStop, Shape, Trip, load_feed

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = REPO_ROOT.parent / "shared" / "data" / "bmtc"
PACKAGED_FILE = REPO_ROOT / "fastgw" / "transit" / "data" / gtfs.DATA_FILE

ATTRIBUTION = (
    'Bus data: "Unofficial BMTC GTFS" by Vivek Matthew (github.com/Vonter/bmtc-gtfs), ODbL 1.0, '
    "sourced from the Namma BMTC app; some contents © BMTC. Subset and re-derivation by this project."
)
ROUTE_IDS = {
    "13", "171", "201", "210-N", "226-N", "242-B", "248", "252-F", "258-C", "276",
    "285-M", "290-E", "298-M", "300-E", "333-E", "335-E", "365", "375-D", "378", "401",
    "401-A", "401-K", "401-M", "410-FA", "500-CA", "500-D", "502-H", "600-F", "89-C", "90-E",
    "G-3", "G-4", "G-7", "KBS-1K", "KBS-3A", "KIA-5", "KIA-9", "V-500CA", "V-500D", "V-500F",
}  # fmt: skip

#: (trip_id, stop_id, stop_sequence, arrival_time, shape_dist_traveled) copied from stop_times.txt.
ORIGINAL_ROWS = [
    ("500-D_UP_0830", "20919", 2, "08:33:37", 937.0),
    ("500-D_UP_0830", "22593", 3, "08:39:19", 2412.0),
    ("KIA-9_UP_2340", "21175", 2, "23:43:20", 1452.0),
    ("KIA-9_UP_2340", "35805", 26, "24:55:00", 32644.9),  # past midnight
    ("201_DOWN_0530", "35940", 2, "05:32:37", 639.2),  # first stop of 201 DOWN is at 0.6 m
]


def hms(value: str) -> int:
    h, m, s = map(int, value.split(":"))
    return h * 3600 + m * 60 + s


def trip_by_id(pattern: Pattern, trip_id: str) -> Trip:
    return next(trip for trip in pattern.trips if trip.trip_id == trip_id)


def pattern_of(feed: Feed, trip_id: str) -> Pattern:
    route_id, direction, _ = trip_id.rsplit("_", 2)
    return feed.routes[route_id].directions[direction]


def reconstructed_time(pattern: Pattern, trip: Trip, stop_sequence: int) -> float:
    """Scheduled time at a stop, from the subset alone."""
    stop = pattern.stops[stop_sequence - 1]
    return trip.scheduled_at(stop.dist_m, pattern.length_m)


@pytest.fixture(scope="module")
def feed() -> Feed:
    return load_feed()


@pytest.fixture(scope="module")
def up_500d(feed: Feed) -> Pattern:
    return feed.routes["500-D"].directions["UP"]


# ---------------------------------------------------------------- the file


def test_packaged_file_is_compact_gzip() -> None:
    data = PACKAGED_FILE.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert len(data) < 400_000  # well under the 1 MB budget (about 150 kB)


def test_load_feed_is_cached(feed: Feed) -> None:
    assert load_feed() is feed
    assert load_feed(PACKAGED_FILE) is load_feed(str(PACKAGED_FILE))


def test_uncached_load_is_fast() -> None:
    started = time.perf_counter()
    gtfs._load_cached.__wrapped__(str(PACKAGED_FILE))
    assert time.perf_counter() - started < 0.5  # typically ~25 ms; budget 200 ms, slack for busy CI


def test_feed_metadata(feed: Feed) -> None:
    assert feed.timezone == "Asia/Kolkata"
    assert feed.feed_version == "bmtc-subset-2026-02-28"
    assert feed.attribution == ATTRIBUTION


def test_routes_and_counts(feed: Feed) -> None:
    assert len(feed.routes) == 40
    assert set(feed.routes) == ROUTE_IDS
    assert all(set(route.directions) == {"UP", "DOWN"} for route in feed.routes.values())
    assert sum(len(p.trips) for p in feed.patterns()) == 7880
    assert len(feed.stops) == 1632
    used = {stop.stop_id for p in feed.patterns() for stop in p.stops}
    assert used == set(feed.stops)


def test_route_500d(feed: Feed, up_500d: Pattern) -> None:
    route = feed.routes["500-D"]
    assert (route.short_name, route.long_name, route.color) == ("500-D", "Hebbala Bridge - Central Silk Board", "C62828")
    assert up_500d.headsign == "Central Silk Board"
    assert len(up_500d.stops) == 36
    assert (len(up_500d.trips), len(route.directions["DOWN"].trips)) == (123, 131)
    assert up_500d.stops[0] == PatternStop("20823", 0.0)
    assert up_500d.stops[-1] == PatternStop("20707", 29793.1)
    first, last = feed.stops["20823"], feed.stops["20707"]
    assert (first.name, first.name_kn, first.lat, first.lon) == ("Hebbala", "ಹೆಬ್ಬಾಳ", 13.04259, 77.5925)
    assert (last.name, last.lat, last.lon) == ("Central Silk Board", 12.91803, 77.62355)
    assert up_500d.trips[0] == Trip("500-D_UP_0400", 4 * 3600, 5 * 3600 + 20 * 60)
    assert up_500d.trips[-1].trip_id == "500-D_UP_2205"


def test_trips_sorted_and_past_midnight(feed: Feed) -> None:
    for pattern in feed.patterns():
        starts = [trip.start_s for trip in pattern.trips]
        assert starts == sorted(starts)
    kia = feed.routes["KIA-9"].directions["UP"]
    assert trip_by_id(kia, "KIA-9_UP_2340") == Trip("KIA-9_UP_2340", hms("23:40:00"), hms("24:55:00"))


# --------------------------------------------------------------- the shape


def test_shape_length_500d(up_500d: Pattern) -> None:
    shape = up_500d.shape
    assert len(shape.lats) == 302
    assert shape.length_m == pytest.approx(29_793.1)  # SOURCE.md: 29.8 km on the polyline
    assert up_500d.length_m == pytest.approx(29_793.1)


def test_point_at_start_and_clamping(up_500d: Pattern) -> None:
    shape = up_500d.shape
    lat, lon, heading = shape.point_at(0.0)
    assert (lat, lon) == (13.04258, 77.5925)  # first row of shapes.txt for 500-D_UP
    # First segment goes to (13.04222, 77.59365): ~40 m south, ~125 m east -> ESE.
    assert heading == pytest.approx(107.8, abs=0.1)
    assert shape.point_at(-50.0)[:2] == (13.04258, 77.5925)
    assert shape.point_at(1e9)[:2] == (12.91803, 77.62355)  # last point, clamped
    assert shape.point_at(shape.length_m)[:2] == (12.91803, 77.62355)


def test_point_at_interpolates_linearly(up_500d: Pattern) -> None:
    lat, lon, heading = up_500d.shape.point_at(65.4)  # half of the 130.8 m first segment
    assert lat == pytest.approx((13.04258 + 13.04222) / 2, abs=1e-9)
    assert lon == pytest.approx((77.5925 + 77.59365) / 2, abs=1e-9)
    assert heading == pytest.approx(107.8, abs=0.1)


def test_heading_cardinal_directions() -> None:
    north = Shape((12.9, 13.0), (77.6, 77.6), (0.0, 11_132.0))
    east = Shape((12.9, 12.9), (77.6, 77.7), (0.0, 10_848.0))
    assert north.point_at(10.0)[2] == pytest.approx(0.0, abs=1e-6)
    assert east.point_at(10.0)[2] == pytest.approx(90.0, abs=0.1)
    # A repeated point (zero-length segment) keeps the previous bearing.
    repeated = Shape((12.9, 13.0, 13.0, 13.0), (77.6, 77.6, 77.6, 77.7), (0.0, 11_132.0, 11_132.0, 22_000.0))
    assert repeated.headings[1] == pytest.approx(0.0, abs=1e-6)


def test_stops_lie_on_their_shape(feed: Feed) -> None:
    for pattern in feed.patterns():
        for pattern_stop in pattern.stops:
            stop = feed.stops[pattern_stop.stop_id]
            lat, lon, _ = pattern.shape.point_at(pattern_stop.dist_m)
            assert haversine_m(lat, lon, stop.lat, stop.lon) < 15, (pattern.route_id, pattern_stop)


# ------------------------------------------------------- trips and stops


def test_dist_at_start_end_midpoint(up_500d: Pattern) -> None:
    trip = trip_by_id(up_500d, "500-D_UP_0830")
    assert (trip.start_s, trip.end_s) == (hms("08:30:00"), hms("10:25:00"))
    length = up_500d.length_m
    assert trip.dist_at(trip.start_s, length) == 0.0
    assert trip.dist_at(trip.end_s, length) == pytest.approx(29_793.1)
    assert trip.dist_at((trip.start_s + trip.end_s) / 2, length) == pytest.approx(14_896.55)
    assert trip.dist_at(trip.start_s - 600, length) == 0.0  # before departure: at the first stop
    assert trip.dist_at(trip.end_s + 600, length) == pytest.approx(29_793.1)


def test_scheduled_at_is_inverse(up_500d: Pattern) -> None:
    trip = trip_by_id(up_500d, "500-D_UP_0830")
    length = up_500d.length_m
    for t in (trip.start_s, trip.start_s + 1234.5, trip.end_s):
        assert trip.scheduled_at(trip.dist_at(t, length), length) == pytest.approx(t)
    assert trip.scheduled_at(937.0, length) == pytest.approx(hms("08:33:37"), abs=0.5)


def test_next_stop(up_500d: Pattern) -> None:
    assert up_500d.next_stop(0.0) == PatternStop("20919", 937.0)  # at the first stop: the next one
    assert up_500d.next_stop(500.0) == PatternStop("20919", 937.0)
    assert up_500d.next_stop(937.0) == PatternStop("22593", 2412.0)
    assert up_500d.next_stop(29_000.0) == up_500d.stops[-1]
    assert up_500d.next_stop(29_793.1) is None
    assert up_500d.next_stop(-5.0) == up_500d.stops[0]


def test_trips_active_at(up_500d: Pattern) -> None:
    active = up_500d.trips_active_at(hms("04:05:00"))
    assert [trip.trip_id for trip in active] == ["500-D_UP_0400"]
    assert up_500d.trips_active_at(hms("03:00:00")) == []
    at_nine = up_500d.trips_active_at(hms("09:00:00"))
    assert at_nine and all(t.start_s <= hms("09:00:00") <= t.end_s for t in at_nine)
    brute = [t for t in up_500d.trips if t.start_s <= hms("09:00:00") <= t.end_s]
    assert at_nine == brute


@pytest.mark.parametrize(("trip_id", "stop_id", "sequence", "arrival", "dist"), ORIGINAL_ROWS)
def test_subset_reproduces_original_stop_times(
    feed: Feed, trip_id: str, stop_id: str, sequence: int, arrival: str, dist: float
) -> None:
    pattern = pattern_of(feed, trip_id)
    trip = trip_by_id(pattern, trip_id)
    assert pattern.stops[sequence - 1] == PatternStop(stop_id, dist)
    assert reconstructed_time(pattern, trip, sequence) == pytest.approx(hms(arrival), abs=2)


def test_subset_reproduces_every_original_stop_time(feed: Feed) -> None:
    path = SOURCE_DIR / "stop_times.txt"
    if not path.exists():
        pytest.skip(f"original GTFS not found at {path}; the hard-coded rows above still ran")
    patterns = {trip.trip_id: (p, trip) for p in feed.patterns() for trip in p.trips}
    worst, rows = 0.0, 0
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            pattern, trip = patterns[row["trip_id"]]
            sequence = int(row["stop_sequence"])
            assert pattern.stops[sequence - 1].stop_id == row["stop_id"]
            error = abs(reconstructed_time(pattern, trip, sequence) - hms(row["arrival_time"]))
            worst, rows = max(worst, error), rows + 1
    assert rows == 287_515
    assert worst <= 2.0


def test_build_is_byte_identical(tmp_path: Path) -> None:
    if not (SOURCE_DIR / "SOURCE.md").exists():
        pytest.skip(f"original GTFS not found at {SOURCE_DIR}")
    output = tmp_path / "subset.json.gz"
    script = REPO_ROOT / "scripts" / "build_gtfs_subset.py"
    subprocess.run([sys.executable, str(script), str(SOURCE_DIR), "--output", str(output)], check=True)
    assert output.read_bytes() == PACKAGED_FILE.read_bytes()


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))
