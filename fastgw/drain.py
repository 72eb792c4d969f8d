"""Graceful drain: move an instance's clients elsewhere without a reconnect storm.

On SIGTERM the instance turns ``/readyz`` to 503 and refuses new upgrades (the
gateway does that), then, here: every client gets ``{"type":"reconnect",
"retryAfterMs":d}`` with its own random delay ``d`` spread over the drain window,
keeps receiving messages meanwhile, and is closed (1001, its session saved for
``resume``) when its delay is up, in batches of whoever is due. So clients come
back to the other instances at a steady rate instead of all at once.

The window is the drain period, shortened for small instances so that clients
are not kept waiting for nothing: at most ``SPREAD_RATE`` reconnects per second
are asked for (10,000 clients over 30 s is 333/s; 100 clients drain in 1 s).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from fastgw.protocol import native
from fastgw.stats import CloseReason

if TYPE_CHECKING:
    from fastgw.server import Gateway

__all__ = ["drain", "SPREAD_RATE"]

log = logging.getLogger("fastgw.drain")

#: Reconnects per second below which the window is shortened.
SPREAD_RATE = 100.0
#: Granularity of the close batches, seconds.
TICK = 0.05

CLOSE_GOING_AWAY = 1001


async def drain(gateway: "Gateway", period: float, *, rng: random.Random | None = None) -> int:
    """Tell every connection to reconnect at its own time and close it then; returns how many."""
    conns = [c for c in gateway.connections if c.close_reason is None]
    if not conns:
        return 0
    window = max(0.0, min(period, len(conns) / SPREAD_RATE))
    rng = rng or random.Random()
    due = sorted(((rng.uniform(0.0, window), index) for index in range(len(conns))))
    for delay, index in due:
        conns[index].send(native.reconnect(int(delay * 1000)))
    log.info("draining %d connections over %.1f s", len(conns), window)
    loop = asyncio.get_running_loop()
    start = loop.time()
    closed = 0
    position = 0
    while position < len(due):
        now = loop.time() - start
        while position < len(due) and due[position][0] <= now + TICK / 2:
            conn = conns[due[position][1]]
            position += 1
            if conn.close_reason is None and conn in gateway.connections:
                conn.close_reason = CloseReason.DRAIN
                gateway.close_connection(conn, CLOSE_GOING_AWAY, "server draining")
                closed += 1
        if position < len(due):
            await asyncio.sleep(min(TICK, max(0.0, due[position][0] - now)))
    return closed
