"""Hot path, second half: rsv1 frames, wire-profile reduction, batch envelopes, batching.

Every test runs against the compiled ``fastgw._core`` and the pure-Python
``fastgw._core_py``. Frames are checked with an independent decoder
(``websockets``' sans-I/O parser); ``flush`` runs over real connected sockets.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
import socket
import zlib
from typing import Any

import orjson
import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from fastgw import _core, _core_py
from fastgw.messages import location_update

IMPLS = pytest.mark.parametrize("core", [_core, _core_py], ids=["cython", "python"])
STAMP = "2026-11-29T09:20:00.123Z"


def parse_frames(data: bytes, extensions: list[Any] | None = None) -> list[Frame]:
    """Every frame in ``data`` (server-to-client: unmasked), via websockets' parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:  # bytes not yet consumed by a parsed frame
        parser = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("incomplete frame")
    return frames


class RecordRsv1:
    """A pass-through websockets extension: records each frame's rsv1, then clears it.

    Without an extension claiming it, websockets rejects a set reserved bit;
    this one lets the raw bit be observed through the real parser.
    """

    name = "x-record-rsv1"

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        self.seen.append(frame.rsv1)
        return dataclasses.replace(frame, rsv1=False)


def deflate(payload: bytes) -> bytes:
    """permessage-deflate body of one message (RFC 7692 §7.2.1: raw deflate, tail removed)."""
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


# --------------------------------------------------------------------------- rsv1


@IMPLS
@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_rsv1_sets_the_bit_and_websockets_sees_it(core, size, opcode):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = core.build_frame(payload, opcode, True)
    assert frame[0] == 0x80 | 0x40 | opcode
    assert core.frame_header(size, opcode, rsv1=True) == frame[: len(frame) - size]
    assert frame[1:] == core.build_frame(payload, opcode)[1:]  # only the first byte differs
    record = RecordRsv1()
    (parsed,) = parse_frames(frame, [record])
    assert record.seen == [True]
    assert parsed.fin and parsed.opcode == Opcode(opcode) and parsed.data == payload


@IMPLS
def test_rsv1_false_is_the_default_frame(core):
    assert core.build_frame(b"abc", 0x1, False) == core.build_frame(b"abc") == b"\x81\x03abc"
    assert core.frame_header(3, rsv1=False) == core.frame_header(3) == b"\x81\x03"
    record = RecordRsv1()
    parse_frames(core.build_frame(b"abc"), [record])
    assert record.seen == [False]


@IMPLS
def test_rsv1_frame_decodes_with_permessage_deflate(core):
    payload = orjson.dumps({"type": "channel_message", "message": {"speed": 23}} | {"pad": "x" * 400})
    frame = core.build_frame(deflate(payload), 0x1, rsv1=True)
    client_side = PerMessageDeflate(False, False, 15, 15)
    (parsed,) = parse_frames(frame, [client_side])
    assert parsed.opcode is Opcode.TEXT and parsed.data == payload


# --------------------------------------------------------------------------- reduce_location


def sample_location(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        vehicle_id="KA-57-F-1234", route_id="500-D", direction="UP", latitude=12.9716049,
        longitude=77.5946371, speed=23.5, heading=357.6, timestamp=1767000000.123, trip_id="T1",
        next_stop_id="S42", distance_to_next_stop=310.4, confidence=0.92, contributor_count=3,
        quality_score=0.8,
    )
    fields.update(overrides)
    return dict(location_update(**fields))


@IMPLS
@pytest.mark.parametrize(
    "decimals,lat,lon",
    [(4, 12.9716, 77.5946), (5, 12.9716, 77.59464), (0, 13.0, 78.0), (7, 12.9716049, 77.5946371)],
)
def test_reduce_location_rounds_coordinates(core, decimals, lat, lon):
    out = core.reduce_location(sample_location(), decimals, False)
    assert (out["latitude"], out["longitude"]) == (lat, lon)
    assert isinstance(out["latitude"], float)


@IMPLS
@pytest.mark.parametrize(
    "heading,expected",
    [(357.6, 0), (2.4, 0), (2.6, 5), (7.5, 10), (12.5, 10), (87.5, 90), (-2.6, 355), (360.0, 0),
     (720.1, 0), (90, 90), (181, 180)],
)
def test_reduce_location_heading_in_5_degree_steps(core, heading, expected):
    # 7.5/5 = 1.5 → 2 and 12.5/5 = 2.5 → 2: Python's round goes half to even
    out = core.reduce_location(sample_location(heading=heading), 4, False)
    assert out["heading"] == expected and type(out["heading"]) is int


