"""Pure-Python twin of ``fastgw/_core.pyx``: the fan-out hot path.

Both modules expose the same functions with byte-identical results; the tests
run one suite against each. ``fastgw.core`` picks the compiled one unless
``FASTGW_NO_EXTENSIONS=1`` is set or the extension is missing. This module is
the reference: where the two could differ, this one says what is right.

Functions work on bytes, on message dicts and on lists of
``asyncio.Transport``. The core never closes anything: it reports the
transports that would exceed the outbound limit and leaves the policy
(close 4008, count) to the caller.

Contents:

* framing: :func:`frame_header`, :func:`build_frame`, :func:`build_close_frame`;
* write-many: :func:`fanout` (one frame to many transports);
* wire profiles: :func:`reduce_location`, :func:`strip_fields` (smaller payloads);
* batching: :func:`build_batch`, :class:`Batcher`, :func:`enqueue`, :func:`flush`
  (what each connection receives per flush interval, with conflation).
"""

from __future__ import annotations

import math
import operator
import struct
from typing import Any, Hashable, Iterable, Sequence

import orjson

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: First-byte bits of a frame (RFC 6455 §5.2).
_FIN = 0x80
_RSV1 = 0x40  # permessage-deflate (RFC 7692): "this message is compressed"

_pack_u16 = struct.Struct("!H").pack
_pack_u64 = struct.Struct("!Q").pack


# --------------------------------------------------------------------------- framing


def frame_header(length: int, opcode: int = OP_TEXT, rsv1: bool = False) -> bytes:
    """Header of a final, unmasked server-to-client WebSocket frame (RFC 6455 §5.2).

    ``rsv1`` sets the permessage-deflate "compressed" bit (RFC 7692 §6); only
    send it on a connection that negotiated the extension.
    """
    first = _FIN | opcode | (_RSV1 if rsv1 else 0)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + _pack_u16(length)
    return bytes((first, 127)) + _pack_u64(length)


def build_frame(payload: bytes, opcode: int = OP_TEXT, rsv1: bool = False) -> bytes:
    """One complete frame: header + payload, built once and shared by every recipient."""
    return frame_header(len(payload), opcode, rsv1) + payload


def build_close_frame(code: int, reason: str = "") -> bytes:
    """A close frame carrying ``code`` and a UTF-8 reason (truncated to fit 125 bytes)."""
    body = _pack_u16(code) + reason.encode("utf-8")[:123]
    return build_frame(body, OP_CLOSE)


# --------------------------------------------------------------------------- write-many


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


# --------------------------------------------------------------------------- wire profiles


def _is_finite_number(value: object) -> bool:
    """True for an int or a finite float: the values the rounding rules apply to.

    Anything else (None, a string, NaN, ±inf) is passed through unchanged, so a
    malformed field never raises in the delivery path (``round(nan)`` would).
    ``bool`` is an ``int`` here, as everywhere in Python.
    """
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _round_heading(heading: float) -> int:
    """Heading to the nearest 5° (half to even, like ``round``), in 0..355."""
    return int(round(heading / 5.0)) * 5 % 360


def reduce_location(message: dict[str, Any], decimals: int, drop_confidence: bool) -> dict[str, Any]:
    """A smaller copy of a ``location_update`` payload for the low-bandwidth profiles.

    Returns a new dict (the input is never mutated; key order is kept):

    * ``latitude``, ``longitude``: ``round(x, decimals)`` (4 decimals ≈ 11 m);
    * ``speed``: ``int(round(speed))``; ``heading``: nearest 5° as an int, mod 360;
    * ``contributor_count`` removed, ``confidence`` removed if ``drop_confidence``;
    * ``metadata``: a copy without ``quality_score``, dropped if nothing is left.

    An absent key stays absent; a value the rule cannot apply to (not an
    int/float, or NaN/inf) is kept as is.
    """
    out = dict(message)
    for key in ("latitude", "longitude"):
        value = out.get(key)
        if _is_finite_number(value):
            out[key] = round(value, decimals)
    value = out.get("speed")
    if _is_finite_number(value):
        out["speed"] = int(round(value))
    value = out.get("heading")
    if _is_finite_number(value):
        out["heading"] = _round_heading(value)
    out.pop("contributor_count", None)
    if drop_confidence:
        out.pop("confidence", None)
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        metadata = dict(metadata)
        metadata.pop("quality_score", None)
        if metadata:
            out["metadata"] = metadata
        else:
            del out["metadata"]
    return out


