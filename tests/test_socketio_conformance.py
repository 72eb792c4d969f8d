"""``python -m fastgw socketio-conformance`` against the cases of the official protocol test suites.

The Socket.IO project publishes two black-box suites (socket.io repository,
``docs/engine.io-protocol/v4-test-suite`` and ``docs/socket.io-protocol/v5-test-suite``) that run
against a reference server on port 3000. CI cannot fetch them, so this module asserts the same
behaviour, case by case, over real loopback sockets: the conformance app runs as a subprocess
(the same command a person runs before pointing the official suites at it), HTTP long-polling
goes through aiohttp's client, WebSocket through ``ws_connect``.

What the app serves (the reference server of the suites): pingInterval 300 ms, pingTimeout
200 ms, maxPayload 1,000,000, connectTimeout 1,000 ms; ``/engine.io/`` echoes every message;
``/socket.io/`` emits ``auth`` (the handshake auth, ``{}`` without one) on connecting to ``/`` or
``/custom``, re-emits ``message`` as ``message-back`` and acknowledges ``message-with-ack`` with
the arguments it got; any other namespace is refused with "Invalid namespace".

Where an official case races two connections against each other (a request "probably" arriving
after another), the tests here order them explicitly instead, so that they cannot flake. Where an
official case can pass for an incidental reason, the check here is on what the case is named for:
a WebSocket closed "upon invalid packet" or "forcefully" must close while its pings are answered
(the official cases also pass on the ping timeout that follows), and a POST of an invalid packet
must be answered 400 (the official case swallows that assertion in its try/catch). A second
WebSocket for an upgraded sid must be accepted and then closed, as the Node server does: the
official case fails on an HTTP 400, which its Node client raises as an unhandled error.

Set ``SIO_CONFORMANCE_URL`` (e.g. ``http://127.0.0.1:3000``) to run these checks against an
already running server instead of starting one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import orjson
import pytest

PING_INTERVAL = 0.3  # seconds; the handshake announces milliseconds
PING_TIMEOUT = 0.2
MAX_PAYLOAD = 1_000_000
CONNECT_TIMEOUT = 1.0
STEP = 5.0  # upper bound of any single wait in this module
STARTUP = 15.0  # upper bound for the app to accept connections
SLACK = 0.05  # added to server-side deadlines before checking their effect (timer jitter)
PROMPTLY = 0.8  # a close "because of X" must come sooner than the app's own 1 s connectTimeout

EIO = "/engine.io/"
SIO = "/socket.io/"
BOTH_PATHS = pytest.mark.parametrize("path", [EIO, SIO], ids=["engine.io", "socket.io"])

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the app under test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after a bounded wait."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a running conformance app, stopped after the module."""
    external = os.environ.get("SIO_CONFORMANCE_URL")
    if external:
        yield external.rstrip("/")
        return
    port = _free_port()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads while tests run
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastgw", "socketio-conformance", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            deadline = time.monotonic() + STARTUP
            while not _accepts(port):
                if proc.poll() is not None:
                    pytest.fail(f"socketio-conformance exited with {proc.returncode}:\n{output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"socketio-conformance not accepting on port {port} within {STARTUP:g}s:\n{output()}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=STEP)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


# --------------------------------------------------------------------------- HTTP long-polling


def url(base: str, path: str, **query: str) -> str:
    """The endpoint with its query, in the order the suites write it (``EIO``, ``transport``, …)."""
    return f"{base}{path}" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def polling(base: str, path: str, sid: str | None = None, **extra: str) -> str:
    query = {"EIO": "4", "transport": "polling", **({"sid": sid} if sid else {}), **extra}
    return url(base, path, **query)


async def get(http: aiohttp.ClientSession, target: str) -> tuple[int, str]:
    async with http.get(target) as resp:
        return resp.status, (await resp.read()).decode()


async def post(http: aiohttp.ClientSession, target: str, body: str | None = None) -> tuple[int, str]:
    async with http.post(target, data=body) as resp:
        return resp.status, (await resp.read()).decode()