@IMPLS
@pytest.mark.parametrize("speed,expected", [(23.5, 24), (22.5, 22), (0.4, 0), (-1.5, -2), (30, 30), (99.99, 100)])
def test_reduce_location_speed_to_int_half_even(core, speed, expected):
    out = core.reduce_location(sample_location(speed=speed), 4, False)
    assert out["speed"] == expected and type(out["speed"]) is int


@IMPLS
def test_reduce_location_drops_non_essential_fields_and_keeps_order(core):
    message = sample_location()
    out = core.reduce_location(message, 4, drop_confidence=False)
    assert "contributor_count" not in out and out["confidence"] == 0.92
    assert out["metadata"] == {"source": "simulator"}
    assert list(out) == [k for k in message if k != "contributor_count"]

    slow = core.reduce_location(message, 4, drop_confidence=True)
    assert list(slow) == [k for k in message if k not in ("contributor_count", "confidence")]
    # everything not named by the rules is passed through untouched
    for key in ("type", "vehicle_id", "route_id", "direction", "trip_id", "accuracy", "next_stop_id",
                "distance_to_next_stop", "data_freshness", "timestamp"):
        assert slow[key] is message[key]


@IMPLS
def test_reduce_location_never_mutates_the_input(core):
    message = sample_location()
    before = copy.deepcopy(message)
    out = core.reduce_location(message, 4, True)
    assert message == before
    assert out is not message and out["metadata"] is not message["metadata"]
    out["metadata"]["extra"] = 1  # the copy is independent of the input
    assert message == before


@IMPLS
@pytest.mark.parametrize(
    "metadata,expected",
    [
        ({"source": "gtfs-rt", "quality_score": 0.5}, {"source": "gtfs-rt"}),
        ({"source": "gtfs-rt"}, {"source": "gtfs-rt"}),
        ({"quality_score": 0.5}, None),  # nothing left: dropped
        ({}, None),
        ("not-a-dict", "not-a-dict"),
        (None, None),
    ],
)
def test_reduce_location_metadata(core, metadata, expected):
    message = {"type": "location_update", "metadata": metadata, "speed": 1.0}
    out = core.reduce_location(message, 4, False)
    if expected is None and metadata is not None:  # an emptied dict: the key goes
        assert list(out) == ["type", "speed"]
    else:  # kept in place (a non-dict value as it was)
        assert list(out) == ["type", "metadata", "speed"] and out["metadata"] == expected


@IMPLS
def test_reduce_location_missing_keys_stay_missing(core):
    assert core.reduce_location({"type": "location_update"}, 4, True) == {"type": "location_update"}
    assert core.reduce_location({}, 4, True) == {}
    out = core.reduce_location({"vehicle_id": "V", "heading": 2.6}, 4, True)
    assert out == {"vehicle_id": "V", "heading": 5}


@IMPLS
@pytest.mark.parametrize("bad", [None, "12.97", [1.0], {"x": 1}, math.nan, math.inf, -math.inf])
def test_reduce_location_leaves_non_numbers_unchanged(core, bad):
    message = {"latitude": bad, "longitude": bad, "speed": bad, "heading": bad}
    out = core.reduce_location(message, 4, False)
    assert all(out[key] is bad for key in message)


@IMPLS
def test_strip_fields(core):
    message = {"type": "stop_arrival", "stop_id": "S1", "debug": 1, "eta": 30, "trace": [1]}
    before = dict(message)
    out = core.strip_fields(message, ("debug", "trace", "absent"))
    assert out == {"type": "stop_arrival", "stop_id": "S1", "eta": 30} and list(out) == ["type", "stop_id", "eta"]
    assert message == before and out is not message
    assert core.strip_fields(message, ()) == message


# --------------------------------------------------------------------------- build_batch


def encoded(n: int, size: int = 40) -> list[bytes]:
    return [orjson.dumps({"type": "channel_message", "n": i, "pad": "x" * size}) for i in range(n)]