def strip_fields(message: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """A new dict without the top-level keys in ``fields`` (absent ones are ignored)."""
    out = dict(message)
    for field in fields:
        out.pop(field, None)
    return out


# --------------------------------------------------------------------------- batching

_BATCH_HEAD = b'{"type":"batched_messages","batches":['
_BATCH_COUNT = b'],"total_messages":'
_BATCH_STAMP = b',"batched_at":'
_BATCH_TAIL = b"}"


def build_batch(items: list[bytes], batched_at: str) -> bytes:
    """The ``batched_messages`` envelope around already-encoded JSON objects.

    ``{"type":"batched_messages","batches":[<items>],"total_messages":<n>,"batched_at":"<ts>"}``
    — the items (``channel_message`` envelopes) are spliced in as they are,
    never decoded again.
    """
    return (
        _BATCH_HEAD
        + b",".join(items)
        + _BATCH_COUNT
        + str(len(items)).encode()
        + _BATCH_STAMP
        + orjson.dumps(batched_at)
        + _BATCH_TAIL
    )


class Batcher:
    """What one connection receives at its next flush: queued items, conflated by key.

    ``envelope=False``: items are complete WebSocket frames, written back to
    back in one ``write``. ``envelope=True``: items are encoded
    ``channel_message`` objects, sent as one ``batched_messages`` text frame
    (a lone item is sent as its own frame, without the envelope).

    ``limit`` is the connection's outbound limit, checked by :func:`flush`.
    """

    __slots__ = ("transport", "limit", "envelope", "_items", "_index")

    def __init__(self, transport: Any, limit: int, envelope: bool) -> None:
        self.transport = transport
        self.limit = operator.index(limit)
        self.envelope = bool(envelope)
        self._items: list[bytes] = []
        #: conflation key → position of its item in ``_items``
        self._index: dict[Hashable, int] = {}

    @property
    def pending(self) -> int:
        """Number of items queued (a conflated item counts once)."""
        return len(self._items)

    def add(self, item: bytes, key: Hashable | None) -> bool:
        """Queue ``item``; returns True if the batcher was empty (schedule a flush).

        With a ``key`` (e.g. ``(channel, vehicle_id)`` of a ``location_update``)
        an item already queued under an equal key is replaced in place: the
        connection gets only the newest one, at the position of the first.
        """
        items = self._items
        if key is not None:
            index = self._index.get(key)
            if index is not None:
                items[index] = item
                return False
            self._index[key] = len(items)
        items.append(item)
        return len(items) == 1

    def take(self, batched_at: str) -> bytes | None:
        """The bytes to write for everything queued (None if nothing), and reset.

        The queue is emptied before the bytes are built, so a failure here
        (e.g. a ``batched_at`` orjson cannot encode) drops it rather than
        failing again at every flush.
        """
        items = self._items
        if not items:
            return None
        self._items = []
        self._index.clear()
        if not self.envelope:
            return b"".join(items)
        if len(items) == 1:
            return build_frame(items[0])
        return build_frame(build_batch(items, batched_at))


def enqueue(item: bytes, batchers: Iterable[Batcher], key: Hashable | None) -> list[Batcher]:
    """``add`` ``item`` to every batcher; returns those that were empty before.

    The caller schedules one flush timer for the returned batchers together.
    """
    return [batcher for batcher in batchers if batcher.add(item, key)]


def flush(batchers: Sequence[Batcher], batched_at: str) -> tuple[int, list[int]]:
    """``take`` every batcher and write its bytes; returns ``(written, overflowed_indices)``.

    As in :func:`fanout`: a batcher whose transport's buffered bytes plus this
    write would exceed its ``limit`` is not written to (its queue is dropped)
    and its index is reported; a transport closed under us is skipped. Empty
    batchers are skipped silently.
    """
    written = 0
    overflowed: list[int] = []
    for i, batcher in enumerate(batchers):
        data = batcher.take(batched_at)
        if data is None:
            continue
        transport = batcher.transport
        if transport.get_write_buffer_size() + len(data) > batcher.limit:
            overflowed.append(i)
            continue
        try:
            transport.write(data)
        except RuntimeError:  # closed under us; the server removes it shortly
            continue
        written += 1
    return written, overflowed
