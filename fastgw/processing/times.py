"""Time helpers of the processors: fast ISO formatting, timestamp parsing, service days.

* :func:`iso_ms` formats epoch **milliseconds** exactly as
  :func:`fastgw.messages.iso_from_epoch` formats epoch seconds
  (``2026-11-29T08:00:00.123Z``), about 5x faster (the date part is cached per day).
* :func:`parse_timestamp` turns the two accepted input forms (epoch ms integer, or
  an ISO 8601 string with a UTC offset) into epoch milliseconds.
* :class:`ServiceClock` answers "when was midnight of the GTFS service day" in the
  feed's time zone (Asia/Kolkata for BMTC), which timetable times count from.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

__all__ = ["iso_ms", "parse_timestamp", "ServiceClock", "DAY_S"]

DAY_S = 86_400
_DAY_MS = 86_400_000
_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_date_prefix: dict[int, str] = {}
_HH_MM = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SS = tuple(f"{s:02d}." for s in range(60))
_MMM_Z = tuple(f"{m:03d}Z" for m in range(1000))


def iso_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` for epoch milliseconds ``ms``."""
    day, rem = divmod(ms, _DAY_MS)
    prefix = _date_prefix.get(day)
    if prefix is None:
        if len(_date_prefix) > 4096:
            _date_prefix.clear()
        prefix = _date_prefix[day] = (_EPOCH_DATE + timedelta(days=day)).isoformat() + "T"
    minute, rem = divmod(rem, 60_000)
    sec, milli = divmod(rem, 1000)
    return f"{prefix}{_HH_MM[minute]}{_SS[sec]}{_MMM_Z[milli]}"


#: Accepted range of timestamps, epoch ms: 2001-09-09 .. 5138-11-16 (as the schemas' integers).
MIN_MS = 10**12
MAX_MS = 10**14


def parse_timestamp(value: int | str) -> int:
    """Epoch milliseconds from an epoch-ms integer or an ISO 8601 string with an offset.

    Raises ``ValueError`` for a string that is not ISO 8601, has no UTC offset
    (``Z`` or ``+05:30``: a naive time is ambiguous), or a time outside
    [:data:`MIN_MS`, :data:`MAX_MS`).
    """
    if isinstance(value, int):
        ms = value
    else:
        try:
            dt = datetime.fromisoformat(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an ISO 8601 time: {value[:40]!r}") from exc
        if dt.tzinfo is None:
            raise ValueError(f"ISO 8601 time without a UTC offset: {value[:40]!r}")
        delta = dt - _EPOCH
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not MIN_MS <= ms < MAX_MS:
        raise ValueError(f"time out of range (2001-5138): {value!r}"[:80])
    return ms


class ServiceClock:
    """Service-day arithmetic in one time zone.

    GTFS times are seconds since "noon minus 12 h" of the service day (midnight,
    except on DST change days); trips running past midnight have times > 24 h on
    the previous service day. :meth:`midnight` gives that origin, as epoch
    seconds, for the local calendar day containing ``ts``. Results are cached
    per 15-minute bucket (every real UTC offset is a multiple of 15 minutes, so
    a bucket never straddles local midnight).
    """

    __slots__ = ("tz", "_cache")

    def __init__(self, tz: str = "Asia/Kolkata") -> None:
        self.tz = ZoneInfo(tz)
        self._cache: dict[int, tuple[float, int]] = {}

    def _lookup(self, ts: float) -> tuple[float, int]:
        bucket = int(ts // 900)
        hit = self._cache.get(bucket)
        if hit is None:
            local = datetime.fromtimestamp(bucket * 900, self.tz)
            noon = datetime(local.year, local.month, local.day, 12, tzinfo=self.tz)
            hit = (noon.timestamp() - 43_200, local.toordinal())
            if len(self._cache) > 8192:
                self._cache.clear()
            self._cache[bucket] = hit
        return hit

    def midnight(self, ts: float) -> float:
        """Epoch seconds of the service-day origin of the local day containing ``ts``."""
        hit = self._cache.get(int(ts // 900))
        return hit[0] if hit is not None else self._lookup(ts)[0]

    def local_ordinal(self, ts: float) -> int:
        """Proleptic Gregorian ordinal of the local date at ``ts`` (``date.toordinal``)."""
        return self._lookup(ts)[1]

    def period_bucket(self, period: str, ts: float) -> int:
        """An integer that changes exactly when the local day / ISO week / month does.

        ``daily``: the date's ordinal; ``weekly``: the ordinal of that week's
        Monday; ``monthly``: ``year * 12 + month - 1``.
        """
        ordinal = self.local_ordinal(ts)
        if period == "daily":
            return ordinal
        if period == "weekly":
            return ordinal - (ordinal - 1) % 7  # ordinal 1 (0001-01-01) is a Monday
        d = date.fromordinal(ordinal)
        return d.year * 12 + d.month - 1
