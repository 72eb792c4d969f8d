"""The gateway's Socket.IO server (``/socket.io/``) with Socket.IO clients nobody here wrote.

- The official Node client, ``socket.io-client`` (pinned in ``tests/sioclient/package.json``,
  locked in its ``package-lock.json``): ``tests/sioclient/client.mjs`` prints one JSON line
  per thing it sees (``open``, ``upgrade``, ``connect``, ``connect_error``, ``disconnect``,
  ``server`` for every event the server emits, ``ack`` for the reply to an emit) and takes
  JSON commands on stdin (``emit``, ``close``). ``scripts/test`` runs ``npm ci`` there;
  without ``node_modules`` these tests fail, they never skip.
- python-socketio's ``socketio.AsyncClient`` (a test dependency), on the gateway's loop.

What is checked, for both: polling then the upgrade to WebSocket (the default), WebSocket
only, long-polling only; ``auth: {token}``; ``subscribe`` / ``unsubscribe`` with an ack that
is the native reply object (docs/protocol.md); ``channel_message`` events carrying the native
envelope as their first argument (a second one, a recovery offset, may follow); offline
notifications (``queued_message`` ... ``queue_sync_complete``); reconnecting by themselves
after the server drops every Engine.IO session (``gw.socketio.disconnect_all()``), each
message once (and, when the Node client's session was recovered, the one published while it
was away too); a bad or missing token refused with a CONNECT_ERROR (``{"message": ...}``),
not an HTTP or transport failure; a burst of more than 16 messages to a polling
python-socketio client (its Engine.IO client refuses longer payloads). Every wait is
bounded; the Node processes are stopped by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
import socketio

from fastgw.auth import mint_token
from tests.conftest import token, wait_until

ROOT = Path(__file__).resolve().parent.parent
SIOCLIENT_DIR = ROOT / "tests" / "sioclient"
SCRIPT = SIOCLIENT_DIR / "client.mjs"
#: One wait for one thing the client should see (generous: the suite runs on 2 cores).
WAIT = 10.0
#: A client reconnects after reconnectionDelay (1 s) ± 50 % by default; then the handshake.
RECONNECT_WAIT = 15.0
#: The Node script's own bound on its whole run; past it, it exits by itself.
NODE_DEADLINE_MS = 90_000

CHANNEL = "route:335E:UP"
OTHER_CHANNEL = "alerts:all"
USER = "rider42"
NOTIFICATIONS = f"user:{USER}:notifications"


def alert(i: int, route: str = "335E") -> dict:
    return {"type": "service_alert", "alert_id": f"a{i}", "route_id": route, "severity": "info",
            "title": f"alert {i}", "message": "m"}


def note(i: int, user: str = USER) -> dict:
    return {"type": "user_notification", "notification_id": f"n{i}", "user_id": user, "title": f"#{i}", "body": "b"}


def base_url(gw) -> str:
    return f"http://127.0.0.1:{gw.port}"


def assert_subscribed(reply: Any, channel: str, count: int | None = 1, *, public: bool = True) -> None:
    """The ack of ``subscribe``: the native ``subscribed`` reply (docs/protocol.md)."""
    assert isinstance(reply, dict), f"subscribe ack is not an object: {reply!r}"
    assert reply.get("type") == "subscribed" and reply.get("channel") == channel, reply
    if count is not None:
        assert reply.get("subscriberCount") == count, reply
    if public:  # public channels carry their history position
        assert isinstance(reply.get("offset"), str), reply
    else:
        assert "offset" not in reply, reply


def assert_envelope(envelope: Any, channel: str, message: dict, *, public: bool = True) -> None:
    """A ``channel_message`` event's first argument: the native envelope."""
    assert isinstance(envelope, dict), f"channel_message argument is not an object: {envelope!r}"
    assert envelope.get("type") == "channel_message" and envelope.get("channel") == channel, envelope
    assert envelope.get("message") == message, envelope
    assert isinstance(envelope.get("timestamp"), str) and envelope["timestamp"].endswith("Z"), envelope
    assert isinstance(envelope.get("messageId"), str) and envelope["messageId"], envelope
    if public:
        assert isinstance(envelope.get("offset"), str), envelope