async def open_polling(http: aiohttp.ClientSession, base: str, path: str) -> str:
    """A new polling session; its sid."""
    status, body = await get(http, polling(base, path))
    assert status == 200, body
    assert body.startswith("0"), body
    return orjson.loads(body[1:])["sid"]


def check_open_packet(text: str | bytes | None, upgrades: list[str]) -> None:
    assert isinstance(text, str) and text.startswith("0"), text
    value = orjson.loads(text[1:])
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert isinstance(value["sid"], str) and value["sid"]
    assert value["upgrades"] == upgrades
    assert value["pingInterval"] == int(PING_INTERVAL * 1000)
    assert value["pingTimeout"] == int(PING_TIMEOUT * 1000)
    assert value["maxPayload"] == MAX_PAYLOAD


async def assert_get_status(http: aiohttp.ClientSession, target: str, expected: int) -> None:
    """A GET on ``target`` is answered with ``expected`` (the response body in the failure message)."""
    status, body = await get(http, target)
    assert status == expected, (status, body)


# --------------------------------------------------------------------------- WebSocket

CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


class WS:
    """One WebSocket to the app: ``recv`` returns a text or binary frame's payload, ``None`` once closed."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def recv(self, *, skip_pings: bool = True, timeout: float = STEP) -> str | bytes | None:
        """The next frame; with ``skip_pings`` an Engine.IO ping ("2") is answered ("3") and skipped."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type in CLOSED:
                return None
            if skip_pings and msg.data == "2":
                await self.ws.send_str("3")
                continue
            return msg.data

    async def recv_closed(self, *, pong: bool = False, timeout: float = STEP) -> list[str | bytes]:
        """Wait (bounded) for the app to close; the frames seen before that. ``pong`` answers pings."""
        seen: list[str | bytes] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"still open after {timeout:g}s; frames seen: {seen!r}")
            try:
                data = await self.recv(skip_pings=False, timeout=left)
            except asyncio.TimeoutError:
                raise AssertionError(f"still open after {timeout:g}s; frames seen: {seen!r}") from None
            if data is None:
                return seen
            seen.append(data)
            if pong and data == "2":
                await self.ws.send_str("3")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2.0)


