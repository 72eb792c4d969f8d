"""Token buckets: client requests per connection, and new connections per source IP and
per instance (load shedding before a connection costs anything)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Callable

__all__ = ["TokenBucket", "ConnectionLimiter"]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; ``take()`` spends one."""

    __slots__ = ("rate", "burst", "_tokens", "_last", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until ``take()`` would succeed."""
        if self._tokens >= 1.0 or self.rate <= 0:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    @property
    def full(self) -> bool:
        """Refilled to the brim: the bucket of an idle client, safe to forget."""
        return self._tokens + (self._clock() - self._last) * self.rate >= self.burst


class ConnectionLimiter:
    """New WebSocket connections: a bucket per source IP and one for the instance.

    A rate of 0 disables that bucket. Per-IP buckets are kept for at most
    ``max_ips`` addresses; the least recently seen are forgotten first (a forgotten
    address starts again with a full bucket, which is what an idle one has anyway).
    """

    def __init__(
        self,
        rate_per_ip: float,
        burst_per_ip: int,
        rate: float,
        burst: int,
        *,
        max_ips: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_ip = rate_per_ip
        self.burst_per_ip = burst_per_ip
        self.max_ips = max_ips
        self._clock = clock
        self._instance = TokenBucket(rate, burst, clock) if rate > 0 else None
        self._ips: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, ip: str | None) -> tuple[str | None, int]:
        """``(None, 0)`` to accept, else ``(reason, retry_after_seconds)``: reason
        ``rate_ip`` (answer 429) or ``rate`` (the instance; answer 503)."""
        if self.rate_per_ip > 0 and ip:
            bucket = self._ips.get(ip)
            if bucket is None:
                if len(self._ips) >= self.max_ips:
                    self._ips.popitem(last=False)
                bucket = self._ips[ip] = TokenBucket(self.rate_per_ip, self.burst_per_ip, self._clock)
            else:
                self._ips.move_to_end(ip)
            if not bucket.take():
                return "rate_ip", max(1, math.ceil(bucket.wait_time()))
        if self._instance is not None and not self._instance.take():
            return "rate", max(1, math.ceil(self._instance.wait_time()))
        return None, 0
