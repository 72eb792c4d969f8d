"""The processors of the Kafka topics, behind one interface.

The Kafka consumers (``fastgw.sources.kafka``) call, for each record of a role's
topic, ``processors[role].process(value, key, timestamp_ms)`` and publish every
returned :class:`Output` with ``hub.publish(output.channel, output.message)``; a
:class:`Rejected` record goes to the dead-letter topic with ``exc.reason``
(a stable code, see :data:`REASONS`) in a header.

Processors are pure (no I/O, no asyncio, no threads) and never raise anything
but :class:`Rejected` on bad input. The location and user-event processors keep
bounded in-memory state; a processor is meant for one consumer (one thread).
"""

from __future__ import annotations

import time
from typing import Callable

from fastgw.transit.gtfs import Feed, load_feed

from .alerts import AlertProcessor
from .base import REASONS, Output, Processor, Rejected
from .location import LocationProcessor
from .users import NotificationProcessor, UserEventProcessor

__all__ = [
    "Output",
    "Rejected",
    "Processor",
    "REASONS",
    "ROLES",
    "build_processors",
    "LocationProcessor",
    "AlertProcessor",
    "NotificationProcessor",
    "UserEventProcessor",
]

#: The roles, in the order of ``fastgw.sources.kafka.DEFAULT_TOPICS``.
ROLES = ("location", "alerts", "notifications", "user_events")


def build_processors(
    feed: Feed | None = None,
    *,
    eta_stops: int = 5,
    max_record_bytes: int = 64 * 1024,
    clock: Callable[[], float] = time.time,
) -> dict[str, Processor]:
    """One processor per role, sharing ``feed`` (default: the packaged BMTC subset).

    ``eta_stops``: how many upcoming stops get a ``stop_arrival`` per location.
    ``max_record_bytes``: larger values are rejected as ``oversized`` before parsing.
    ``clock``: epoch seconds, used when ``process`` is called without ``now``.
    """
    feed = feed if feed is not None else load_feed()
    return {
        "location": LocationProcessor(
            feed, eta_stops=eta_stops, max_record_bytes=max_record_bytes, clock=clock
        ),
        "alerts": AlertProcessor(feed, max_record_bytes=max_record_bytes, clock=clock),
        "notifications": NotificationProcessor(max_record_bytes=max_record_bytes, clock=clock),
        "user_events": UserEventProcessor(feed, max_record_bytes=max_record_bytes, clock=clock),
    }
