"""Types shared by every processor: :class:`Output`, :class:`Rejected`, :class:`Processor`.

They live here (and are re-exported by :mod:`fastgw.processing.pipeline`, where
the consumers import them from) so that the processor modules can use them
without importing the pipeline that builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import msgspec

from .times import parse_timestamp

__all__ = ["Output", "Rejected", "Processor", "REASONS"]

#: Every reason code :class:`Rejected` may carry, with what it means. Stable: the
#: dead-letter topic's ``fastgw-reason`` header and the metrics use these strings.
REASONS: dict[str, str] = {
    "empty": "the record has no value (a tombstone or an empty message)",
    "oversized": "the value is longer than max_record_bytes (checked before anything else)",
    "malformed_json": "the value starts with '{' but is not valid JSON",
    "malformed_protobuf": "the value is neither JSON nor a complete GTFS-Realtime FeedMessage",
    "schema": "valid JSON/protobuf, wrong shape: missing field, wrong type, value out of range",
    "unknown_route": "a route_id that is not in the GTFS feed",
    "bad_coordinates": "latitude/longitude not finite or outside the Bengaluru box 12.6-13.4 N, 77.3-77.9 E",
    "future_timestamp": "observed more than 60 s after the processing time",
    "stale_timestamp": "a location observed longer ago than max_age_s (default 600 s)",
    "key_mismatch": "the Kafka key (user id) and the record's user_id differ",
}


@dataclass(frozen=True, slots=True)
class Output:
    """One message to publish: ``hub.publish(output.channel, output.message)``.

    ``message`` is one of the payload schemas of ``docs/protocol.md``. The same
    dict object may be shared by several outputs (one ``location_update`` goes to
    three channels): publishers must not mutate it.
    """

    channel: str
    message: dict[str, Any]


_object_new = object.__new__
_set_channel = Output.channel.__set__  # type: ignore[attr-defined]
_set_message = Output.message.__set__  # type: ignore[attr-defined]


def new_output(channel: str, message: dict[str, Any]) -> Output:
    """``Output(channel, message)`` without the frozen-dataclass ``__init__`` (~2x faster;
    the hot path creates eight per location record)."""
    output = _object_new(Output)
    _set_channel(output, channel)
    _set_message(output, message)
    return output


class Rejected(Exception):
    """The record cannot be processed; it belongs in the dead-letter topic.

    ``reason`` is a stable code from :data:`REASONS`; ``detail`` is for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keep both attributes across pickling (multiprocessing, logging)
        return (type(self), (self.reason, self.detail))


@runtime_checkable
class Processor(Protocol):
    """Turns one Kafka record into the messages to publish (pure: no I/O, no asyncio).

    ``topic_role`` is ``"location"``, ``"alerts"``, ``"notifications"`` or
    ``"user_events"``. :meth:`process` returns the outputs (possibly none) or
    raises :class:`Rejected`; it never raises anything else on bad input.
    ``timestamp_ms`` is the Kafka record timestamp; ``now`` (epoch seconds)
    defaults to the processor's clock.
    """

    topic_role: str

    def process(
        self, value: bytes, key: bytes | None, timestamp_ms: int | None, now: float | None = None
    ) -> list[Output]: ...


def decode_json_record(decoder: Any, value: bytes, max_record_bytes: int) -> Any:
    """Size check, then ``decoder.decode(value)`` with failures mapped to reason codes."""
    size = len(value)
    if size > max_record_bytes:
        raise Rejected("oversized", f"{size} bytes > {max_record_bytes}")
    if size == 0:
        raise Rejected("empty", "no value")
    try:
        return decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise Rejected("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Rejected("malformed_json", str(exc)) from None
    except RecursionError:  # msgspec gives up past ~1,000 levels of nesting, even in skipped fields
        raise Rejected("malformed_json", "nested too deeply") from None


def record_time_ms(
    value: int | str | None, timestamp_ms: int | None, now: float, field: str = "timestamp"
) -> int:
    """Epoch ms of a record: its own ``field`` if given, else the Kafka timestamp, else ``now``.

    Raises ``schema`` for an unparsable value and ``future_timestamp`` for one more
    than 60 s ahead of ``now``.
    """
    if value is not None:
        try:
            ms = parse_timestamp(value)
        except ValueError as exc:
            raise Rejected("schema", f"{field}: {exc}") from None
    elif timestamp_ms is not None and timestamp_ms > 0:
        ms = int(timestamp_ms)
    else:
        ms = int(now * 1000)
    if ms > (now + 60.0) * 1000:
        raise Rejected("future_timestamp", f"{field} is {ms / 1000 - now:.1f} s after now")
    return ms
