"""Two real gateway processes acting as one through Redis (``fastgw serve --redis URL``).

Every test starts gateway processes ``A`` and ``B`` (``python -m fastgw serve`` on free
loopback ports, sharing one redis-server from ``tests/redis_server.py``), talks to them
with real WebSocket clients and the admin HTTP API, and looks into Redis with the sync
``redis`` client where that is the clearest witness (pub/sub subscriptions, queue
lengths, injected garbage). Every wait is bounded; every process is terminated in
teardown.

Publishing through ``POST /api/publish`` returns once the gateway has *queued* the
message for Redis, not once Redis has it: where a test needs a message to be in Redis
before its next step (offline queue, history), it polls Redis for it. ``subscribed`` and
``resumed`` are sent once Redis has confirmed the node's subscription, which
``test_subscribed_means_messages_from_the_other_node_arrive`` pins down; other tests
still wait for ``PUBSUB NUMSUB`` where they need every node's subscription in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import orjson
import pytest
import redis
import redis.cluster

from fastgw.engines.redis.keys import Keys
from tests.conftest import SECRET, token, wait_until

KEYS = Keys("fastgw")
START_TIMEOUT = 30.0  # one gateway process: import, bind, connect to Redis
RECV_TIMEOUT = 5.0  # one expected frame
POLL_TIMEOUT = 10.0  # a state change seen from outside (Redis, /readyz, stats)
RECOVERY_TIMEOUT = 25.0  # Redis back → both nodes ready (reconnect backoff is at most 5 s)

LOCATION = {"type": "location_update", "vehicle_id": "KA-57-F-0123", "route_id": "335E", "direction": "UP",
            "latitude": 12.97, "longitude": 77.59, "speed": 21.0, "heading": 90.0}


def alert(n: int) -> dict[str, Any]:
    return {"type": "service_alert", "alert_id": f"a{n}", "severity": "info", "title": f"alert #{n}"}


def location(n: int) -> dict[str, Any]:
    return {**LOCATION, "seq": n}


def notification(user: str, n: int) -> dict[str, Any]:
    return {"type": "user_notification", "notification_id": f"n{n}", "user_id": user, "title": f"#{n}",
            "body": "your bus is near", "category": "trip"}


def notifications_of(user: str) -> str:
    return f"user:{user}:notifications"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def eventually(check: Callable[[], Any], what: str, timeout: float = POLL_TIMEOUT,
                     interval: float = 0.05) -> Any:
    return await wait_until(check, what, timeout, interval)


# --- gateway processes ------------------------------------------------------------------


class GatewayProcess:
    """``python -m fastgw serve --redis URL`` on a free loopback port; output goes to a log file."""

    def __init__(self, name: str, redis_url: str, flags: tuple[str, ...], logdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = logdir / f"gateway-{name}.log"
        argv = [sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--no-simulator", "--jwt-secret", SECRET, "--redis", redis_url, *flags]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

    def __repr__(self) -> str:
        return f"<gateway {self.name} :{self.port} pid {self.proc.pid}>"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, user: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={token(user)}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- {self.name} log ({self.log_path}):\n" + "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = START_TIMEOUT) -> None:
        """Until ``/readyz`` says ``ready`` (Redis connected, not merely degraded)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.alive, f"{self} exited with {self.proc.returncode}\n{self.log_tail()}"
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                status, last = await readyz(http, self)
                if status == 200 and last.get("status") == "ready":
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self} not ready within {timeout:g}s (last /readyz: {last})\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