async def disconnect_all(gw) -> None:
    """Drop every Engine.IO session from the server side, as a lost network would."""
    sio_server = getattr(gw, "socketio", None)
    assert sio_server is not None and hasattr(sio_server, "disconnect_all"), \
        "the gateway has no socketio.disconnect_all() (the test hook that drops every Engine.IO session)"
    await asyncio.wait_for(sio_server.disconnect_all(), WAIT)


BAD_TOKENS = {
    "garbage": "not-a-jwt",
    "expired": token("u1", ttl=-120),  # past the 30 s leeway
    "wrong-key": mint_token("u1", secret="another-secret-0123456789abcdef012345", ttl=600),
    "missing": None,  # no token, anonymous access off (the test gateway has a key)
}


# --- the Node client -----------------------------------------------------------------


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Socket.IO client tests need Node.js >= 20 (scripts/test checks for it)")
    pinned = json.loads((SIOCLIENT_DIR / "package.json").read_text())["dependencies"]["socket.io-client"]
    installed = SIOCLIENT_DIR / "node_modules" / "socket.io-client" / "package.json"
    if not installed.is_file():
        pytest.fail("tests/sioclient/node_modules is missing socket.io-client: scripts/test installs it "
                    "(cd tests/sioclient && npm ci)")
    version = json.loads(installed.read_text())["version"]
    if version != pinned:
        pytest.fail(f"tests/sioclient/node_modules has socket.io-client {version}, package.json pins {pinned}: "
                    "run npm ci there")
    return node


