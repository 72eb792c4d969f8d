"""``service-alerts`` records -> ``service_alert`` messages.

The value is a JSON :class:`~fastgw.processing.schemas.AlertData`; the Kafka
key is not used (an alert may name several routes). The message goes to
``alerts:{route_id}`` for each affected route (in the given order, duplicates
dropped) and to ``alerts:all``. Every affected route must be in the GTFS feed
(else ``unknown_route``); an empty list means network-wide (``alerts:all`` only).
"""

from __future__ import annotations

import time
from typing import Callable

from fastgw.transit.gtfs import Feed, load_feed

from .base import Output, Rejected, decode_json_record, record_time_ms
from .schemas import ALERT_DECODER
from .times import iso_ms, parse_timestamp

__all__ = ["AlertProcessor"]


class AlertProcessor:
    """The ``alerts`` role's processor (stateless)."""

    topic_role = "alerts"

    def __init__(
        self,
        feed: Feed | None = None,
        *,
        max_record_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed if feed is not None else load_feed()
        self.route_ids = frozenset(self.feed.routes)
        self.max_record_bytes = max_record_bytes
        self._clock = clock

    def process(
        self, value: bytes, key: bytes | None, timestamp_ms: int | None, now: float | None = None
    ) -> list[Output]:
        if now is None:
            now = self._clock()
        alert = decode_json_record(ALERT_DECODER, value, self.max_record_bytes)
        routes = list(dict.fromkeys(alert.affected_routes))
        unknown = [route_id for route_id in routes if route_id not in self.route_ids]
        if unknown:
            raise Rejected("unknown_route", f"affected_routes not in the GTFS feed: {unknown[:10]}")
        start = _optional_ms(alert.start_time, "start_time")
        end = _optional_ms(alert.end_time, "end_time")
        if start is not None and end is not None and end < start:
            raise Rejected("schema", "end_time is before start_time")
        ms = record_time_ms(alert.timestamp, timestamp_ms, now)
        message = {
            "type": "service_alert",
            "alert_id": alert.alert_id,
            "severity": alert.severity,
            "title": alert.title,
            "message": alert.message,
            "affected_routes": routes,
            "start_time": iso_ms(start) if start is not None else None,
            "end_time": iso_ms(end) if end is not None else None,
            "timestamp": iso_ms(ms),
        }
        outputs = [Output(f"alerts:{route_id}", message) for route_id in routes]
        outputs.append(Output("alerts:all", message))
        return outputs


def _optional_ms(value: int | str | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise Rejected("schema", f"{field}: {exc}") from None
