"""Floor peer: frame once, then one ``transport.write(frame)`` per subscriber.

The physical limit for unbatched delivery on this machine: no per-socket
Python work beyond one write call (about 8-10 µs of kernel time each on
loopback). A gateway that writes each message separately cannot beat it; only
packing several messages into one write can.

    python benchmarks/peers/floor_writes.py --port 8082 [--cpu 0]
"""

from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer import SUBS_KEY, run  # noqa: E402

_U16 = struct.Struct("!BBH").pack
_U64 = struct.Struct("!BBQ").pack


def build_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _U16(0x81, 126, n) + payload
    return _U64(0x81, 127, n) + payload


async def deliver(app, channel: str, payload: str) -> int:
    frame = build_frame(payload.encode("utf-8"))
    n = 0
    for transport in list(app[SUBS_KEY].values()):
        if transport is None or transport.is_closing():
            continue
        transport.write(frame)
        n += 1
    return n


if __name__ == "__main__":
    run(deliver, __doc__.splitlines()[0])
