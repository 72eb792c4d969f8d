"""Token bucket used to pace client requests (and, later, new connections)."""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["TokenBucket"]


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
