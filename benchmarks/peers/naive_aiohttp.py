"""Naive aiohttp fan-out peer: ``await ws.send_str(payload)`` for every subscriber.

What a straightforward aiohttp gateway does: one JSON string per message,
aiohttp frames it again for each socket (header + payload concatenation and a
``transport.write`` per subscriber, plus a coroutine per send).

    python benchmarks/peers/naive_aiohttp.py --port 8081 [--cpu 0]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer import SUBS_KEY, run  # noqa: E402


async def deliver(app, channel: str, payload: str) -> int:
    n = 0
    for ws in list(app[SUBS_KEY]):
        if ws.closed:
            continue
        await ws.send_str(payload)
        n += 1
    return n


if __name__ == "__main__":
    run(deliver, __doc__.splitlines()[0])
