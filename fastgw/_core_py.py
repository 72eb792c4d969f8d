"""Pure-Python twin of ``fastgw/_core.pyx``: the fan-out hot path.

Both modules expose the same functions with byte-identical results; the tests
run one suite against each. ``fastgw.core`` picks the compiled one unless
``FASTGW_NO_EXTENSIONS=1`` is set or the extension is missing.

Functions work on bytes and on lists of ``asyncio.Transport``. The core never
closes anything: it reports the transports that would exceed the outbound
limit and leaves the policy (close 4008, count) to the caller.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

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


def fanout(frame: bytes, transports: Sequence[Any], limit: int) -> tuple[int, list[int]]:
    """Write ``frame`` to every transport in ``transports``; the write-many loop.

    A transport whose buffered bytes plus this frame would exceed ``limit`` is
    not written to; its index is returned in the overflow list. A transport
    that is already closed is skipped (uvloop raises ``RuntimeError`` on it).
    Returns ``(written, overflowed_indices)``.

    Only the transport is touched per recipient: the loop is bound by one
    ``write`` syscall each, and every extra object or call per recipient shows.
    """
    room = limit - len(frame)
    written = 0
    overflowed: list[int] = []
    for i, transport in enumerate(transports):
        if transport.get_write_buffer_size() > room:
            overflowed.append(i)
            continue
        try:
            transport.write(frame)
        except RuntimeError:  # closed under us; the server removes it shortly
            continue
        written += 1
    return written, overflowed