class NodeClient:
    """One ``client.mjs`` process: its JSON lines, read with bounded waits."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict] = []  # every line, for failure messages
        self._unread: list[dict] = []
        self._stderr: list[str] = []
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace"))

    def transcript(self) -> str:
        lines = "\n".join(json.dumps(line)[:600] for line in self.seen[-40:])
        return f"client.mjs lines (last 40):\n{lines}\nstderr:\n{''.join(self._stderr)[-4000:]}"

    async def expect(self, event: str, where: Callable[[dict], bool] = lambda line: True,
                     timeout: float = WAIT) -> dict:
        """The first unread line with this ``event`` for which ``where`` holds (lines read
        on the way stay unread for later calls)."""
        for i, line in enumerate(self._unread):
            if line["event"] == event and where(line):
                return self._unread.pop(i)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"client.mjs: no {event!r} line within {timeout:g} s\n{self.transcript()}")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except asyncio.TimeoutError:
                continue
            if not raw:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 2)
                pytest.fail(f"client.mjs exited ({self.proc.returncode}) before a {event!r} line\n{self.transcript()}")
            try:
                line = json.loads(raw)
            except ValueError:
                pytest.fail(f"client.mjs printed a line that is not JSON: {raw!r}\n{self.transcript()}")
            self.seen.append(line)
            if line["event"] == event and where(line):
                return line
            self._unread.append(line)

    def unread(self, event: str, where: Callable[[dict], bool] = lambda line: True) -> list[dict]:
        return [line for line in self._unread if line["event"] == event and where(line)]

    async def server_event(self, name: str, where: Callable[[list], bool] = lambda args: True,
                           timeout: float = WAIT) -> dict:
        """The next event ``name`` emitted by the server (its line: ``args``, ``transport``)."""
        return await self.expect("server", lambda line: line["name"] == name and where(line["args"]), timeout)

    async def send(self, command: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await asyncio.wait_for(self.proc.stdin.drain(), WAIT)

    async def call(self, event: str, data: Any, rid: str) -> Any:
        """``socket.timeout(5000).emitWithAck(event, data)``: the ack's value."""
        await self.send({"cmd": "emit", "id": rid, "event": event, "data": data, "timeoutMs": 5000})
        line = await self.expect("ack", lambda line: line["id"] == rid, timeout=WAIT)
        return line["reply"]

    async def close(self) -> None:
        """Ask the script to close its socket and exit; kill it (by pid) if it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send({"cmd": "close"})
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        self._stderr_task.cancel()
        with contextlib.suppress(BaseException):
            await self._stderr_task
        print(self.transcript())  # shown with the test's output when it fails


@pytest.fixture
async def node_client() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await node_client(gw, token=..., transports=[...])`` → a started NodeClient."""
    node = _node()
    started: list[NodeClient] = []

    async def start(gw, **options) -> NodeClient:
        args = {"url": base_url(gw), "deadlineMs": NODE_DEADLINE_MS, **options}
        proc = await asyncio.create_subprocess_exec(
            node, str(SCRIPT), json.dumps(args), cwd=str(SIOCLIENT_DIR),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        client = NodeClient(proc)
        started.append(client)
        await client.expect("ready")
        return client

    yield start
    for client in started:
        await client.close()


async def _node_subscribe_and_receive(gw, client: NodeClient, n: int = 1) -> list[dict]:
    """Subscribe to CHANNEL, publish ``n`` alerts, return their lines (in order)."""
    assert_subscribed(await client.call("subscribe", {"channel": CHANNEL}, "s1"), CHANNEL)
    for i in range(n):
        gw.hub.publish(CHANNEL, alert(i))
    lines = [await client.server_event("channel_message") for _ in range(n)]
    for i, line in enumerate(lines):
        assert_envelope(line["args"][0], CHANNEL, alert(i))
        assert len(line["args"]) <= 2 and all(isinstance(a, str) for a in line["args"][1:]), line
    return lines


async def test_node_default_polling_then_upgrade_to_websocket(start_gateway, node_client):
    gw = await start_gateway()
    client = await node_client(gw, token=token(USER))
    opened = await client.expect("open")
    assert opened["transport"] == "polling"  # the default: the handshake by long-polling
    connected = await client.expect("connect")
    assert connected["id"] and connected["count"] == 1
    upgraded = await client.expect("upgrade")
    assert upgraded["transport"] == "websocket" and upgraded["engineTransport"] == "websocket", upgraded
    assert not client.unread("upgradeError")
    lines = await _node_subscribe_and_receive(gw, client, n=3)
    assert all(line["transport"] == "websocket" for line in lines)
    ids = [line["args"][0]["messageId"] for line in lines]
    assert len(set(ids)) == 3


async def test_node_websocket_only(start_gateway, node_client):
    gw = await start_gateway()
    client = await node_client(gw, token=token(USER), transports=["websocket"])
    assert (await client.expect("open"))["transport"] == "websocket"
    assert (await client.expect("connect"))["transport"] == "websocket"
    lines = await _node_subscribe_and_receive(gw, client, n=3)
    assert all(line["transport"] == "websocket" for line in lines)
    # someone else's notifications: the native error reply as the ack
    refused = await client.call("subscribe", {"channel": "user:someone-else:notifications"}, "s2")
    assert isinstance(refused, dict) and refused.get("type") == "error" and refused.get("code") == "forbidden", refused
    bad = await client.call("subscribe", {"channel": "weather:now"}, "s3")
    assert isinstance(bad, dict) and bad.get("type") == "error" and bad.get("code") == "invalid_channel", bad
    gone = await client.call("unsubscribe", {"channel": CHANNEL}, "u1")
    assert isinstance(gone, dict) and gone.get("type") == "unsubscribed" and gone.get("channel") == CHANNEL, gone
    # after unsubscribe nothing more arrives on CHANNEL: a marker on another channel comes first
    assert_subscribed(await client.call("subscribe", {"channel": OTHER_CHANNEL}, "s4"), OTHER_CHANNEL)
    gw.hub.publish(CHANNEL, alert(99))
    gw.hub.publish(OTHER_CHANNEL, alert(100, route="all"))
    marker = await client.server_event("channel_message")
    assert_envelope(marker["args"][0], OTHER_CHANNEL, alert(100, route="all"))
    assert not client.unread("server")


async def test_node_long_polling_only_in_order(start_gateway, node_client):
    """Without the upgrade every message travels in polling payloads (several per response)."""
    gw = await start_gateway()
    client = await node_client(gw, token=token(USER), transports=["polling"])
    assert (await client.expect("open"))["transport"] == "polling"
    await client.expect("connect")
    lines = await _node_subscribe_and_receive(gw, client, n=25)
    assert all(line["transport"] == "polling" for line in lines)
    assert not client.unread("upgrade")


async def test_node_reconnects_by_itself_after_the_server_drops_it(start_gateway, node_client):
    gw = await start_gateway()
    client = await node_client(gw, token=token(USER))  # default options: polling, then websocket
    await client.expect("connect")
    await client.expect("upgrade")
    await _node_subscribe_and_receive(gw, client)
    await disconnect_all(gw)
    dropped = await client.expect("disconnect")
    assert dropped["reason"] in ("transport close", "transport error", "ping timeout"), dropped
    gw.hub.publish(CHANNEL, alert(5))  # while the client is away
    again = await client.expect("connect", lambda line: line["count"] == 2, timeout=RECONNECT_WAIT)
    assert again["id"]
    # subscribe again (whether or not the session was recovered): one subscriber, the old one is gone
    assert_subscribed(await client.call("subscribe", {"channel": CHANNEL}, "s2"), CHANNEL, count=1)
    gw.hub.publish(CHANNEL, alert(7))
    gw.hub.publish(CHANNEL, alert(8))
    await client.server_event("channel_message", lambda args: args[0]["message"]["alert_id"] == "a8")
    await asyncio.sleep(0.2)  # a duplicate would show up here
    after = [line["args"][0] for line in client.seen[client.seen.index(again):]
             if line["event"] == "server" and line["name"] == "channel_message"]
    # exactly once each, in order; the one published while away only if the session was
    # recovered (connection state recovery), since a new subscription does not replay history
    expected = [alert(5), alert(7), alert(8)] if again["recovered"] else [alert(7), alert(8)]
    assert [envelope["message"] for envelope in after] == expected, after
    for envelope, message in zip(after, expected):
        assert_envelope(envelope, CHANNEL, message)


@pytest.mark.parametrize("bad", sorted(BAD_TOKENS))
async def test_node_bad_token_is_a_connect_error(start_gateway, node_client, bad):
    gw = await start_gateway()
    client = await node_client(gw, token=BAD_TOKENS[bad])
    error = await client.expect("connect_error")
    # a CONNECT_ERROR packet {"message": ...}: no transport failure, and no retry by the client
    assert error["type"] is None, f"a transport failure, not a CONNECT_ERROR: {error}"
    assert isinstance(error["message"], str) and error["message"], error
    assert error["active"] is False, error
    await asyncio.sleep(0.3)
    assert not client.unread("connect") and not any(line["event"] == "connect" for line in client.seen)


# --- python-socketio's AsyncClient ------------------------------------------------------


class PyClient:
    """A ``socketio.AsyncClient`` with every server event and lifecycle event recorded."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection_attempts=10)
        self.events: list[tuple[str, tuple]] = []  # (name, args) in arrival order
        self.connects = 0
        self.disconnects: list[Any] = []
        self.connect_errors: list[Any] = []
        sio = self.sio

        @sio.event
        async def connect():
            self.connects += 1

        @sio.event
        async def disconnect(reason=None):
            self.disconnects.append(reason)

        @sio.event
        async def connect_error(data=None):
            self.connect_errors.append(data)

        @sio.on("*")
        async def any_event(name, *args):
            self.events.append((name, args))

    async def connect(self, gw, tok: str | None = "", **kwargs) -> None:
        """Connect with ``auth: {token: tok}`` (a rider's token by default; ``None``: no auth)."""
        tok = token(USER) if tok == "" else tok
        await self.sio.connect(base_url(gw), auth=None if tok is None else {"token": tok}, wait_timeout=WAIT, **kwargs)

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=WAIT)

    def received(self, name: str) -> list[tuple]:
        return [args for event, args in self.events if event == name]

    async def next_event(self, name: str, where: Callable[[tuple], bool] = lambda args: True,
                         after: int = 0, timeout: float = WAIT) -> tuple:
        """The first event ``name`` at index ≥ ``after`` of ``events`` that ``where`` accepts."""
        def found():
            return next((args for event, args in self.events[after:] if event == name and where(args)), None)
        return await wait_until(found, f"a {name!r} event (seen: {[e for e, _ in self.events]})", timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 5)
        shutdown = getattr(self.sio, "shutdown", None)  # also stops a reconnection loop
        if shutdown is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shutdown(), 5)