class Sockets:
    """Opens WebSockets on one ClientSession and closes them all at the end of a test."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base.replace("http", "ws", 1)
        self.opened: list[WS] = []

    def target(self, path: str, **query: str) -> str:
        return url(self.base, path, **query)

    async def connect(self, path: str, **query: str) -> WS:
        """Upgrade to WebSocket (no Engine.IO frame read yet)."""
        ws = await asyncio.wait_for(
            self.http.ws_connect(self.target(path, **query), autoping=True, heartbeat=None), STEP)
        self.opened.append(WS(ws))
        return self.opened[-1]

    async def open(self, path: str, sid: str | None = None) -> WS:
        """A WebSocket Engine.IO session (or a probe for ``sid``); for a new session its open packet is read."""
        query = {"EIO": "4", "transport": "websocket", **({"sid": sid} if sid else {})}
        ws = await self.connect(path, **query)
        if sid is None:
            check_open_packet(await ws.recv(skip_pings=False), upgrades=[])
        return ws

    async def refused(self, path: str, **query: str) -> None:
        """The app refuses the upgrade (an HTTP error), or closes the socket without opening a session."""
        try:
            ws = await self.connect(path, **query)
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status >= 400, exc
            return
        except aiohttp.ClientConnectionError:
            return
        seen = await ws.recv_closed()
        assert not any(isinstance(f, str) and f.startswith("0") for f in seen), seen

    async def accepted_then_closed(self, path: str, **query: str) -> None:
        """The app completes the WebSocket handshake, then closes the socket at once, sending nothing of
        a session. (An HTTP error is not enough here: the official suite's Node client reports a refused
        upgrade as an unhandled error where the case does not expect one; the Node server accepts, then closes.)"""
        try:
            ws = await self.connect(path, **query)
        except aiohttp.WSServerHandshakeError as exc:
            raise AssertionError(f"upgrade refused with HTTP {exc.status}; expected 101 then a close") from None
        seen = await ws.recv_closed(timeout=PROMPTLY)
        assert not any(isinstance(f, str) and f[:1] in ("0", "3") for f in seen), seen

    async def close_all(self) -> None:
        for ws in self.opened:
            await ws.close()


@pytest.fixture
async def sockets(http, base_url) -> AsyncIterator[Sockets]:
    s = Sockets(http, base_url)
    yield s
    await s.close_all()


async def upgraded(sockets: Sockets, http: aiohttp.ClientSession, base: str, path: str) -> tuple[str, WS]:
    """A polling session moved to WebSocket: probe, the pending GET ended with a noop, upgrade."""
    sid = await open_polling(http, base, path)
    ws = await sockets.open(path, sid)
    await ws.send("2probe")
    assert await ws.recv() == "3probe"
    assert await get(http, polling(base, path, sid)) == (200, "6")
    await ws.send("5")
    return sid, ws


# --------------------------------------------------------------------------- Socket.IO helpers


async def sio_connect(sockets: Sockets) -> WS:
    """A WebSocket Engine.IO session on /socket.io/ connected to ``/`` (its handshake and ``auth`` read)."""
    ws = await sockets.open(SIO)
    await ws.send("40")
    handshake = await ws.recv()
    assert isinstance(handshake, str) and handshake.startswith("40"), handshake
    auth = await ws.recv()
    assert isinstance(auth, str) and auth.startswith("42"), auth
    return ws


def check_connect_ack(text: str | bytes | None, prefix: str) -> None:
    """``text`` is a CONNECT packet (``prefix`` = "40" or "40/ns,") carrying exactly ``{"sid": <str>}``."""
    assert isinstance(text, str) and text.startswith(prefix), text
    payload = orjson.loads(text[len(prefix):])
    assert set(payload) == {"sid"} and isinstance(payload["sid"], str) and payload["sid"], payload


PLACEHOLDERS = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}'


# =========================================================================== Engine.IO: handshake


@BOTH_PATHS
async def test_polling_handshake(http, base_url, path):
    status, body = await get(http, polling(base_url, path))
    assert status == 200, body
    check_open_packet(body, upgrades=["websocket"])


@BOTH_PATHS
async def test_polling_handshake_bad_eio(http, base_url, path):
    assert (await get(http, url(base_url, path, transport="polling")))[0] == 400
    assert (await get(http, url(base_url, path, EIO="abc", transport="polling")))[0] == 400


@BOTH_PATHS
async def test_polling_handshake_bad_transport(http, base_url, path):
    assert (await get(http, url(base_url, path, EIO="4")))[0] == 400
    assert (await get(http, url(base_url, path, EIO="4", transport="abc")))[0] == 400


@BOTH_PATHS
async def test_polling_handshake_bad_method(http, base_url, path):
    assert (await post(http, polling(base_url, path)))[0] == 400
    async with http.put(polling(base_url, path)) as resp:
        assert resp.status == 400


@BOTH_PATHS
async def test_websocket_handshake(sockets, path):
    await sockets.open(path)  # reads and checks the open packet: upgrades [] on a WebSocket


@BOTH_PATHS
async def test_websocket_handshake_bad_eio(sockets, path):
    await sockets.refused(path, transport="websocket")
    await sockets.refused(path, EIO="abc", transport="websocket")


@BOTH_PATHS
async def test_websocket_handshake_bad_transport(sockets, path):
    await sockets.refused(path, EIO="4")
    await sockets.refused(path, EIO="4", transport="abc")


# =========================================================================== Engine.IO: messages (echo)


@pytest.mark.parametrize("payload", [
    "4hello",
    "4test1\x1e4test2\x1e4test3",
    "4hello\x1eb" + base64.b64encode(bytes([1, 2, 3, 4])).decode(),  # "b" + base64: a binary packet
], ids=["one-text", "several-text", "text-and-binary"])
async def test_polling_echo(http, base_url, payload):
    sid = await open_polling(http, base_url, EIO)
    assert await post(http, polling(base_url, EIO, sid), payload) == (200, "ok")
    assert await get(http, polling(base_url, EIO, sid)) == (200, payload)


async def test_polling_invalid_packet_closes_session(http, base_url):
    sid = await open_polling(http, base_url, EIO)
    try:
        status, body = await post(http, polling(base_url, EIO, sid), "abc")
    except aiohttp.ClientError:
        pass  # dropping the request is as good as refusing it
    else:
        assert status == 400, body
    await assert_get_status(http, polling(base_url, EIO, sid), 400)


async def test_polling_duplicate_get_closes_session(http, base_url):
    sid = await open_polling(http, base_url, EIO)
    first = asyncio.ensure_future(get(http, polling(base_url, EIO, sid)))
    await asyncio.sleep(0.05)  # the first GET is pending on the server before the second one
    second_status, second_body = await get(http, polling(base_url, EIO, sid, t="burst"))
    assert second_status in (400, 500), (second_status, second_body)  # the Node server says 500
    assert await asyncio.wait_for(first, STEP) == (200, "1")  # the pending GET ends with a close packet
    await assert_get_status(http, polling(base_url, EIO, sid), 400)


async def test_polling_cancelled_get_closes_session(base_url, http):
    sid = await open_polling(http, base_url, EIO)
    async with aiohttp.ClientSession() as doomed:  # its own connection, closed with the session
        pending = asyncio.ensure_future(get(doomed, polling(base_url, EIO, sid)))
        await asyncio.sleep(0.05)
        assert not pending.done()
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    await assert_get_status(http, polling(base_url, EIO, sid), 400)


async def test_websocket_echo_text(sockets):
    ws = await sockets.open(EIO)
    await ws.send("4hello")
    assert await ws.recv() == "4hello"


async def test_websocket_echo_binary(sockets):
    ws = await sockets.open(EIO)
    await ws.send(bytes([1, 2, 3, 4]))
    assert await ws.recv() == bytes([1, 2, 3, 4])


async def test_websocket_invalid_packet_closes(sockets):
    ws = await sockets.open(EIO)
    await ws.send("abc")
    await ws.recv_closed(pong=True, timeout=PROMPTLY)  # pings answered: the packet is the reason


# =========================================================================== Engine.IO: heartbeat


@BOTH_PATHS
async def test_polling_ping_pong(http, base_url, path):
    sid = await open_polling(http, base_url, path)
    for _ in range(3):
        started = time.monotonic()
        assert await get(http, polling(base_url, path, sid)) == (200, "2")
        assert time.monotonic() - started > PING_INTERVAL / 2  # the server pings at its interval
        status, _ = await post(http, polling(base_url, path, sid), "3")
        assert status == 200


@BOTH_PATHS
async def test_polling_ping_timeout_closes_session(http, base_url, path):
    sid = await open_polling(http, base_url, path)
    await asyncio.sleep(PING_INTERVAL + PING_TIMEOUT + SLACK)  # a ping went unanswered
    await assert_get_status(http, polling(base_url, path, sid), 400)


@BOTH_PATHS
async def test_websocket_ping_pong(sockets, path):
    ws = await sockets.open(path)
    for _ in range(3):
        assert await ws.recv(skip_pings=False) == "2"
        await ws.send("3")
    if path == EIO:  # still open after three rounds
        await ws.send("4still-there")
        assert await ws.recv() == "4still-there"


@BOTH_PATHS
async def test_websocket_ping_timeout_closes(sockets, path):
    ws = await sockets.open(path)
    started = time.monotonic()
    seen = await ws.recv_closed()  # no pong is ever sent
    assert seen == ["2"], seen
    assert time.monotonic() - started > PING_INTERVAL  # not before the ping went unanswered


# =========================================================================== Engine.IO: close


@BOTH_PATHS
async def test_polling_forced_close(http, base_url, path):
    sid = await open_polling(http, base_url, path)
    pending = asyncio.ensure_future(get(http, polling(base_url, path, sid)))
    await asyncio.sleep(0.05)  # the GET waits on the server when the close packet arrives
    status, body = await post(http, polling(base_url, path, sid), "1")
    assert status == 200, body
    assert await asyncio.wait_for(pending, STEP) == (200, "6")
    await assert_get_status(http, polling(base_url, path, sid), 400)


@BOTH_PATHS
async def test_websocket_forced_close(sockets, path):
    ws = await sockets.open(path)
    await ws.send("1")
    await ws.recv_closed(pong=True, timeout=PROMPTLY)  # pings answered: the close packet is the reason


# =========================================================================== Engine.IO: upgrade


async def carries_traffic(ws: WS, path: str, tag: str = "hello") -> None:
    """A round trip on the upgraded WebSocket (so the app has also processed what was sent before):
    an echo on /engine.io/, a namespace connection on /socket.io/. A noop ("6") here fails it."""
    if path == EIO:
        await ws.send(f"4{tag}")
        assert await ws.recv() == f"4{tag}"
    else:
        await ws.send("40")
        check_connect_ack(await ws.recv(), "40")
        assert await ws.recv() == '42["auth",{}]'
        await ws.send(f'42["message","{tag}"]')
        assert await ws.recv() == f'42["message-back","{tag}"]'


@BOTH_PATHS
async def test_upgrade(sockets, http, base_url, path):
    _, ws = await upgraded(sockets, http, base_url, path)
    await carries_traffic(ws, path)


async def test_upgrade_without_waiting_for_the_probe_answer(sockets, http, base_url):
    # the socket.io suite sends "5" right after "2probe", with no GET pending on the polling side
    sid = await open_polling(http, base_url, SIO)
    ws = await sockets.open(SIO, sid)
    await ws.send("2probe")
    await ws.send("5")
    assert await ws.recv() == "3probe"
    await carries_traffic(ws, SIO)
    await assert_get_status(http, polling(base_url, SIO, sid), 400)
    await sockets.accepted_then_closed(SIO, EIO="4", transport="websocket", sid=sid)


@BOTH_PATHS
async def test_polling_refused_after_upgrade(sockets, http, base_url, path):
    sid, ws = await upgraded(sockets, http, base_url, path)
    await carries_traffic(ws, path, "before")
    await assert_get_status(http, polling(base_url, path, sid), 400)
    await ws.send("4after" if path == EIO else '42["message","after"]')
    assert await ws.recv() == ("4after" if path == EIO else '42["message-back","after"]')


@BOTH_PATHS
async def test_second_websocket_refused_after_upgrade(sockets, http, base_url, path):
    sid, ws = await upgraded(sockets, http, base_url, path)
    await carries_traffic(ws, path, "before")
    await sockets.accepted_then_closed(path, EIO="4", transport="websocket", sid=sid)
    await ws.send("4after" if path == EIO else '42["message","after"]')
    assert await ws.recv() == ("4after" if path == EIO else '42["message-back","after"]')


# =========================================================================== Socket.IO: connect


async def test_connect_main_namespace(sockets):
    ws = await sockets.open(SIO)
    await ws.send("40")
    check_connect_ack(await ws.recv(), "40")
    assert await ws.recv() == '42["auth",{}]'


async def test_connect_main_namespace_with_auth(sockets):
    ws = await sockets.open(SIO)
    await ws.send('40{"token":"123"}')
    check_connect_ack(await ws.recv(), "40")
    assert await ws.recv() == '42["auth",{"token":"123"}]'


@pytest.mark.parametrize("packet", ["40/custom,", "40/custom"], ids=["trailing-comma", "no-comma"])
async def test_connect_custom_namespace(sockets, packet):
    ws = await sockets.open(SIO)
    await ws.send(packet)
    check_connect_ack(await ws.recv(), "40/custom,")
    assert await ws.recv() == '42/custom,["auth",{}]'


async def test_connect_custom_namespace_with_auth(sockets):
    ws = await sockets.open(SIO)
    await ws.send('40/custom,{"token":"abc"}')
    check_connect_ack(await ws.recv(), "40/custom,")
    assert await ws.recv() == '42/custom,["auth",{"token":"abc"}]'


async def test_connect_unknown_namespace(sockets):
    ws = await sockets.open(SIO)
    await ws.send("40/random")
    assert await ws.recv() == '44/random,{"message":"Invalid namespace"}'


async def test_connect_invalid_handshake_closes(sockets):
    ws = await sockets.open(SIO)
    await ws.send("4abc")
    await ws.recv_closed(pong=True, timeout=PROMPTLY)


async def test_no_handshake_closes(sockets):
    ws = await sockets.open(SIO)
    await ws.recv_closed()  # (pings unanswered too, as in the official case)


async def test_no_handshake_closes_after_connect_timeout(sockets):
    ws = await sockets.open(SIO)
    started = time.monotonic()
    seen = await ws.recv_closed(pong=True)  # the heartbeat is kept; only the namespace is missing
    assert time.monotonic() - started > CONNECT_TIMEOUT - 0.2, seen
    assert set(seen) <= {"2"}, seen


# =========================================================================== Socket.IO: disconnect


async def test_disconnect_main_namespace(sockets):
    ws = await sio_connect(sockets)
    await ws.send("41")
    assert await ws.recv(skip_pings=False) == "2"  # nothing in reply; the Engine.IO session stays


async def test_connect_then_disconnect_custom_namespace(sockets):
    ws = await sio_connect(sockets)
    await ws.send("40/custom")
    check_connect_ack(await ws.recv(), "40/custom,")
    assert await ws.recv() == '42/custom,["auth",{}]'
    await ws.send("41/custom")
    await ws.send('42["message","message to main namespace"]')
    assert await ws.recv() == '42["message-back","message to main namespace"]'


# =========================================================================== Socket.IO: messages


async def test_event(sockets):
    ws = await sio_connect(sockets)
    await ws.send('42["message",1,"2",{"3":[true]}]')
    assert await ws.recv() == '42["message-back",1,"2",{"3":[true]}]'


async def test_event_with_binary_attachments(sockets):
    ws = await sio_connect(sockets)
    await ws.send(f'452-["message",{PLACEHOLDERS}]')
    await ws.send(bytes([1, 2, 3]))
    await ws.send(bytes([4, 5, 6]))
    assert await ws.recv() == f'452-["message-back",{PLACEHOLDERS}]'
    assert await ws.recv() == bytes([1, 2, 3])
    assert await ws.recv() == bytes([4, 5, 6])


async def test_event_with_ack(sockets):
    ws = await sio_connect(sockets)
    await ws.send('42456["message-with-ack",1,"2",{"3":[false]}]')
    assert await ws.recv() == '43456[1,"2",{"3":[false]}]'


async def test_event_with_binary_attachments_and_ack(sockets):
    ws = await sio_connect(sockets)
    await ws.send(f'452-789["message-with-ack",{PLACEHOLDERS}]')
    await ws.send(bytes([1, 2, 3]))
    await ws.send(bytes([4, 5, 6]))
    assert await ws.recv() == f"462-789[{PLACEHOLDERS}]"
    assert await ws.recv() == bytes([1, 2, 3])
    assert await ws.recv() == bytes([4, 5, 6])


@pytest.mark.parametrize("packet", [
    "4abc",  # unknown packet type
    "42{}",  # an event's payload must be an array
    '42abc["message-with-ack",1,"2",{"3":[false]}]',  # the ack id must be digits
], ids=["unknown-type", "payload-not-array", "bad-ack-id"])
async def test_invalid_packet_after_connect_closes(sockets, packet):
    ws = await sio_connect(sockets)
    await ws.send(packet)
    await ws.recv_closed(pong=True, timeout=PROMPTLY)