StartPair = Callable[..., Awaitable[tuple[GatewayProcess, GatewayProcess]]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
def start_gateway(tmp_path: Path, http: aiohttp.ClientSession) -> Iterator[Callable[..., Awaitable[GatewayProcess]]]:
    """Factory: ``await start_gateway(name, redis_url, *flags)`` → a ready gateway process."""
    started: list[GatewayProcess] = []

    async def start(name: str, redis_url: str, *flags: str) -> GatewayProcess:
        gw = GatewayProcess(name, redis_url, flags, tmp_path)
        started.append(gw)
        await gw.wait_ready(http)
        return gw

    yield start
    for gw in started:
        if not gw.alive:
            print(f"{gw} had exited with {gw.proc.returncode} before teardown")
        gw.stop()
        print(gw.log_tail())  # shown by pytest when the test failed


@pytest.fixture
def start_pair(start_gateway) -> StartPair:
    """Factory: ``await start_pair(redis_url, *flags)`` → gateways A and B, started one after
    the other (so B's registry already lists A when B serves its first client)."""

    async def start(redis_url: str, *flags: str) -> tuple[GatewayProcess, GatewayProcess]:
        a = await start_gateway("A", redis_url, *flags)
        b = await start_gateway("B", redis_url, *flags)
        return a, b

    return start


# --- admin HTTP API ---------------------------------------------------------------------

ADMIN_HEADERS = {"Authorization": f"Bearer {token('ops', admin=True, ttl=3600)}"}


async def publish(http: aiohttp.ClientSession, gw: GatewayProcess, channel: str, message: dict[str, Any]) -> str:
    async with http.post(f"{gw.base}/api/publish", json={"channel": channel, "message": message},
                         headers=ADMIN_HEADERS) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["messageId"]


async def engine_stats(http: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with http.get(f"{gw.base}/api/stats", headers=ADMIN_HEADERS) as r:
        assert r.status == 200
        return (await r.json())["engine"]


async def readyz(http: aiohttp.ClientSession, gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.base}/readyz") as r:
        return r.status, await r.json()


# --- WebSocket clients ------------------------------------------------------------------


class Client:
    """One WebSocket connection as a test sees it: JSON frames in, JSON frames out."""

    _ids = itertools.count()

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any], gw: GatewayProcess) -> None:
        self.ws = ws
        self.welcome = welcome
        self.gw = gw

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, gw: GatewayProcess, user: str) -> "Client":
        ws = await http.ws_connect(gw.ws_url(user), timeout=aiohttp.ClientWSTimeout(ws_close=2))
        welcome = await ws.receive_json(timeout=RECV_TIMEOUT)
        assert welcome["type"] == "welcome", welcome
        return cls(ws, welcome, gw)

    @property
    def session_id(self) -> str:
        return self.welcome["sessionId"]

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(obj).decode())

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame from {self.gw}, got {msg.type}: {msg.data!r}"
        try:
            return orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            raise AssertionError(f"{self.gw} sent a text frame that is not JSON: {msg.data[:200]!r}") from None

    async def subscribe(self, channel: str) -> dict[str, Any]:
        """The ``subscribed`` reply (frames that follow it, e.g. a replay, are left unread)."""
        rid = f"s{next(self._ids)}"
        await self.send({"type": "subscribe", "id": rid, "channel": channel})
        reply = await self.recv()
        assert reply.get("type") == "subscribed" and reply.get("id") == rid, reply
        return reply

    async def unsubscribe(self, channel: str) -> None:
        rid = f"u{next(self._ids)}"
        await self.send({"type": "unsubscribe", "id": rid, "channel": channel})
        assert await self.recv() == {"type": "unsubscribed", "id": rid, "channel": channel}

    async def sync(self) -> list[dict[str, Any]]:
        """Everything the server sends before it answers a ping (commands run in order)."""
        rid = f"p{next(self._ids)}"
        await self.send({"type": "ping", "id": rid})
        frames = []
        while True:
            frame = await self.recv()
            if frame.get("type") == "pong" and frame.get("id") == rid:
                return frames
            frames.append(frame)

    async def channel_messages(self, n: int) -> list[dict[str, Any]]:
        frames = [await self.recv() for _ in range(n)]
        assert all(f["type"] == "channel_message" for f in frames), frames
        return frames

    async def replay(self) -> list[dict[str, Any]]:
        """After subscribing to the user's notifications: the offline replay (possibly empty)."""
        return await self.sync()

    async def resume(self, session_id: str, offsets: dict[str, str] | None = None) -> dict[str, Any]:
        rid = f"r{next(self._ids)}"
        cmd: dict[str, Any] = {"type": "resume", "id": rid, "sessionId": session_id}
        if offsets is not None:
            cmd["offsets"] = offsets
        await self.send(cmd)
        reply = await self.recv()
        assert reply.get("type") == "resumed" and reply.get("id") == rid, reply
        return reply

    async def ack(self, up_to: int) -> None:
        """Acknowledge; the ack has no reply, so a ping shows it was processed."""
        await self.send({"type": "ack", "upTo": up_to})
        assert await self.sync() == []

    async def close(self) -> None:
        await self.ws.close()


# --- Redis, seen from the outside -------------------------------------------------------


class RedisView:
    """Sync look into the Redis the gateways use (standalone, or a cluster with sharded pub/sub)."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.cluster = cluster
        if cluster:
            self.client: Any = redis.cluster.RedisCluster.from_url(url, socket_timeout=5)
        else:
            self.client = redis.Redis.from_url(url, socket_timeout=5)

    def close(self) -> None:
        self.client.close()

    def _node(self, key: str) -> redis.Redis:
        node = self.client.get_node_from_key(key)
        return node.redis_connection

    def numsub(self, channel: str) -> int:
        """Gateways subscribed (in Redis) to the gateway channel ``channel``."""
        name = KEYS.pubsub(channel)
        if self.cluster:
            reply = self._node(name).execute_command("PUBSUB", "SHARDNUMSUB", name)
        else:
            reply = self.client.execute_command("PUBSUB", "NUMSUB", name)
        return int(reply[1])

    def pubsub_channels(self) -> set[str]:
        """Gateway channels some node is subscribed to (standalone Redis)."""
        names = self.client.execute_command("PUBSUB", "CHANNELS", f"{KEYS.prefix}:ch:*")
        return {KEYS.channel_of(n) for n in names}

    def queue_length(self, user: str) -> int:
        return int(self.client.llen(KEYS.queue(notifications_of(user))))

    def history_length(self, channel: str) -> int:
        return int(self.client.xlen(KEYS.history(channel)))

    async def wait_numsub(self, channel: str, n: int) -> None:
        await eventually(lambda: self.numsub(channel) == n, f"NUMSUB {channel} == {n}")

    async def wait_queue(self, user: str, n: int) -> None:
        await eventually(lambda: self.queue_length(user) == n, f"offline queue of {user} holds {n}")

    async def wait_history(self, channel: str, n: int) -> None:
        await eventually(lambda: self.history_length(channel) >= n, f"history of {channel} holds {n}")

    async def wait_history_added(self, channel: str, n: int) -> None:
        """Until ``n`` messages were ever appended to the channel's history (trimmed or not)."""
        await eventually(lambda: self.client.xinfo_stream(KEYS.history(channel))["entries-added"] >= n,
                         f"{n} messages appended to the history of {channel}")

    async def wait_session_saved(self, session_id: str) -> None:
        await eventually(lambda: self.client.exists(KEYS.session(session_id)) == 1,
                         f"session {session_id} saved")


@pytest.fixture
def rview(redis_url: str) -> Iterator[RedisView]:
    view = RedisView(redis_url)
    yield view
    view.close()


