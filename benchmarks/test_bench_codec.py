"""Per-message encode + frame cost, the work done once per publish before any write.

``encode_and_frame``: build the ``channel_message`` envelope around the
benchmark's ~330-byte ``location_update``, serialise it (~460 bytes) and frame
it as one unmasked text frame:

* ``cython``: ``fastgw.messages.encode`` (orjson) + ``fastgw._core.build_frame``;
* ``python``: the same encode + ``fastgw._core_py.build_frame`` (pure-Python twin);
* ``naive-aiohttp``: ``json.dumps`` + ``str.encode`` + aiohttp's own
  ``WebSocketWriter.send_frame`` (what ``ws.send_str`` does per message) into a
  capturing transport;
* ``naive-struct``: ``json.dumps`` + ``str.encode`` + a ``struct`` header.

``frame_only``: the framing step alone on the same encoded bytes.

Both modules are imported directly (not through ``fastgw.core``), so one run
measures both regardless of ``FASTGW_NO_EXTENSIONS``. Benchmarks measure; the
only assertions check that every variant produces the same frame.
"""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from fastgw import _core_py
from fastgw.messages import encode

from _harness import CHANNEL, bench_payload  # benchmarks/ is on sys.path (conftest.py)

try:
    from fastgw import _core
except ImportError:  # extension not built: the cython cases are skipped, the rest still run
    _core = None

try:  # aiohttp's writer is public as aiohttp.http_websocket.WebSocketWriter
    from aiohttp.http_websocket import WebSocketWriter, WSMsgType
except ImportError:  # pragma: no cover - very old or very new aiohttp
    WebSocketWriter = None
    WSMsgType = None

PAYLOAD = bench_payload()
TIMESTAMP = "2026-11-29T09:20:00.123Z"
MESSAGE_ID = "5f3a9c1e-2bq"


def envelope() -> dict:
    return {"type": "channel_message", "channel": CHANNEL, "message": PAYLOAD, "timestamp": TIMESTAMP,
            "messageId": MESSAGE_ID}


# ----------------------------------------------------------------- baselines

_HDR2 = struct.Struct("!BB").pack
_HDR4 = struct.Struct("!BBH").pack
_HDR10 = struct.Struct("!BBQ").pack


def struct_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return _HDR2(0x81, n) + payload
    if n < 65536:
        return _HDR4(0x81, 126, n) + payload
    return _HDR10(0x81, 127, n) + payload


class _CaptureTransport(asyncio.Transport):
    """Keeps the last write; what aiohttp's writer hands the kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.last = b""

    def write(self, data) -> None:
        self.last = data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _NeverPaused:
    _paused = False


def make_aiohttp_framer():
    """``payload -> frame`` through aiohttp's WebSocketWriter.send_frame (server side, no mask).

    An uncompressed send never suspends unless the protocol is paused, so the
    coroutine is driven to completion with one ``send(None)``: no event loop
    cost in the measurement.
    """
    if WebSocketWriter is None:
        return None
    transport = _CaptureTransport()
    writer = WebSocketWriter(_NeverPaused(), transport, use_mask=False)
    text = WSMsgType.TEXT

    def frame(payload: bytes) -> bytes:
        coro = writer.send_frame(payload, text)
        try:
            coro.send(None)
        except StopIteration:
            pass
        else:  # pragma: no cover - would mean aiohttp started awaiting here
            coro.close()
            raise RuntimeError("aiohttp send_frame suspended")
        return bytes(transport.last)

    return frame


aiohttp_frame = make_aiohttp_framer()


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


# ----------------------------------------------------------------- variants

def _cython_encode_and_frame() -> bytes:
    return _core.build_frame(encode(envelope()))


def _python_encode_and_frame() -> bytes:
    return _core_py.build_frame(encode(envelope()))


def _naive_aiohttp_encode_and_frame() -> bytes:
    return aiohttp_frame(_dumps(envelope()).encode("utf-8"))


def _naive_struct_encode_and_frame() -> bytes:
    return struct_frame(_dumps(envelope()).encode("utf-8"))


ENCODE_AND_FRAME = {
    "cython": _cython_encode_and_frame,
    "python": _python_encode_and_frame,
    "naive-aiohttp": _naive_aiohttp_encode_and_frame,
    "naive-struct": _naive_struct_encode_and_frame,
}

ENCODED = encode(envelope())
FRAME_ONLY = {
    "cython": lambda: _core.build_frame(ENCODED),
    "python": lambda: _core_py.build_frame(ENCODED),
    "aiohttp": lambda: aiohttp_frame(ENCODED),
    "struct": lambda: struct_frame(ENCODED),
}


def _skip_if_missing(name: str) -> None:
    if name == "cython" and _core is None:
        pytest.skip("fastgw._core is not built (pip install -e . --no-build-isolation)")
    if "aiohttp" in name and aiohttp_frame is None:
        pytest.skip("aiohttp.http_websocket.WebSocketWriter not available")


EXPECTED = struct_frame(ENCODED)


@pytest.mark.parametrize("impl", list(ENCODE_AND_FRAME))
def test_encode_and_frame(benchmark, impl):
    _skip_if_missing(impl)
    benchmark.group = "codec: envelope encode + frame"
    fn = ENCODE_AND_FRAME[impl]
    frame = benchmark(fn)
    # Same bytes on the wire whatever the encoder (ASCII payload, compact separators).
    assert frame == EXPECTED
    benchmark.extra_info.update({"frame_bytes": len(frame), "payload_bytes": len(ENCODED),
                                 "location_update_bytes": len(encode(PAYLOAD))})


@pytest.mark.parametrize("impl", list(FRAME_ONLY))
def test_frame_only(benchmark, impl):
    _skip_if_missing(impl)
    benchmark.group = "codec: frame only"
    frame = benchmark(FRAME_ONLY[impl])
    assert frame == EXPECTED
    benchmark.extra_info["frame_bytes"] = len(frame)