@IMPLS
def test_build_batch_exact_bytes(core):
    assert core.build_batch([b'{"a":1}', b'{"b":2}'], "T") == (
        b'{"type":"batched_messages","batches":[{"a":1},{"b":2}],"total_messages":2,"batched_at":"T"}'
    )
    assert core.build_batch([], "T") == (
        b'{"type":"batched_messages","batches":[],"total_messages":0,"batched_at":"T"}'
    )


@IMPLS
@pytest.mark.parametrize("count", [1, 2, 10, 120])
@pytest.mark.parametrize("stamp", [STAMP, 'quote " and \\ backslash', "ಬೆಂಗಳೂರು", "tab\there"])
def test_build_batch_parses_to_the_envelope(core, count, stamp):
    items = encoded(count)
    batch = orjson.loads(core.build_batch(items, stamp))
    assert batch == {
        "type": "batched_messages",
        "batches": [orjson.loads(item) for item in items],
        "total_messages": count,
        "batched_at": stamp,
    }
    assert list(batch) == ["type", "batches", "total_messages", "batched_at"]


# --------------------------------------------------------------------------- Batcher


@IMPLS
def test_batcher_attributes(core):
    transport = object()
    batcher = core.Batcher(transport, 4096, True)
    assert batcher.transport is transport and batcher.limit == 4096 and batcher.envelope is True
    assert batcher.pending == 0 and batcher.take(STAMP) is None


@IMPLS
def test_batcher_conflates_same_key_in_place(core):
    batcher = core.Batcher(None, 1 << 20, False)
    a1, b1, a2, c1, a3 = (core.build_frame(x) for x in (b"A1", b"B1", b"A2", b"C1", b"A3"))
    assert batcher.add(a1, "vehicle-A") is True  # was empty: the caller schedules a flush
    assert batcher.add(b1, "vehicle-B") is False
    assert batcher.add(a2, "vehicle-A") is False  # replaces a1 at position 0
    assert batcher.add(c1, None) is False
    assert batcher.add(a3, "vehicle-A") is False
    assert batcher.pending == 3
    assert batcher.take(STAMP) == a3 + b1 + c1


@IMPLS
def test_batcher_none_key_never_conflates(core):
    batcher = core.Batcher(None, 1 << 20, False)
    frames = [core.build_frame(b"x%d" % i) for i in range(4)]
    for frame in frames:
        batcher.add(frame, None)
    assert batcher.pending == 4 and batcher.take(STAMP) == b"".join(frames)


@IMPLS
def test_batcher_keys_compare_by_equality(core):
    batcher = core.Batcher(None, 1 << 20, False)
    batcher.add(b"1", ("route:500-D:UP", "KA-01"))
    batcher.add(b"2", ("route:500-D:UP", "KA-01"))  # an equal tuple, another object
    batcher.add(b"3", ("route:500-D:DOWN", "KA-01"))  # same vehicle, other channel: kept
    assert batcher.take(STAMP) == b"23"


@IMPLS
def test_batcher_take_resets_items_and_keys(core):
    batcher = core.Batcher(None, 1 << 20, False)
    batcher.add(b"old", "k")
    assert batcher.take(STAMP) == b"old"
    assert batcher.pending == 0 and batcher.take(STAMP) is None
    assert batcher.add(b"new", "k") is True  # the key was forgotten: appended, batcher was empty
    assert batcher.add(b"other", "j") is False
    assert batcher.take(STAMP) == b"newother"


@IMPLS
def test_batcher_envelope_mode(core):
    items = encoded(3)
    batcher = core.Batcher(None, 1 << 20, True)
    batcher.add(items[0], "a")
    # a lone item is sent as its own frame, without the batched_messages envelope
    assert batcher.take(STAMP) == core.build_frame(items[0])
    for item in items:
        batcher.add(item, None)
    data = batcher.take(STAMP)
    assert data == core.build_frame(core.build_batch(items, STAMP))
    (frame,) = parse_frames(data)
    batch = orjson.loads(frame.data)
    assert frame.opcode is Opcode.TEXT and batch["total_messages"] == 3 and batch["batched_at"] == STAMP


@IMPLS
def test_batcher_take_resets_even_when_the_envelope_fails(core):
    batcher = core.Batcher(None, 1 << 20, True)
    batcher.add(b"{}", None)
    batcher.add(b"{}", None)
    with pytest.raises(TypeError):  # orjson.JSONEncodeError: a lone surrogate
        batcher.take("\ud800")
    assert batcher.pending == 0  # dropped, rather than failing again at every flush


