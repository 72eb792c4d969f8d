"""A log-linear histogram of non-negative integers (microseconds), cheap to fill and merge.

Values below 128 have a bucket each; above, every power of two is split into 64
buckets, so a bucket's width is at most 1/64 (1.6 %) of its values. Filling is one
``bucket_of`` and one list increment; histograms from several processes merge by
adding counts (they travel as ``{bucket: count}``). Percentiles are read at the
bucket's midpoint (within 0.8 % of the true value) and clamped to the exact
minimum and maximum, which are kept apart.
"""

from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["SUB_BITS", "N_BUCKETS", "bucket_of", "bucket_bounds", "Histogram"]

SUB_BITS = 7
_HALF = 1 << (SUB_BITS - 1)  # 64
#: enough for values up to 2**40 µs (12.7 days)
N_BUCKETS = (40 - SUB_BITS + 1) * _HALF + (1 << SUB_BITS)


def bucket_of(v: int) -> int:
    """Bucket index of ``v`` (>= 0); negative values go to bucket 0."""
    if v < 128:
        return v if v > 0 else 0
    s = v.bit_length() - SUB_BITS
    return (s << 6) + (v >> s)


def bucket_bounds(b: int) -> tuple[int, int]:
    """``(low, high)``: the values ``v`` with ``bucket_of(v) == b`` are ``low <= v <= high``."""
    if b < 128:
        return b, b
    s = (b >> 6) - 1
    m = b - (s << 6)
    return m << s, ((m + 1) << s) - 1


class Histogram:
    """Counts per bucket, with exact count, sum, min and max."""

    __slots__ = ("counts", "n", "total", "lo", "hi")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0
        self.lo: int | None = None
        self.hi: int | None = None

    def add(self, v: int, count: int = 1) -> None:
        b = bucket_of(v)
        self.counts[b] = self.counts.get(b, 0) + count
        self.n += count
        self.total += v * count
        self.lo = v if self.lo is None or v < self.lo else self.lo
        self.hi = v if self.hi is None or v > self.hi else self.hi

    def merge_counts(self, counts: Mapping[int | str, int], n: int, total: int, lo: int | None,
                     hi: int | None) -> None:
        """Add another histogram given as its parts (``counts`` keys may be strings: JSON)."""
        for b, c in counts.items():
            b = int(b)
            self.counts[b] = self.counts.get(b, 0) + int(c)
        self.n += n
        self.total += total
        if lo is not None:
            self.lo = lo if self.lo is None or lo < self.lo else self.lo
        if hi is not None:
            self.hi = hi if self.hi is None or hi > self.hi else self.hi

    def merge(self, other: "Histogram") -> None:
        self.merge_counts(other.counts, other.n, other.total, other.lo, other.hi)

    @classmethod
    def from_values(cls, values: Iterable[int]) -> "Histogram":
        h = cls()
        for v in values:
            h.add(v)
        return h

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "Histogram":
        h = cls()
        h.merge_counts(d["counts"], d["n"], d["total"], d["min"], d["max"])  # type: ignore[arg-type]
        return h

    @classmethod
    def from_counts(cls, counts: Mapping[int | str, int]) -> "Histogram":
        """From bucket counts alone: min, max and sum are estimated from the buckets."""
        h = cls()
        for b, c in counts.items():
            b, c = int(b), int(c)
            if c <= 0:
                continue
            low, high = bucket_bounds(b)
            h.counts[b] = h.counts.get(b, 0) + c
            h.n += c
            h.total += (low + high) // 2 * c
            h.lo = low if h.lo is None or low < h.lo else h.lo
            h.hi = high if h.hi is None or high > h.hi else h.hi
        return h

    def to_dict(self) -> dict[str, object]:
        return {"counts": {str(b): c for b, c in sorted(self.counts.items())}, "n": self.n,
                "total": self.total, "min": self.lo, "max": self.hi}

    def percentile(self, p: float) -> float | None:
        """The value at percentile ``p`` (0..100); None when empty. ``p = 100`` is the exact max."""
        if self.n == 0:
            return None
        if p >= 100:
            return float(self.hi)  # type: ignore[arg-type]
        if p <= 0:
            return float(self.lo)  # type: ignore[arg-type]
        rank = p / 100.0 * self.n  # the smallest value with at least this many at or below it
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                low, high = bucket_bounds(b)
                mid = (low + high) / 2.0
                return float(min(max(mid, self.lo), self.hi))  # type: ignore[type-var]
        return float(self.hi)  # type: ignore[arg-type]

    def mean(self) -> float | None:
        return self.total / self.n if self.n else None