async def drain_until(client: Client, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Frames up to and including the first that matches ``predicate`` (each bounded)."""
    frames = []
    while True:
        frames.append(await client.recv())
        if predicate(frames[-1]):
            return frames


def offset_key(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


# =========================================================================================
# 1. Fan-out across nodes
# =========================================================================================


async def test_messages_published_on_either_node_reach_clients_on_both_in_order(start_pair, redis_url, rview, http):
    """A message published through one node reaches the subscribers of every node, once,
    in publish order, carrying the same history ``offset`` everywhere (offsets increase)."""
    a, b = await start_pair(redis_url)
    on_a, on_b = await Client.connect(http, a, "rider-a"), await Client.connect(http, b, "rider-b")
    for client in (on_a, on_b):
        await client.subscribe("alerts:all")
    await rview.wait_numsub("alerts:all", 2)

    for n in range(10):
        await publish(http, b, "alerts:all", alert(n))
    await rview.wait_history("alerts:all", 10)  # B's ten are in Redis before A publishes
    for n in range(10, 20):
        await publish(http, a, "alerts:all", alert(n))
    got_a, got_b = await on_a.channel_messages(20), await on_b.channel_messages(20)
    assert [m["message"]["alert_id"] for m in got_a] == [f"a{n}" for n in range(20)]
    assert [m["message"]["alert_id"] for m in got_b] == [f"a{n}" for n in range(20)]
    assert [m["messageId"] for m in got_a] == [m["messageId"] for m in got_b]
    offsets = [m["offset"] for m in got_a]
    assert offsets == [m["offset"] for m in got_b]
    assert offsets == sorted(offsets, key=offset_key) and len(set(offsets)) == 20
    assert await on_a.sync() == [] and await on_b.sync() == []  # nothing twice


async def test_subscribed_means_messages_from_the_other_node_arrive(start_pair, redis_url, http):
    """Once a client has its ``subscribed`` reply, a message published through the other
    node at once (no waiting) reaches it: the node's Redis subscription is already in place."""
    a, b = await start_pair(redis_url)
    client = await Client.connect(http, a, "rider-eager")
    for n in range(20):
        channel = f"route:E{n}:UP"  # a new channel each time: a new Redis subscription
        await client.subscribe(channel)
        await publish(http, b, channel, location(n))
        got = await client.recv()
        assert got["channel"] == channel and got["message"]["seq"] == n, got


# =========================================================================================
# 2. Per-channel routing
# =========================================================================================


async def test_nodes_receive_only_channels_with_local_subscribers(start_pair, redis_url, rview, http):
    """A node subscribes in Redis only to channels it has subscribers on: B (subscribed to X
    only) never receives Y traffic; Y's pub/sub channel has exactly the nodes with Y
    subscribers; a node's Redis subscription ends with its last subscriber (unsubscribe
    or disconnect)."""
    x, y, z = "route:335E:UP", "route:500D:DOWN", "stop:20919:arrivals"
    a, b = await start_pair(redis_url)
    on_b = await Client.connect(http, b, "rider-b")
    await on_b.subscribe(x)
    await rview.wait_numsub(x, 1)
    base_a, base_b = await engine_stats(http, a), await engine_stats(http, b)

    # Y without any subscriber: nobody receives it from Redis
    for n in range(50):
        await publish(http, a, y, location(n))
    await rview.wait_history(y, 50)
    assert rview.numsub(y) == 0 and y not in rview.pubsub_channels()

    # Y with a subscriber on A: A only
    on_a = await Client.connect(http, a, "rider-a")
    await on_a.subscribe(y)
    await rview.wait_numsub(y, 1)
    for n in range(50):
        await publish(http, a, y, location(n))
    assert [m["message"]["seq"] for m in await on_a.channel_messages(50)] == list(range(50))
    assert rview.numsub(y) == 1

    # positive control on X: once it arrived at B, any Y message routed to B would have too
    await publish(http, a, x, location(999))
    assert (await on_b.recv())["message"]["seq"] == 999
    after_a, after_b = await engine_stats(http, a), await engine_stats(http, b)
    assert after_b["received"] - base_b["received"] == 1, "B received Y traffic it has no subscriber for"
    assert after_a["received"] - base_a["received"] == 50
    assert await on_b.sync() == []

    # B's last subscriber of X unsubscribes: X's pub/sub channel goes away
    await on_b.unsubscribe(x)
    await eventually(lambda: x not in rview.pubsub_channels(), f"{x} gone from PUBSUB CHANNELS")
    # ... and on disconnect
    await on_b.subscribe(z)
    await eventually(lambda: z in rview.pubsub_channels(), f"{z} in PUBSUB CHANNELS")
    await on_b.close()
    await eventually(lambda: z not in rview.pubsub_channels(), f"{z} gone from PUBSUB CHANNELS")
    assert y in rview.pubsub_channels()  # A's client is still there
    await on_a.close()
    await eventually(lambda: not rview.pubsub_channels(), "no gateway channel subscribed")


# =========================================================================================
# 3. Cluster-wide subscriber counts
# =========================================================================================


async def test_subscriber_count_is_cluster_wide(start_pair, redis_url, http):
    """``subscribed.subscriberCount`` counts the channel's subscribers on every node."""
    a, b = await start_pair(redis_url)
    first = await Client.connect(http, a, "r1")
    assert (await first.subscribe("alerts:all"))["subscriberCount"] == 1
    second = await Client.connect(http, b, "r2")
    assert (await second.subscribe("alerts:all"))["subscriberCount"] == 2


async def test_subscriber_count_includes_a_node_started_after_this_one(start_pair, redis_url, http):
    """The count on the node started first includes subscribers of a node started after it
    (the registry of live nodes must not make a newer peer's count invisible)."""
    a, b = await start_pair(redis_url)  # A registered before B existed
    on_b = await Client.connect(http, b, "r1")
    assert (await on_b.subscribe("alerts:all"))["subscriberCount"] == 1
    on_a = await Client.connect(http, a, "r2")
    assert (await on_a.subscribe("alerts:all"))["subscriberCount"] == 2
    third = await Client.connect(http, b, "r3")
    assert (await third.subscribe("alerts:all"))["subscriberCount"] == 3


async def test_presence_and_instances_are_cluster_wide(start_pair, redis_url, http):
    """``/api/presence/{user}`` counts the user's connections on every node;
    ``/api/instances`` lists both live gateways with their connection counts."""
    a, b = await start_pair(redis_url)

    async def presence(gw: GatewayProcess, user: str) -> dict[str, Any]:
        async with http.get(f"{gw.base}/api/presence/{user}", headers=ADMIN_HEADERS) as r:
            assert r.status == 200
            return await r.json()

    async def instances(gw: GatewayProcess) -> dict[int, int]:
        async with http.get(f"{gw.base}/api/instances", headers=ADMIN_HEADERS) as r:
            assert r.status == 200
            return {i["port"]: i["connections"] for i in (await r.json())["instances"]}

    assert await presence(a, "walker") == {"user": "walker", "online": False, "devices": 0}
    phone = await Client.connect(http, b, "walker")
    await eventually(lambda: _has(presence(a, "walker"), online=True, devices=1), "walker online via B")
    laptop = await Client.connect(http, a, "walker")
    await eventually(lambda: _has(presence(b, "walker"), online=True, devices=2), "walker on 2 devices")
    await phone.close()
    await laptop.close()
    await eventually(lambda: _has(presence(b, "walker"), online=False, devices=0), "walker offline")

    assert set(await instances(a)) == set(await instances(b)) == {a.port, b.port}
    extra = await Client.connect(http, b, "extra")
    await eventually(lambda: _equals(instances(a), {a.port: 0, b.port: 1}), "B's connection in /api/instances",
                     timeout=15)  # refreshed every --instance-refresh (5 s)
    await extra.close()


async def _has(response: Awaitable[dict[str, Any]], **fields: Any) -> bool:
    body = await response
    return all(body.get(k) == v for k, v in fields.items())


async def _equals(response: Awaitable[Any], expected: Any) -> bool:
    return (await response) == expected


# =========================================================================================
# 4. Offline queue across nodes
# =========================================================================================


async def connect_and_replay(http, gw: GatewayProcess, user: str) -> tuple[Client, list[dict[str, Any]]]:
    """Connect as ``user``, subscribe to the notifications; the replay that follows."""
    client = await Client.connect(http, gw, user)
    reply = await client.subscribe(notifications_of(user))
    assert "offset" not in reply  # notification channels have no history
    return client, await client.replay()


def check_replay(frames: list[dict[str, Any]], user: str, titles: list[str]) -> list[int]:
    """``frames`` = the queued messages with ``titles``, oldest first, then the sync marker;
    returns their seqs."""
    assert [f["type"] for f in frames] == ["queued_message"] * len(titles) + ["queue_sync_complete"], frames
    queued, sync = frames[:-1], frames[-1]
    assert [f["message"]["message"]["title"] for f in queued] == titles
    assert all(f["message"]["type"] == "channel_message" and f["message"]["channel"] == notifications_of(user)
               for f in queued)
    seqs = [f["seq"] for f in queued]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert sync["message_count"] == len(titles) and sync["upTo"] == seqs[-1] and sync["synced_at"].endswith("Z")
    return seqs


async def test_offline_notifications_replayed_on_any_node_until_acknowledged(start_pair, redis_url, rview, http):
    """Notifications published while the user is offline are kept in Redis and replayed on
    whichever node the user comes back to, oldest first, again and again until acknowledged
    (also when the client drops mid-replay); after the ack nothing is replayed and new
    notifications arrive live."""
    user = "rider42"
    a, b = await start_pair(redis_url)
    for n in range(3):
        await publish(http, b, notifications_of(user), notification(user, n))
    await rview.wait_queue(user, 3)

    client, frames = await connect_and_replay(http, a, user)
    seqs = check_replay(frames, user, ["#0", "#1", "#2"])
    message_ids = [f["message"]["messageId"] for f in frames[:-1]]
    await client.close()  # no ack

    client, frames = await connect_and_replay(http, b, user)
    assert check_replay(frames, user, ["#0", "#1", "#2"]) == seqs
    assert [f["message"]["messageId"] for f in frames[:-1]] == message_ids
    await client.close()

    # gone right after the first queued message
    client = await Client.connect(http, a, user)
    await client.subscribe(notifications_of(user))
    assert (await client.recv())["type"] == "queued_message"
    await client.close()

    client, frames = await connect_and_replay(http, b, user)
    assert check_replay(frames, user, ["#0", "#1", "#2"]) == seqs
    await client.ack(frames[-1]["upTo"])
    await client.close()
    await rview.wait_queue(user, 0)

    client, frames = await connect_and_replay(http, a, user)
    assert frames == []  # nothing replayed: no queued_message, no queue_sync_complete
    await rview.wait_numsub(notifications_of(user), 1)
    await publish(http, b, notifications_of(user), notification(user, 3))
    live = await client.recv()
    assert live["type"] == "channel_message" and live["message"]["title"] == "#3"
    assert rview.queue_length(user) == 0  # delivered live, not queued


async def test_offline_queue_keeps_only_the_newest_messages(start_pair, redis_url, rview, http):
    """``--offline-max-messages 5``: of 8 notifications published while offline, the newest
    5 are replayed, oldest first."""
    user = "rider5"
    a, b = await start_pair(redis_url, "--offline-max-messages", "5")
    for n in range(8):
        await publish(http, b, notifications_of(user), notification(user, n))
    await eventually(lambda: rview.client.get(KEYS.queue_seq(notifications_of(user))) == b"8",
                     "8 notifications queued")
    _, frames = await connect_and_replay(http, a, user)
    check_replay(frames, user, [f"#{n}" for n in range(3, 8)])


async def test_offline_queue_expires_after_retention(start_pair, redis_url, rview, http):
    """``--offline-retention 1``: a notification older than a second is not replayed."""
    user = "rider1s"
    a, b = await start_pair(redis_url, "--offline-retention", "1")
    await publish(http, b, notifications_of(user), notification(user, 0))
    await rview.wait_queue(user, 1)
    await asyncio.sleep(2.5)
    _, frames = await connect_and_replay(http, a, user)
    assert frames == []


# =========================================================================================
# 5. Session resume across nodes
# =========================================================================================

ROUTE = "route:335E:UP"


async def subscribe_then_leave(http, rview: RedisView, gw: GatewayProcess, user: str,
                               publish_via: GatewayProcess) -> tuple[str, dict[str, Any]]:
    """A client of ``user`` on ``gw`` subscribes to ROUTE, receives m1, disconnects; returns
    its session id and m1, once the session is saved and no node is subscribed any more."""
    client = await Client.connect(http, gw, user)
    await client.subscribe(ROUTE)
    await rview.wait_numsub(ROUTE, 1)
    await publish(http, publish_via, ROUTE, location(1))
    m1 = await client.recv()
    assert m1["type"] == "channel_message" and m1["message"]["seq"] == 1 and m1["offset"]
    await client.close()
    await rview.wait_session_saved(client.session_id)
    await rview.wait_numsub(ROUTE, 0)
    return client.session_id, m1


@pytest.mark.parametrize("with_offsets", [True, False], ids=["client-offsets", "server-positions"])
async def test_resume_on_other_node_recovers_missed_messages(start_pair, redis_url, rview, http, with_offsets):
    """A session left on A resumes on B: ``resumed`` (recovered, missed 2), then exactly the
    2 messages published while away, in order, then live ones; with the client's offsets or
    the positions the server kept."""
    user = "rider-resume"
    a, b = await start_pair(redis_url)
    session_id, m1 = await subscribe_then_leave(http, rview, a, user, publish_via=b)
    for n in (2, 3):
        await publish(http, b, ROUTE, location(n))
    await rview.wait_history(ROUTE, 3)

    client = await Client.connect(http, b, user)
    reply = await client.resume(session_id, {ROUTE: m1["offset"]} if with_offsets else None)
    assert reply["recovered"] is True, reply
    assert reply["sessionId"] == client.session_id != session_id
    assert reply["channels"] == [{"channel": ROUTE, "recovered": True, "missed": 2}]
    missed = await client.channel_messages(2)
    assert [m["message"]["seq"] for m in missed] == [2, 3]
    assert all(m["channel"] == ROUTE for m in missed)
    assert [offset_key(m1["offset"])] + [offset_key(m["offset"]) for m in missed] == sorted(
        [offset_key(m1["offset"])] + [offset_key(m["offset"]) for m in missed])

    assert rview.numsub(ROUTE) == 1  # B subscribed before it answered
    await publish(http, a, ROUTE, location(4))
    live = await client.recv()
    assert live["type"] == "channel_message" and live["message"]["seq"] == 4
    assert offset_key(live["offset"]) > offset_key(missed[-1]["offset"])
    assert await client.sync() == []


async def test_resume_is_gap_free_while_messages_keep_coming(start_pair, redis_url, rview, http):
    """Resuming on B while A keeps publishing: the client gets every message after its
    offset exactly once and in order — the missed ones, then the live ones, no gap where
    history and live delivery meet."""
    user = "rider-busy"
    a, b = await start_pair(redis_url)
    session_id, m1 = await subscribe_then_leave(http, rview, a, user, publish_via=a)
    stop = asyncio.Event()
    published: list[int] = []

    async def publisher() -> None:
        n = 2
        while not stop.is_set() and n < 2000:
            await publish(http, a, ROUTE, location(n))
            published.append(n)
            n += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(publisher())
    try:
        await eventually(lambda: len(published) >= 30, "30 messages published while away")
        client = await Client.connect(http, b, user)
        reply = await client.resume(session_id, {ROUTE: m1["offset"]})
        assert reply["recovered"] is True, reply
        await asyncio.sleep(0.5)  # live traffic flows for a while after the resume
    finally:
        stop.set()
        await task
    last = published[-1]
    seqs: list[int] = []
    with contextlib.suppress(asyncio.TimeoutError):  # the last one lost: compared below
        while not seqs or seqs[-1] != last:
            frame = await client.recv()
            assert frame["type"] == "channel_message", frame
            seqs.append(frame["message"]["seq"])
    assert seqs == list(range(2, last + 1)), f"missing: {sorted(set(range(2, last + 1)) - set(seqs))[:20]}"


async def test_resume_not_recoverable_when_history_was_trimmed(start_pair, redis_url, rview, http):
    """``--history-size 5`` and 30 messages while away: ``recovered: false`` (the client must
    refetch), the subscription is still restored and live messages flow."""
    user = "rider-late"
    a, b = await start_pair(redis_url, "--history-size", "5")
    session_id, m1 = await subscribe_then_leave(http, rview, a, user, publish_via=b)
    for n in range(2, 32):
        await publish(http, b, ROUTE, location(n))
    await rview.wait_history_added(ROUTE, 31)

    client = await Client.connect(http, b, user)
    reply = await client.resume(session_id, {ROUTE: m1["offset"]})
    assert reply["recovered"] is False, reply
    assert [c["channel"] for c in reply["channels"]] == [ROUTE] and reply["channels"][0]["recovered"] is False
    await rview.wait_numsub(ROUTE, 1)
    await publish(http, a, ROUTE, location(100))
    frames = await drain_until(client, lambda f: f.get("message", {}).get("seq") == 100)
    seqs = [f["message"]["seq"] for f in frames]
    assert seqs == sorted(seqs) and len(seqs) == reply["channels"][0]["missed"] + 1


async def test_resume_after_the_history_expired_is_not_recovered(start_pair, redis_url, rview, http):
    """``--history-ttl 1``: messages published while away and then trimmed by age cannot
    be recovered, so ``resume`` must not claim ``recovered: true``.

    Redis trims streams by whole nodes of 100 entries (``MINID ~``), on the next
    publish: so a node's worth of messages ages out, then one more is published.
    """
    user = "rider-expired"
    a, b = await start_pair(redis_url, "--history-ttl", "1")
    session_id, m1 = await subscribe_then_leave(http, rview, a, user, publish_via=b)
    for i in range(2, 122):  # missed, then expired
        await publish(http, b, ROUTE, location(i))
    await rview.wait_history_added(ROUTE, 121)
    await asyncio.sleep(1.5)
    await publish(http, b, ROUTE, location(122))  # the publish that trims what aged out
    await rview.wait_history_added(ROUTE, 122)

    client = await Client.connect(http, b, user)
    reply = await client.resume(session_id, {ROUTE: m1["offset"]})
    assert reply["recovered"] is False and reply["channels"][0]["recovered"] is False, \
        f"messages after #1 were trimmed, yet: {reply}"


async def test_resumed_subscription_counts_in_subscriber_count(start_pair, redis_url, rview, http):
    """A subscription restored by ``resume`` counts in the cluster-wide ``subscriberCount``
    like one made by ``subscribe``."""
    user = "rider-counted"
    a, b = await start_pair(redis_url)
    session_id, _ = await subscribe_then_leave(http, rview, b, user, publish_via=b)
    resumed = await Client.connect(http, a, user)
    assert (await resumed.resume(session_id))["channels"][0]["channel"] == ROUTE
    await rview.wait_numsub(ROUTE, 1)
    other = await Client.connect(http, b, "rider-other")  # B knows A (A started first)
    assert (await other.subscribe(ROUTE))["subscriberCount"] == 2


async def test_resume_of_an_unknown_session(start_pair, redis_url, rview, http):
    """An unknown session id: ``recovered: false``, no channels, no subscriptions."""
    a, b = await start_pair(redis_url)
    client = await Client.connect(http, b, "rider-x")
    reply = await client.resume("nosuchsession0000", {ROUTE: "1-0"})
    assert reply["recovered"] is False and reply["channels"] == [] and reply["sessionId"] == client.session_id
    await publish(http, a, ROUTE, location(1))
    await rview.wait_history(ROUTE, 1)
    assert rview.numsub(ROUTE) == 0
    assert await client.sync() == []


async def test_resume_of_another_users_session_is_refused(start_pair, redis_url, rview, http):
    """Another user's token cannot resume a session (``recovered: false``, nothing restored)."""
    a, b = await start_pair(redis_url)
    session_id, m1 = await subscribe_then_leave(http, rview, a, "owner", publish_via=b)
    await publish(http, b, ROUTE, location(2))
    await rview.wait_history(ROUTE, 2)

    thief = await Client.connect(http, b, "intruder")
    reply = await thief.resume(session_id, {ROUTE: m1["offset"]})
    assert reply["recovered"] is False and reply["channels"] == []
    assert await thief.sync() == []  # not the missed message
    assert rview.numsub(ROUTE) == 0  # no subscription made


async def test_failed_resume_by_another_user_leaves_the_session_to_its_owner(start_pair, redis_url, rview, http):
    """A refused resume attempt with someone else's session id does not destroy the session:
    its owner can still resume it afterwards."""
    a, b = await start_pair(redis_url)
    session_id, m1 = await subscribe_then_leave(http, rview, a, "owner", publish_via=b)
    await publish(http, b, ROUTE, location(2))
    await rview.wait_history(ROUTE, 2)

    thief = await Client.connect(http, b, "intruder")
    assert (await thief.resume(session_id))["recovered"] is False
    owner = await Client.connect(http, a, "owner")
    reply = await owner.resume(session_id, {ROUTE: m1["offset"]})
    assert reply["recovered"] is True and reply["channels"] == [{"channel": ROUTE, "recovered": True, "missed": 1}]
    assert (await owner.recv())["message"]["seq"] == 2


# =========================================================================================
# 6. Redis outage
# =========================================================================================


@contextlib.contextmanager
def paused(gw: GatewayProcess) -> Iterator[None]:
    """SIGSTOP the gateway for the block (a node that is slow to come back), SIGCONT after."""
    os.kill(gw.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(gw.proc.pid, signal.SIGCONT)


async def outage_with_message_kept_on_a(http, redis_server, view: RedisView, a: GatewayProcess,
                                        b: GatewayProcess) -> tuple[Client, Client, dict[str, Any]]:
    """Clients on A and B subscribed to ``alerts:all``; Redis SIGKILLed; a1 published through
    A (delivered to A's client at once, kept for Redis); both nodes report degraded."""
    on_a, on_b = await Client.connect(http, a, "rider-a"), await Client.connect(http, b, "rider-b")
    for client in (on_a, on_b):
        await client.subscribe("alerts:all")
    await view.wait_numsub("alerts:all", 2)
    await publish(http, a, "alerts:all", alert(0))
    assert (await on_a.recv())["message"]["alert_id"] == "a0"
    assert (await on_b.recv())["message"]["alert_id"] == "a0"

    redis_server.kill9()
    await publish(http, a, "alerts:all", alert(1))
    during = await on_a.recv()  # local delivery while Redis is gone
    assert during["type"] == "channel_message" and during["message"]["alert_id"] == "a1"
    for gw in (a, b):
        status, body = await eventually(lambda gw=gw: _degraded(http, gw), f"{gw.name} degraded")
        assert status == 200 and body["engine"]["ok"] is False and body["engine"]["redis"] == "down"
    assert a.alive and b.alive
    return on_a, on_b, during


async def test_redis_outage_degrades_then_recovers(start_pair, redis_private, http):
    """Redis killed: each node keeps serving its own subscribers (A's client gets what is
    published on A), ``/readyz`` says degraded with HTTP 200. Redis back: both nodes are
    ready again within a bounded time, re-subscribed (B → A works), the message A kept
    during the outage is republished and reaches B's client, nothing is lost or
    duplicated, no process dies.

    A is held (SIGSTOP) while Redis comes back, so B has re-subscribed before A republishes:
    with both resuming at once which one is first is a race (see the next test)."""
    view = RedisView(redis_private.url)
    try:
        a, b = await start_pair(redis_private.url)
        on_a, on_b, during = await outage_with_message_kept_on_a(http, redis_private, view, a, b)

        with paused(a):
            redis_private.restart()
            await b.wait_ready(http, timeout=RECOVERY_TIMEOUT)
            await view.wait_numsub("alerts:all", 1)  # B re-subscribed
        await a.wait_ready(http, timeout=RECOVERY_TIMEOUT)
        republished = await on_b.recv(timeout=RECOVERY_TIMEOUT)
        assert republished["type"] == "channel_message" and republished["message"]["alert_id"] == "a1"
        assert republished["messageId"] == during["messageId"]

        await view.wait_numsub("alerts:all", 2)
        await publish(http, b, "alerts:all", alert(2))
        assert (await on_a.recv())["message"]["alert_id"] == "a2"  # A re-subscribed; a1 not twice
        assert (await on_b.recv())["message"]["alert_id"] == "a2"
        stats_a = await engine_stats(http, a)
        assert stats_a["lost"] == 0 and stats_a["outage_republished"] == 1
        assert stats_a["outages"] >= 1 and stats_a["reconnects"] >= 1
        assert (await engine_stats(http, b))["lost"] == 0
        assert a.alive and b.alive
    finally:
        view.close()


async def test_message_kept_during_outage_reaches_a_peer_that_reconnects_after_the_origin(
        start_pair, redis_private, http):
    """The message A kept during the outage also reaches B's client when B is back after A
    (B held with SIGSTOP while Redis restarts and A republishes): it must not be lost for
    B's subscribers while A reports ``lost: 0``."""
    view = RedisView(redis_private.url)
    try:
        a, b = await start_pair(redis_private.url)
        on_a, on_b, _ = await outage_with_message_kept_on_a(http, redis_private, view, a, b)

        with paused(b):
            redis_private.restart()
            await a.wait_ready(http, timeout=RECOVERY_TIMEOUT)
            await eventually(lambda: view.history_length("alerts:all") == 1, "A republished a1")
        await b.wait_ready(http, timeout=RECOVERY_TIMEOUT)
        await view.wait_numsub("alerts:all", 2)
        await publish(http, a, "alerts:all", alert(2))
        assert (await on_a.recv())["message"]["alert_id"] == "a2"
        frames = await raw_frames_until(on_b, b'"a2"')
        assert [orjson.loads(f)["message"]["alert_id"] for f in frames] == ["a1", "a2"], frames
        assert (await engine_stats(http, a))["lost"] == 0
        assert a.alive and b.alive
    finally:
        view.close()


async def _degraded(http, gw: GatewayProcess) -> tuple[int, dict[str, Any]] | None:
    status, body = await readyz(http, gw)
    return (status, body) if body.get("status") == "degraded" else None


# =========================================================================================
# 7. Malformed data in Redis
# =========================================================================================


async def queue_with_garbage(http, rview: RedisView, via: GatewayProcess, user: str) -> None:
    """The user's offline queue: notification #0, two corrupt entries, then #1 and #2."""
    await publish(http, via, notifications_of(user), notification(user, 0))
    await rview.wait_queue(user, 1)
    rview.client.rpush(KEYS.queue(notifications_of(user)), b"garbage", b"5|notanumber|{bad")
    for n in (1, 2):
        await publish(http, via, notifications_of(user), notification(user, n))
    await rview.wait_queue(user, 5)


async def test_corrupt_queue_entries_are_skipped_and_counted(start_pair, redis_url, rview, http):
    """Garbage in a user's offline queue (``garbage``, ``5|notanumber|{bad``) among real
    notifications: the real ones are replayed, and only they; each corrupt entry is counted
    as ``malformed.queue_entry``; the nodes stay up."""
    user = "rider-junk"
    a, b = await start_pair(redis_url)
    await queue_with_garbage(http, rview, b, user)
    _, frames = await connect_and_replay(http, a, user)
    check_replay(frames, user, ["#0", "#1", "#2"])
    assert (await engine_stats(http, a))["malformed"].get("queue_entry") == 2
    assert a.alive and b.alive


async def test_ack_removes_notifications_queued_behind_corrupt_entries(start_pair, redis_url, rview, http):
    """Acknowledging up to the last replayed seq removes every replayed notification, also
    those stored behind corrupt entries: the next connection gets no replay."""
    user = "rider-junk2"
    a, b = await start_pair(redis_url)
    await queue_with_garbage(http, rview, b, user)
    client, frames = await connect_and_replay(http, a, user)
    check_replay(frames, user, ["#0", "#1", "#2"])
    await client.ack(frames[-1]["upTo"])
    await client.close()
    _, frames = await connect_and_replay(http, b, user)
    assert [f.get("message", {}).get("message", {}).get("title") for f in frames] == [], \
        "acknowledged notifications replayed again"


async def test_corrupt_session_record_is_not_resumed(start_pair, redis_url, rview, http):
    """A session key holding garbage: ``recovered: false``, counted as ``malformed.session``."""
    a, b = await start_pair(redis_url)
    rview.client.set(KEYS.session("abc"), b"notjson")
    client = await Client.connect(http, b, "rider-abc")
    reply = await client.resume("abc")
    assert reply["recovered"] is False and reply["channels"] == []
    assert (await engine_stats(http, b))["malformed"].get("session") == 1
    assert await client.sync() == []
    assert a.alive and b.alive


@pytest.mark.parametrize("payload", [
    b"garbage",
    b"\xff\xfe\x00|||",
    b"service_alert|nodeX|0||{this is not json}",
], ids=["no-fields", "binary", "non-json-envelope"])
async def test_garbage_pubsub_payload_is_dropped(start_pair, redis_url, rview, http, payload):
    """A payload no gateway wrote, PUBLISHed on a subscribed channel: no client gets
    anything from it, the next real message still arrives, it is counted as
    ``malformed.pubsub_payload``, and the node stays up (not marked degraded)."""
    a, b = await start_pair(redis_url)
    full = await Client.connect(http, a, "rider-a")
    cellular = Client(await http.ws_connect(f"{a.ws_url('rider-c')}&profile=cellular"), {}, a)
    cellular.welcome = await cellular.recv()
    for client in (full, cellular):
        await client.subscribe("alerts:all")
    await rview.wait_numsub("alerts:all", 1)
    assert rview.client.publish(KEYS.pubsub("alerts:all"), payload) == 1
    await publish(http, b, "alerts:all", alert(7))
    got = {name: await raw_frames_until(client, b'"a7"')
           for name, client in (("full profile", full), ("cellular profile", cellular))}
    stats = await engine_stats(http, a)
    assert a.alive and b.alive
    assert {name: len(frames) for name, frames in got.items()} == {"full profile": 1, "cellular profile": 1}, got
    assert stats["malformed"].get("pubsub_payload") == 1, stats["malformed"]
    assert stats["ok"] is True and stats["outages"] == 0, stats


async def raw_frames_until(client: Client, marker: bytes, timeout: float = RECV_TIMEOUT) -> list[bytes]:
    """Raw text frames up to the first containing ``marker`` (or up to ``timeout`` of silence)."""
    frames: list[bytes] = []
    while True:
        try:
            msg = await client.ws.receive(timeout=timeout)
        except asyncio.TimeoutError:
            frames.append(b"(nothing more within %g s)" % timeout)
            return frames
        if msg.type != aiohttp.WSMsgType.TEXT:
            frames.append(f"({msg.type.name} {msg.data!r})".encode())
            return frames
        frames.append(msg.data.encode())
        if marker in frames[-1]:
            return frames


# =========================================================================================
# 8. Redis Cluster
# =========================================================================================


async def test_redis_cluster_routes_across_slots_and_queues_offline(start_pair, redis_cluster_url, http):
    """``--redis-cluster`` (sharded pub/sub): channels living on different cluster nodes
    carry messages from either gateway to the other; an offline notification is queued,
    replayed on the other node, acknowledged, and then delivered live."""
    view = RedisView(redis_cluster_url, cluster=True)
    try:
        channels = [f"route:{r}:UP" for r in ("335E", "500D", "201", "G4", "KIA-9", "V-356")]
        owners = {view.client.get_node_from_key(KEYS.pubsub(ch)).port for ch in channels}
        assert len(owners) >= 2, "the test channels should span several cluster nodes"

        a, b = await start_pair(redis_cluster_url, "--redis-cluster")
        on_a, on_b = await Client.connect(http, a, "rider-a"), await Client.connect(http, b, "rider-b")
        for client in (on_a, on_b):
            for ch in channels:
                await client.subscribe(ch)
        for ch in channels:
            await view.wait_numsub(ch, 2)

        for sender, receivers in ((b, (on_a, on_b)), (a, (on_a, on_b))):
            for n in range(3):
                for ch in channels:
                    await publish(http, sender, ch, location(n))
            for client in receivers:
                got = await client.channel_messages(3 * len(channels))
                for ch in channels:
                    assert [m["message"]["seq"] for m in got if m["channel"] == ch] == [0, 1, 2], (client.gw, ch)
                assert all("offset" in m for m in got)
            assert await on_a.sync() == [] and await on_b.sync() == []  # each message once

        user = "rider-cluster"
        for n in range(2):
            await publish(http, b, notifications_of(user), notification(user, n))
        await view.wait_queue(user, 2)
        client, frames = await connect_and_replay(http, a, user)
        check_replay(frames, user, ["#0", "#1"])
        await client.ack(frames[-1]["upTo"])
        await client.close()
        client, frames = await connect_and_replay(http, b, user)
        assert frames == []
        await view.wait_numsub(notifications_of(user), 1)
        await publish(http, a, notifications_of(user), notification(user, 2))
        live = await client.recv()
        assert live["type"] == "channel_message" and live["message"]["title"] == "#2"
        assert a.alive and b.alive
    finally:
        view.close()

