#!/usr/bin/env python3
"""Re-pack the BMTC GTFS subset into one compact, gzipped JSON file.

Input: the GTFS folder described by its ``SOURCE.md`` (default
``<repo>/../shared/data/bmtc``). Output (default
``<repo>/fastgw/transit/data/bmtc-subset.json.gz``) holds the routes that
have trips, one stop pattern / shape / trip list per route direction, the
stops those patterns use, and the ODbL attribution line.

``stop_times.txt`` is not copied: its intermediate stop times are linear in
``shape_dist_traveled`` between each trip's first and last stop. This script
*checks* that claim for every row (and every other assumption the compact
format relies on) and refuses to write the file if one fails.

The output is deterministic: sorted keys, fixed gzip mtime and no file name
in the gzip header, so rebuilding from the same input is byte-identical.

Usage::

    python scripts/build_gtfs_subset.py [GTFS_DIR] [--output PATH]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO_ROOT.parent / "shared" / "data" / "bmtc"
DEFAULT_OUTPUT = REPO_ROOT / "fastgw" / "transit" / "data" / "bmtc-subset.json.gz"

FORMAT = "fastgw-gtfs-subset/1"
DIRECTION_NAMES = {"0": "UP", "1": "DOWN"}
#: Largest allowed gap between a stop_times time and its linear reconstruction.
MAX_TIME_ERROR_S = 2.0
#: Largest allowed gap between a stop and the shape point at its distance.
MAX_STOP_OFFSET_M = 50.0
#: Largest allowed overshoot of the last stop's distance beyond the shape end.
MAX_SHAPE_OVERSHOOT_M = 5.0
BENGALURU_BBOX = (12.6, 13.4, 77.3, 77.9)  # lat min, lat max, lon min, lon max


class FeedCheckError(AssertionError):
    """The input feed breaks an assumption the compact format relies on."""


def check(condition: bool, message: str) -> None:
    """Like ``assert`` but not stripped by ``python -O``."""
    if not condition:
        raise FeedCheckError(message)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def read_csv(gtfs_dir: Path, name: str) -> Iterator[dict[str, str]]:
    """Rows of one GTFS table as dicts (``utf-8-sig`` tolerates a BOM)."""
    with open(gtfs_dir / name, encoding="utf-8-sig", newline="") as fh:
        yield from csv.DictReader(fh)


def parse_gtfs_time(value: str) -> int:
    """``HH:MM:SS`` (hours may exceed 23) to seconds since service-day midnight."""
    hours, minutes, seconds = (int(part) for part in value.strip().split(":"))
    return hours * 3600 + minutes * 60 + seconds


def read_attribution(gtfs_dir: Path) -> str:
    """The attribution line quoted (as a ``>`` block quote) in SOURCE.md."""
    text = (gtfs_dir / "SOURCE.md").read_text(encoding="utf-8")
    after_heading = text.split("Attribution line", 1)
    check(len(after_heading) == 2, "SOURCE.md has no 'Attribution line'")
    match = re.search(r"^\s*>\s*(.+?)\s*$", after_heading[1], re.MULTILINE)
    check(match is not None, "SOURCE.md attribution block quote not found")
    return match.group(1)  # type: ignore[union-attr]


def read_single_row(gtfs_dir: Path, name: str) -> dict[str, str]:
    rows = list(read_csv(gtfs_dir, name))
    check(len(rows) == 1, f"{name}: expected exactly one row, got {len(rows)}")
    return rows[0]


# --------------------------------------------------------------------------
# Geometry (kept identical in spirit to fastgw.transit.gtfs)
# --------------------------------------------------------------------------


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371008.8 * math.asin(math.sqrt(a))


def point_on_shape(points: list[list[float]], dist_m: float) -> tuple[float, float]:
    """Linear interpolation of ``[lat, lon, dist]`` points at ``dist_m``."""
    for (lat1, lon1, d1), (lat2, lon2, d2) in zip(points, points[1:]):
        if d1 <= dist_m <= d2:
            frac = (dist_m - d1) / (d2 - d1) if d2 > d1 else 0.0
            return lat1 + frac * (lat2 - lat1), lon1 + frac * (lon2 - lon1)
    lat, lon, _ = points[-1] if dist_m > points[-1][2] else points[0]
    return lat, lon


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------


def load_trips(gtfs_dir: Path) -> dict[str, dict[str, str]]:
    trips = {row["trip_id"]: row for row in read_csv(gtfs_dir, "trips.txt")}
    for row in trips.values():
        check(row["direction_id"] in DIRECTION_NAMES, f"{row['trip_id']}: bad direction_id")
    return trips


def load_stop_times(gtfs_dir: Path) -> dict[str, list[dict[str, str]]]:
    """stop_times rows grouped by trip, each group ordered by stop_sequence."""
    by_trip: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_csv(gtfs_dir, "stop_times.txt"):
        by_trip[row["trip_id"]].append(row)
    for rows in by_trip.values():
        rows.sort(key=lambda row: int(row["stop_sequence"]))
    return by_trip


def load_shapes(gtfs_dir: Path) -> dict[str, list[list[float]]]:
    """Shapes as ``[lat, lon, dist_m]`` lists, rounded to 6 dp / 0.1 m."""
    raw: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
    for row in read_csv(gtfs_dir, "shapes.txt"):
        raw[row["shape_id"]].append(
            (
                int(row["shape_pt_sequence"]),
                float(row["shape_pt_lat"]),
                float(row["shape_pt_lon"]),
                float(row["shape_dist_traveled"]),
            )
        )
    shapes = {}
    for shape_id, points in raw.items():
        points.sort()
        shapes[shape_id] = [
            [round(lat, 6), round(lon, 6), round(dist, 1)] for _, lat, lon, dist in points
        ]
        dists = [point[2] for point in shapes[shape_id]]
        check(dists[0] == 0.0, f"shape {shape_id} does not start at 0 m")
        check(dists == sorted(dists), f"shape {shape_id}: distances decrease")
    return shapes


def check_linear_times(trip_id: str, rows: list[dict[str, str]]) -> tuple[int, int]:
    """Verify stop times are linear in distance from 0 m; return (start_s, end_s)."""
    start_s = parse_gtfs_time(rows[0]["departure_time"])
    end_s = parse_gtfs_time(rows[-1]["arrival_time"])
    last_dist = float(rows[-1]["shape_dist_traveled"])
    # Not assumed: the first stop is at 0 m (201 DOWN starts 0.6 m along its shape);
    # the reconstruction below runs from 0 m, as fastgw.transit.gtfs.Trip.dist_at does.
    check(last_dist > 0 and end_s >= start_s, f"{trip_id}: degenerate trip")
    for row in rows:
        check(row["arrival_time"] == row["departure_time"], f"{trip_id}: dwell time present")
        expected = start_s + (end_s - start_s) * float(row["shape_dist_traveled"]) / last_dist
        actual = parse_gtfs_time(row["arrival_time"])
        check(
            abs(actual - expected) <= MAX_TIME_ERROR_S,
            f"{trip_id} seq {row['stop_sequence']}: {actual} s vs linear {expected:.1f} s",
        )
    return start_s, end_s


def stop_pattern(rows: list[dict[str, str]]) -> list[list[Any]]:
    """``[[stop_id, dist_m], ...]`` of one trip."""
    return [[row["stop_id"], round(float(row["shape_dist_traveled"]), 1)] for row in rows]


def build_directions(
    trips: dict[str, dict[str, str]],
    stop_times: dict[str, list[dict[str, str]]],
    shapes: dict[str, list[list[float]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """route_id -> direction name -> {headsign, shape, stops, trips}."""
    routes: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    check(set(stop_times) == set(trips), "trips.txt and stop_times.txt list different trips")
    for trip_id in sorted(trips):
        trip = trips[trip_id]
        rows = stop_times[trip_id]
        start_s, end_s = check_linear_times(trip_id, rows)
        direction = DIRECTION_NAMES[trip["direction_id"]]
        pattern = stop_pattern(rows)
        entry = routes[trip["route_id"]].setdefault(
            direction,
            {
                "headsign": trip["trip_headsign"],
                "shape_id": trip["shape_id"],
                "shape": shapes[trip["shape_id"]],
                "stops": pattern,
                "trips": [],
            },
        )
        # One headsign, shape and stop pattern per direction: the format stores them once.
        where = f"{trip['route_id']} {direction} ({trip_id})"
        check(entry["headsign"] == trip["trip_headsign"], f"{where}: second headsign")
        check(entry["shape_id"] == trip["shape_id"], f"{where}: second shape")
        check(entry["stops"] == pattern, f"{where}: second stop pattern")
        entry["trips"].append([trip_id, start_s, end_s])
    for directions in routes.values():
        for entry in directions.values():
            del entry["shape_id"]
            entry["trips"].sort(key=lambda trip: (trip[1], trip[0]))
    return routes


def build_routes(gtfs_dir: Path, directions: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """route_id -> route record, for the routes that have trips."""
    routes = {}
    for row in read_csv(gtfs_dir, "routes.txt"):
        if row["route_id"] in directions:
            routes[row["route_id"]] = {
                "short_name": row["route_short_name"],
                "long_name": row["route_long_name"],
                "color": row["route_color"],
                "directions": directions[row["route_id"]],
            }
    missing = set(directions) - set(routes)
    check(not missing, f"routes missing from routes.txt: {sorted(missing)}")
    return routes


def kannada_stop_names(gtfs_dir: Path) -> dict[str, str]:
    path = gtfs_dir / "translations.txt"
    if not path.exists():
        return {}
    return {
        row["record_id"]: row["translation"]
        for row in read_csv(gtfs_dir, "translations.txt")
        if row["table_name"] == "stops" and row["field_name"] == "stop_name" and row["language"] == "kn"
    }


def build_stops(gtfs_dir: Path, used_stop_ids: set[str]) -> dict[str, dict[str, Any]]:
    """stop_id -> {name, name_kn, lat, lon} for the stops the patterns use."""
    names_kn = kannada_stop_names(gtfs_dir)
    stops = {}
    for row in read_csv(gtfs_dir, "stops.txt"):
        if row["stop_id"] in used_stop_ids:
            stops[row["stop_id"]] = {
                "name": row["stop_name"],
                "name_kn": names_kn.get(row["stop_id"]),
                "lat": round(float(row["stop_lat"]), 6),
                "lon": round(float(row["stop_lon"]), 6),
            }
    missing = used_stop_ids - set(stops)
    check(not missing, f"stops missing from stops.txt: {sorted(missing)[:10]}")
    return stops


def check_geometry(routes: dict[str, Any], stops: dict[str, dict[str, Any]]) -> float:
    """Stops lie near their shape and inside Bengaluru; return the worst offset (m)."""
    lat_min, lat_max, lon_min, lon_max = BENGALURU_BBOX
    worst = 0.0
    for route_id, route in routes.items():
        for direction, entry in route["directions"].items():
            shape = entry["shape"]
            check(
                entry["stops"][-1][1] <= shape[-1][2] + MAX_SHAPE_OVERSHOOT_M,
                f"{route_id} {direction}: last stop beyond the shape end",
            )
            for lat, lon, _ in shape:
                inside = lat_min < lat < lat_max and lon_min < lon < lon_max
                check(inside, f"{route_id} {direction}: shape point outside Bengaluru")
            for stop_id, dist in entry["stops"]:
                stop = stops[stop_id]
                offset = haversine_m(stop["lat"], stop["lon"], *point_on_shape(shape, dist))
                where = f"{route_id} {direction} stop {stop_id}"
                check(offset <= MAX_STOP_OFFSET_M, f"{where}: {offset:.0f} m off the shape")
                worst = max(worst, offset)
    return worst


def build_subset(gtfs_dir: Path) -> dict[str, Any]:
    """The whole subset document, checked."""
    trips = load_trips(gtfs_dir)
    stop_times = load_stop_times(gtfs_dir)
    directions = build_directions(trips, stop_times, load_shapes(gtfs_dir))
    routes = build_routes(gtfs_dir, directions)
    used_stop_ids = {
        stop_id
        for route in routes.values()
        for entry in route["directions"].values()
        for stop_id, _ in entry["stops"]
    }
    stops = build_stops(gtfs_dir, used_stop_ids)
    worst_offset = check_geometry(routes, stops)
    n_rows = sum(map(len, stop_times.values()))
    print(
        f"checked {n_rows} stop_times rows of {len(trips)} trips (linear within {MAX_TIME_ERROR_S} s); "
        f"worst stop-to-shape offset {worst_offset:.1f} m",
        file=sys.stderr,
    )
    return {
        "format": FORMAT,
        "attribution": read_attribution(gtfs_dir),
        "timezone": read_single_row(gtfs_dir, "agency.txt")["agency_timezone"],
        "feed_version": read_single_row(gtfs_dir, "feed_info.txt")["feed_version"],
        "routes": routes,
        "stops": stops,
    }


def encode_deterministic(document: dict[str, Any]) -> bytes:
    """Compact JSON, sorted keys, gzip with mtime 0 and no file name."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    payload = text.encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(payload)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "gtfs_dir", nargs="?", type=Path, default=DEFAULT_INPUT, help=f"GTFS folder with SOURCE.md ({DEFAULT_INPUT})"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"where to write ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)

    document = build_subset(args.gtfs_dir)
    data = encode_deterministic(document)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    n_trips = sum(len(d["trips"]) for r in document["routes"].values() for d in r["directions"].values())
    print(
        f"wrote {args.output} ({len(data):,} bytes): {len(document['routes'])} routes, "
        f"{len(document['stops'])} stops, {n_trips} trips",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
