"""Kafka record processing: validate, transform, route (see ``docs/ingest.md``).

:func:`~fastgw.processing.pipeline.build_processors` gives one processor per
topic role; each turns a record's bytes into the ``(channel, message)`` pairs to
publish, or raises :class:`~fastgw.processing.pipeline.Rejected` with a reason code.
"""

from .base import REASONS, Output, Processor, Rejected
from .gtfs_rt import decode_vehicle_positions, encode_vehicle_positions
from .pipeline import ROLES, build_processors
from .schemas import LocationData

__all__ = [
    "Output",
    "Rejected",
    "Processor",
    "REASONS",
    "ROLES",
    "LocationData",
    "build_processors",
    "decode_vehicle_positions",
    "encode_vehicle_positions",
]