@pytest.fixture
async def py_client() -> AsyncIterator[Callable[[], PyClient]]:
    clients: list[PyClient] = []

    def make() -> PyClient:
        clients.append(PyClient())
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def _py_subscribe_and_receive(gw, client: PyClient, n: int = 1) -> list[dict]:
    assert_subscribed(await client.call("subscribe", {"channel": CHANNEL}), CHANNEL)
    start = len(client.events)
    for i in range(n):
        gw.hub.publish(CHANNEL, alert(i))
    await wait_until(lambda: len(client.received("channel_message")) >= n,
                     f"{n} channel_message events (seen: {client.events[start:]})", WAIT)
    messages = client.received("channel_message")
    assert len(messages) == n, messages
    for i, args in enumerate(messages):
        assert_envelope(args[0], CHANNEL, alert(i))
        assert len(args) <= 2 and all(isinstance(a, str) for a in args[1:]), args
    return [args[0] for args in messages]


async def test_python_default_polling_then_upgrade_to_websocket(start_gateway, py_client):
    gw = await start_gateway()
    client = py_client()
    await client.connect(gw)  # transports: polling, then the upgrade
    assert client.connects == 1 and client.sio.sid
    await wait_until(lambda: client.sio.transport() == "websocket", "the upgrade to websocket", WAIT)
    envelopes = await _py_subscribe_and_receive(gw, client, n=3)
    assert len({e["messageId"] for e in envelopes}) == 3


