"""The hot path: compiled ``_core`` and pure-Python ``_core_py`` give identical bytes.

Frames are checked against RFC 6455 by an independent decoder (``websockets``'
sans-I/O frame parser); fan-out runs over real connected sockets.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from fastgw import _core, _core_py

SIZES = [0, 1, 125, 126, 127, 300, 65535, 65536, 70_000]


def parse_with_websockets(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_build_frame_identical_and_valid(size, opcode):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    compiled = _core.build_frame(payload, opcode)
    pure = _core_py.build_frame(payload, opcode)
    assert compiled == pure
    assert _core.frame_header(size, opcode) == _core_py.frame_header(size, opcode)
    frame = parse_with_websockets(compiled)
    assert frame.fin and frame.opcode == Opcode(opcode) and frame.data == payload


@pytest.mark.parametrize("code,reason", [(1000, ""), (4008, "slow consumer"), (1001, "é" * 200)])
def test_close_frame_identical_and_valid(code, reason):
    compiled = _core.build_close_frame(code, reason)
    assert compiled == _core_py.build_close_frame(code, reason)
    frame = parse_with_websockets(compiled)
    assert frame.opcode is Opcode.CLOSE and int.from_bytes(frame.data[:2], "big") == code
    assert len(frame.data) <= 125


@pytest.mark.parametrize("impl", [_core, _core_py], ids=["cython", "python"])
async def test_fanout_delivers_and_reports_overflow(impl):
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(4)]
    transports = [(await loop.create_connection(asyncio.Protocol, sock=ours))[0] for ours, _ in pairs]
    frame = impl.build_frame(b'{"type":"channel_message"}')
    transports[3].close()
    await asyncio.sleep(0.01)

    written, overflowed = impl.fanout(frame, transports, len(frame))
    assert (written, overflowed) == (3, [])
    for _ours, theirs in pairs[:3]:
        assert theirs.recv(4096) == frame
    # a limit smaller than one frame overflows every open transport, writes nothing
    written, overflowed = impl.fanout(frame, transports, len(frame) - 1)
    assert (written, overflowed) == (0, [0, 1, 2, 3])
    for t in transports:
        t.close()
    for _ours, theirs in pairs:
        theirs.close()


def test_selector_honours_no_extensions(monkeypatch):
    import importlib
    import sys

    monkeypatch.setenv("FASTGW_NO_EXTENSIONS", "1")
    sys.modules.pop("fastgw.core", None)
    try:
        core = importlib.import_module("fastgw.core")
        assert core.IMPLEMENTATION == "python" and core.fanout is _core_py.fanout
    finally:
        monkeypatch.delenv("FASTGW_NO_EXTENSIONS")
        sys.modules.pop("fastgw.core", None)
        core = importlib.import_module("fastgw.core")
    assert core.IMPLEMENTATION == "cython" and core.fanout is _core.fanout