@IMPLS
def test_batcher_rejects_unhashable_keys_without_queueing(core):
    batcher = core.Batcher(None, 1 << 20, False)
    with pytest.raises(TypeError):
        batcher.add(b"x", ["unhashable"])
    assert batcher.pending == 0


@IMPLS
def test_enqueue_returns_only_newly_non_empty_batchers(core):
    batchers = [core.Batcher(None, 1 << 20, False) for _ in range(4)]
    batchers[1].add(b"already", None)
    batchers[3].add(b"already", None)
    woke = core.enqueue(b"m1", batchers, "k")
    assert woke == [batchers[0], batchers[2]] and all(w is b for w, b in zip(woke, [batchers[0], batchers[2]]))
    assert core.enqueue(b"m2", batchers, "k") == []  # conflated everywhere
    assert [b.pending for b in batchers] == [1, 2, 1, 2]
    assert [b.take(STAMP) for b in batchers] == [b"m2", b"alreadym2", b"m2", b"alreadym2"]
    assert core.enqueue(b"m3", [], None) == []


# --------------------------------------------------------------------------- flush over sockets


class CountingTransport:
    """Delegates to a real transport, counting ``write`` calls (to check "one write")."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.inner = transport
        self.writes = 0

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)


async def connected(count: int) -> list[tuple[CountingTransport, socket.socket]]:
    loop = asyncio.get_running_loop()
    pairs = []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        pairs.append((CountingTransport(transport), theirs))
    return pairs


def received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


def close_all(pairs: list[tuple[CountingTransport, socket.socket]]) -> None:
    for transport, peer in pairs:
        transport.inner.close()
        peer.close()


@IMPLS
async def test_flush_writes_once_per_connection_and_reports_overflow(core):
    pairs = await connected(4)
    frames = [core.build_frame(b'{"n":%d}' % i) for i in range(3)]
    joined = b"".join(frames)
    limits = [1 << 20, len(joined) - 1, 1 << 20, 1 << 20]  # #1 cannot take the batch
    batchers = [core.Batcher(t, limit, False) for (t, _), limit in zip(pairs, limits)]
    for frame in frames:
        core.enqueue(frame, batchers, None)
    pairs[3][0].inner.close()  # #3 closes under us: uvloop raises RuntimeError on write
    await asyncio.sleep(0.01)

    written, overflowed = core.flush(batchers, STAMP)
    assert (written, overflowed) == (2, [1])
    for index in (0, 2):
        transport, peer = pairs[index]
        assert transport.writes == 1 and received(peer) == joined
    assert pairs[1][0].writes == 0 and received(pairs[1][1]) == b""
    assert all(b.pending == 0 for b in batchers)  # the overflowed queue is dropped too
    assert core.flush(batchers, STAMP) == (0, [])  # nothing queued: nothing written
    close_all(pairs)


@IMPLS
async def test_flush_envelope_batch_is_one_text_frame(core):
    pairs = await connected(2)
    items = encoded(5, size=400)
    batchers = [core.Batcher(t, 1 << 20, True) for t, _ in pairs]
    for item in items:
        core.enqueue(item, batchers[:1], None)
    core.enqueue(items[0], batchers[1:], None)

    assert core.flush(batchers, STAMP) == (2, [])
    (frame,) = parse_frames(received(pairs[0][1]))
    assert orjson.loads(frame.data) == {
        "type": "batched_messages", "batches": [orjson.loads(i) for i in items], "total_messages": 5,
        "batched_at": STAMP,
    }
    (single,) = parse_frames(received(pairs[1][1]))
    assert single.data == items[0]
    close_all(pairs)


@IMPLS
async def test_flush_counts_already_buffered_bytes(core):
    class Buffered:
        def __init__(self, size: int) -> None:
            self.size, self.data = size, []

        def get_write_buffer_size(self) -> int:
            return self.size

        def write(self, data: bytes) -> None:
            self.data.append(data)

    transports = [Buffered(0), Buffered(90), Buffered(91)]
    batchers = [core.Batcher(t, 100, False) for t in transports]
    core.enqueue(b"x" * 10, batchers, None)
    # 90 + 10 == limit is still fine; 91 + 10 is over
    assert core.flush(batchers, STAMP) == (2, [2])
    assert [t.data for t in transports] == [[b"x" * 10], [b"x" * 10], []]
