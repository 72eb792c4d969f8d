"""Pure-Python twin of ``fastgw/_core.pyx``: the fan-out hot path.

Both modules expose the same functions with byte-identical results; the tests
run one suite against each. ``fastgw.core`` picks the compiled one unless
``FASTGW_NO_EXTENSIONS=1`` is set or the extension is missing.

Functions work on bytes and on *sinks*: objects with a ``transport`` attribute
(an ``asyncio.Transport``) and an ``outbound_limit`` attribute (bytes). The
core never closes anything; it reports the sinks that would exceed their
limit and leaves the policy (close 4008, count) to the caller.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_pack_u16 = struct.Struct("!H").pack
_pack_u64 = struct.Struct("!Q").pack


def frame_header(length: int, opcode: int = OP_TEXT) -> bytes:
    """Header of a final, unmasked server-to-client WebSocket frame (RFC 6455 §5.2)."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + _pack_u16(length)
    return bytes((first, 127)) + _pack_u64(length)


def build_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One complete frame: header + payload, built once and shared by every recipient."""
    return frame_header(len(payload), opcode) + payload


def build_close_frame(code: int, reason: str = "") -> bytes:
    """A close frame carrying ``code`` and a UTF-8 reason (truncated to fit 125 bytes)."""
    body = _pack_u16(code) + reason.encode("utf-8")[:123]
    return build_frame(body, OP_CLOSE)


def fanout(frame: bytes, sinks: Iterable[Any]) -> tuple[int, list[Any]]:
    """Write ``frame`` to every sink's transport.

    A sink whose transport is closing is skipped. A sink whose buffered bytes
    plus this frame would exceed its ``outbound_limit`` is not written to and is
    returned in the overflow list. Returns ``(written, overflowed)``.
    """
    size = len(frame)
    written = 0
    overflowed: list[Any] = []
    for sink in sinks:
        transport = sink.transport
        if transport is None or transport.is_closing():
            continue
        if transport.get_write_buffer_size() + size > sink.outbound_limit:
            overflowed.append(sink)
            continue
        transport.write(frame)
        written += 1
    return written, overflowed