async def test_python_websocket_only(start_gateway, py_client):
    gw = await start_gateway()
    client = py_client()
    await client.connect(gw, transports=["websocket"])
    assert client.sio.transport() == "websocket"
    await _py_subscribe_and_receive(gw, client, n=3)


async def test_python_long_polling_only(start_gateway, py_client):
    gw = await start_gateway()
    client = py_client()
    await client.connect(gw, transports=["polling"])
    assert client.sio.transport() == "polling"
    await _py_subscribe_and_receive(gw, client, n=3)
    assert client.sio.transport() == "polling" and client.connects == 1


async def test_python_long_polling_burst_of_more_than_16_messages(start_gateway, py_client):
    """25 messages at once, more than fit in one polling response for this client:
    python-engineio's client refuses a payload of more than 16 packets
    (``engineio.payload.Payload.max_decode_packets``; it logs "Unexpected packet from
    server, aborting"), drops the session and connects anew, losing the subscription and
    the messages. So the server must split a longer backlog over several responses (the
    Node client takes any number: test_node_long_polling_only_in_order)."""
    gw = await start_gateway()
    client = py_client()
    await client.connect(gw, transports=["polling"])
    assert_subscribed(await client.call("subscribe", {"channel": CHANNEL}), CHANNEL)
    for i in range(25):
        gw.hub.publish(CHANNEL, alert(i))
    await wait_until(lambda: len(client.received("channel_message")) >= 25 or client.disconnects,
                     "25 channel_message events", WAIT)
    assert not client.disconnects, (
        f"the client dropped its session ({client.disconnects}) after "
        f"{len(client.received('channel_message'))} of 25 messages: python-engineio's client refuses a "
        "polling payload of more than 16 packets")
    await asyncio.sleep(0.1)
    messages = client.received("channel_message")
    assert [args[0]["message"] for args in messages] == [alert(i) for i in range(25)]
    assert client.sio.transport() == "polling" and client.connects == 1


async def test_python_subscribe_errors_and_unsubscribe(start_gateway, py_client):
    gw = await start_gateway()
    client = py_client()
    await client.connect(gw, transports=["websocket"])
    refused = await client.call("subscribe", {"channel": "user:someone-else:notifications"})
    assert isinstance(refused, dict) and refused.get("type") == "error" and refused.get("code") == "forbidden", refused
    bad = await client.call("subscribe", {"channel": "weather:now"})
    assert isinstance(bad, dict) and bad.get("type") == "error" and bad.get("code") == "invalid_channel", bad
    assert_subscribed(await client.call("subscribe", {"channel": NOTIFICATIONS}), NOTIFICATIONS, public=False)
    assert_subscribed(await client.call("subscribe", {"channel": CHANNEL}), CHANNEL)
    gone = await client.call("unsubscribe", {"channel": CHANNEL})
    assert isinstance(gone, dict) and gone.get("type") == "unsubscribed" and gone.get("channel") == CHANNEL, gone
    gw.hub.publish(CHANNEL, alert(1))  # not subscribed any more
    gw.hub.publish(NOTIFICATIONS, note(1))  # online: delivered live
    args = await client.next_event("channel_message")
    assert_envelope(args[0], NOTIFICATIONS, note(1), public=False)
    assert [e for e, _ in client.events] == ["channel_message"], client.events


