"""Route shapes for the dashboard's map: the packaged GTFS subset, simplified and quantized.

The map is drawn on a canvas in the browser (no tile server), so the page needs every
route direction's polyline. The packaged subset has 5,230 shape points; the real road
polylines (500-D, 201, G-7, 333-E) are dense. Douglas–Peucker with a few metres of
tolerance keeps what is visible at any zoom the page offers, and coordinates are sent
as integers of 1e-5 degree (about 1.1 m), the first point absolute and the others as
differences from the previous one: about a tenth of the raw JSON.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import orjson

from fastgw.transit.gtfs import Feed, load_feed

__all__ = ["SCALE", "TOLERANCE_M", "shapes_document", "shapes_json", "simplify"]

#: Coordinates are sent as round(degrees * SCALE).
SCALE = 100_000
#: Douglas–Peucker tolerance (metres): a point closer than this to the simplified line goes.
TOLERANCE_M = 4.0
_METRES_PER_DEGREE = 111_320.0


def simplify(lats: tuple[float, ...] | list[float], lons: tuple[float, ...] | list[float],
             tolerance_m: float = TOLERANCE_M) -> list[int]:
    """Indexes of the points that Douglas–Peucker keeps (first and last always kept).

    Distances are measured on a local equirectangular projection, exact enough over
    a city. Iterative, so long polylines cannot hit the recursion limit.
    """
    n = len(lats)
    if n <= 2:
        return list(range(n))
    kx = _METRES_PER_DEGREE * math.cos(math.radians(sum(lats) / n))
    xs = [lon * kx for lon in lons]
    ys = [lat * _METRES_PER_DEGREE for lat in lats]
    keep = [False] * n
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        first, last = stack.pop()
        ax, ay, bx, by = xs[first], ys[first], xs[last], ys[last]
        dx, dy = bx - ax, by - ay
        length_sq = dx * dx + dy * dy
        worst, worst_i = -1.0, -1
        for i in range(first + 1, last):
            px, py = xs[i] - ax, ys[i] - ay
            if length_sq == 0:
                dist = math.hypot(px, py)
            else:  # distance to the segment, not to the infinite line (routes double back)
                t = max(0.0, min(1.0, (px * dx + py * dy) / length_sq))
                dist = math.hypot(px - t * dx, py - t * dy)
            if dist > worst:
                worst, worst_i = dist, i
        if worst > tolerance_m:
            keep[worst_i] = True
            stack.append((first, worst_i))
            stack.append((worst_i, last))
    return [i for i in range(n) if keep[i]]


def _delta_encoded(lats: list[float], lons: list[float]) -> list[int]:
    """``[lat0, lon0, dlat1, dlon1, ...]`` in 1e-5 degree units (first pair absolute)."""
    out: list[int] = []
    prev_lat = prev_lon = 0
    for lat, lon in zip(lats, lons):
        qlat, qlon = round(lat * SCALE), round(lon * SCALE)
        out.append(qlat - prev_lat)
        out.append(qlon - prev_lon)
        prev_lat, prev_lon = qlat, qlon
    return out


def shapes_document(feed: Feed, tolerance_m: float = TOLERANCE_M) -> dict[str, Any]:
    """The ``GET /admin/api/shapes`` body for ``feed``."""
    routes = []
    min_lat = min_lon = math.inf
    max_lat = max_lon = -math.inf
    points_in = points_out = 0
    for route_id, route in sorted(feed.routes.items()):
        directions = {}
        for direction, pattern in sorted(route.directions.items()):
            shape = pattern.shape
            kept = simplify(shape.lats, shape.lons, tolerance_m)
            lats = [shape.lats[i] for i in kept]
            lons = [shape.lons[i] for i in kept]
            points_in += len(shape.lats)
            points_out += len(kept)
            min_lat, max_lat = min(min_lat, *lats), max(max_lat, *lats)
            min_lon, max_lon = min(min_lon, *lons), max(max_lon, *lons)
            directions[direction] = {"headsign": pattern.headsign, "points": _delta_encoded(lats, lons)}
        routes.append({
            "route_id": route_id,
            "short_name": route.short_name,
            "long_name": route.long_name,
            "color": "#" + route.color,
            "directions": directions,
        })
    return {
        "feed_version": feed.feed_version,
        "attribution": feed.attribution,
        "scale": SCALE,
        "encoding": "delta",  # points: [lat0, lon0, dlat1, dlon1, ...] / scale
        "tolerance_m": tolerance_m,
        "points": {"source": points_in, "sent": points_out},
        "bbox": [min_lat, min_lon, max_lat, max_lon] if routes else None,
        "routes": routes,
    }


@lru_cache(maxsize=1)
def shapes_json() -> bytes:
    """The packaged feed's shapes document, encoded once per process."""
    return orjson.dumps(shapes_document(load_feed()))