async def test_python_reconnects_by_itself_after_the_server_drops_it(start_gateway, py_client):
    gw = await start_gateway()
    client = py_client()
    await client.connect(gw)
    await _py_subscribe_and_receive(gw, client)
    await disconnect_all(gw)
    await wait_until(lambda: client.disconnects, "the disconnect event", WAIT)
    await wait_until(lambda: client.connects == 2 and client.sio.connected, "the client reconnecting by itself",
                     RECONNECT_WAIT)
    assert_subscribed(await client.call("subscribe", {"channel": CHANNEL}), CHANNEL, count=1)
    mark = len(client.events)
    gw.hub.publish(CHANNEL, alert(7))
    gw.hub.publish(CHANNEL, alert(8))
    await wait_until(lambda: len(client.events) - mark >= 2, "two channel_message events after reconnecting", WAIT)
    await asyncio.sleep(0.2)  # a duplicate would show up here
    later = client.events[mark:]
    assert [name for name, _ in later] == ["channel_message", "channel_message"], later
    assert_envelope(later[0][1][0], CHANNEL, alert(7))
    assert_envelope(later[1][1][0], CHANNEL, alert(8))


@pytest.mark.parametrize("bad", sorted(BAD_TOKENS))
async def test_python_bad_token_is_a_connect_error(start_gateway, py_client, bad):
    gw = await start_gateway()
    client = py_client()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gw, tok=BAD_TOKENS[bad], transports=["websocket"])
    # the CONNECT_ERROR packet's data, {"message": ...}, is what the handler got
    assert client.connect_errors, "no connect_error event"
    data = client.connect_errors[0]
    assert isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"], data
    assert client.connects == 0


async def test_python_offline_notifications_then_sync_marker(start_gateway, py_client):
    gw = await start_gateway()
    for i in range(3):  # the user is not connected: kept for later
        gw.hub.publish(NOTIFICATIONS, note(i))
    client = py_client()
    await client.connect(gw)
    assert_subscribed(await client.call("subscribe", {"channel": NOTIFICATIONS}), NOTIFICATIONS, public=False)
    sync = await client.next_event("queue_sync_complete")
    names = [name for name, _ in client.events]
    assert names == ["queued_message"] * 3 + ["queue_sync_complete"], client.events
    queued = [args[0] for args in client.received("queued_message")]
    for i, item in enumerate(queued):
        assert item.get("type") == "queued_message" and isinstance(item.get("seq"), int), item
        assert_envelope(item["message"], NOTIFICATIONS, note(i), public=False)
    assert [q["seq"] for q in queued] == sorted({q["seq"] for q in queued})
    marker = sync[0]
    assert marker.get("type") == "queue_sync_complete" and marker.get("message_count") == 3, marker
    assert marker.get("upTo") == queued[-1]["seq"] and str(marker.get("synced_at", "")).endswith("Z"), marker
    # online now: the next notification is live
    gw.hub.publish(NOTIFICATIONS, note(3))
    live = await client.next_event("channel_message")
    assert_envelope(live[0], NOTIFICATIONS, note(3), public=False)


# --- every kind of client on one channel --------------------------------------------------


async def test_node_python_and_native_clients_get_the_same_envelope(start_gateway, node_client, py_client):
    gw = await start_gateway()
    node = await node_client(gw, token=token("n1"), transports=["websocket"])
    await node.expect("connect")
    assert_subscribed(await node.call("subscribe", {"channel": CHANNEL}, "s1"), CHANNEL, count=1)
    py = py_client()
    await py.connect(gw, tok=token("p1"))
    assert_subscribed(await py.call("subscribe", {"channel": CHANNEL}), CHANNEL, count=2)
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('w1')}") as ws:
        assert (await ws.receive_json(timeout=WAIT))["type"] == "welcome"
        await ws.send_json({"type": "subscribe", "id": "c1", "channel": CHANNEL})
        native = await ws.receive_json(timeout=WAIT)
        assert native["type"] == "subscribed" and native["subscriberCount"] == 3, native
        gw.hub.publish(CHANNEL, alert(1))
        from_native = await ws.receive_json(timeout=WAIT)
    from_node = (await node.server_event("channel_message"))["args"][0]
    from_python = (await py.next_event("channel_message"))[0]
    assert_envelope(from_native, CHANNEL, alert(1))
    assert from_node == from_native and from_python == from_native
