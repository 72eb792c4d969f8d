"""No cross-user leakage: a property test against a real gateway over real WebSockets.

Per example: 5-20 users (some on two devices, plus anonymous clients) subscribe to
random channels: their own notification channel, other users' (refused with
``forbidden``), public ones. Notifications to random users and public messages are
published through ``POST /api/publish``. Then a ping per connection (its ``pong`` comes
after every frame published before it: the in-memory broker delivers synchronously and
the ``full`` profile writes at once), and each connection must hold exactly what was
addressed to its subscriptions, in order, and nothing of anybody else's. Finally every
user reconnects: the offline queue replays only that user's own notifications, exactly
those published while none of their devices was subscribed.

One gateway per test function, reused across examples; user ids carry a per-example
prefix, so examples do not see each other's queues. Ids are drawn from the full id
grammar (case, ``.``, ``-``, ``_``): ``u.A`` and ``u.a`` are different users.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import eventually, token

PUBLIC = ("route:500-D:UP", "route:335-E:all", "alerts:all", "stop:20823:arrivals", "leaderboard:daily")
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_examples = itertools.count()


@dataclass
class Client:
    user: int | None  # index into the users; None: anonymous
    own: bool  # subscribes to its own notification channel
    others: list[int]  # other users' channels it tries (refused)
    public: list[str]
    order_seed: int
    ws: aiohttp.ClientWebSocketResponse | None = None
    frames: list[dict] = field(default_factory=list)


@st.composite
def scenarios(draw):
    # near-collisions ("a", "A", "a.", "a-b") as often as arbitrary ids of the grammar
    suffix = st.one_of(st.from_regex(r"[aA][aAbB._\-]{0,2}", fullmatch=True),
                       st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}", fullmatch=True))
    suffixes = draw(st.lists(suffix, min_size=5, max_size=20, unique=True))
    n = len(suffixes)
    clients = []
    for user in range(n):
        for _ in range(draw(st.integers(1, 2))):  # one or two devices
            others = draw(st.lists(st.integers(0, n - 1).filter(lambda o, u=user: o != u), max_size=3, unique=True))
            clients.append(Client(user, draw(st.booleans()), others,
                                  draw(st.lists(st.sampled_from(PUBLIC), max_size=3, unique=True)),
                                  draw(st.integers(0, 2**16))))
    for _ in range(draw(st.integers(0, 2))):  # anonymous clients try user channels too
        others = draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True))
        clients.append(Client(None, False, others, draw(st.lists(st.sampled_from(PUBLIC), max_size=2, unique=True)),
                              draw(st.integers(0, 2**16))))
    publishes = draw(st.lists(st.one_of(st.tuples(st.just("user"), st.integers(0, n - 1)),
                                        st.tuples(st.just("public"), st.sampled_from(PUBLIC))),
                              min_size=1, max_size=50))
    return suffixes, clients, publishes


@pytest.fixture
async def leak_gateway(start_gateway):
    return await start_gateway(
        allow_anonymous=True,
        connect_rate_per_ip=1e9, connect_burst_per_ip=10**9, connect_rate=1e9, connect_burst=10**9,
    )


async def read_until_pong(ws: aiohttp.ClientWebSocketResponse, pong_id: str) -> list[dict]:
    frames = []
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        frame = msg.json()
        if frame["type"] == "pong" and frame["id"] == pong_id:
            return frames
        frames.append(frame)


@given(scenario=scenarios())
@SETTINGS
async def test_a_user_receives_only_their_own_notifications(leak_gateway, scenario):
    gw = leak_gateway
    suffixes, clients, publishes = scenario
    example = next(_examples)
    users = [f"x{example}.{suffix}" for suffix in suffixes]
    channel_of = [f"user:{u}:notifications" for u in users]
    port = gw.port
    admin = {"Authorization": f"Bearer {token('ops', admin=True)}"}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def connect(client: Client) -> None:
            query = f"?token={token(users[client.user])}" if client.user is not None else ""
            client.ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws{query}")
            assert (await client.ws.receive_json(timeout=10))["type"] == "welcome"
            # the subscriptions, in a random order; replies come back in request order
            requests = [("own", channel_of[client.user])] if client.own else []
            requests += [("other", channel_of[o]) for o in client.others]
            requests += [("public", name) for name in client.public]
            random.Random(client.order_seed).shuffle(requests)
            for i, (_, channel) in enumerate(requests):
                await client.ws.send_json({"type": "subscribe", "id": str(i), "channel": channel})
            for i, (kind, channel) in enumerate(requests):
                reply = await client.ws.receive_json(timeout=10)
                assert reply["id"] == str(i)
                if kind == "other":
                    assert reply["type"] == "error" and reply["code"] == "forbidden", reply
                else:
                    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply

        await asyncio.gather(*(connect(c) for c in clients))

        # --- live: publish through the API --------------------------------------------------
        sent_user: list[list[str]] = [[] for _ in users]  # notification ids per user, in order
        sent_public: dict[str, list[str]] = {name: [] for name in PUBLIC}
        for k, (kind, target) in enumerate(publishes):
            if kind == "user":
                nid = f"n{example}-{k}"
                message = {"type": "user_notification", "notification_id": nid, "user_id": users[target],
                           "title": f"for {users[target]}"}
                channel = channel_of[target]
                sent_user[target].append(nid)
            else:
                nid = f"a{example}-{k}"
                message = {"type": "service_alert", "alert_id": nid, "title": "public"}
                channel = target
                sent_public[target].append(nid)
            async with session.post(f"http://127.0.0.1:{port}/api/publish", headers=admin,
                                    json={"channel": channel, "message": message}) as r:
                assert r.status == 200, await r.text()

        async def drain(client: Client) -> None:
            await client.ws.send_json({"type": "ping", "id": "fin"})
            client.frames = await read_until_pong(client.ws, "fin")

        await asyncio.gather(*(drain(c) for c in clients))

        for client in clients:
            me = users[client.user] if client.user is not None else None
            got_user: list[str] = []
            got_public: dict[str, list[str]] = {name: [] for name in PUBLIC}
            for frame in client.frames:
                assert frame["type"] == "channel_message", frame  # nothing queued: fresh users
                channel, message = frame["channel"], frame["message"]
                if channel.startswith("user:"):
                    assert channel == f"user:{me}:notifications", (me, frame)  # THE property
                    assert message["user_id"] == me, (me, frame)
                    got_user.append(message["notification_id"])
                else:
                    assert channel in client.public, (client.public, frame)
                    got_public[channel].append(message["alert_id"])
            expected_user = sent_user[client.user] if client.user is not None and client.own else []
            assert got_user == expected_user, me  # exactly, in publish order, no duplicates
            for name in PUBLIC:
                assert got_public[name] == (sent_public[name] if name in client.public else []), name

        for client in clients:
            await client.ws.close()
        assert await eventually(lambda: not gw.connections)
        assert gw.hub.channels() == {}

        # --- offline: each user reconnects and gets only their own queued notifications --------
        subscribed_live = {c.user for c in clients if c.user is not None and c.own}

        async def reconnect(user: int) -> None:
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws?token={token(users[user])}")
            try:
                assert (await ws.receive_json(timeout=10))["type"] == "welcome"
                await ws.send_json({"type": "subscribe", "id": "own", "channel": channel_of[user]})
                await ws.send_json({"type": "ping", "id": "fin"})
                frames = await read_until_pong(ws, "fin")
                assert frames[0]["type"] == "subscribed", frames[0]
                queued = [f for f in frames[1:] if f["type"] == "queued_message"]
                for f in queued:
                    envelope = f["message"]
                    assert envelope["channel"] == channel_of[user], (users[user], f)
                    assert envelope["message"]["user_id"] == users[user], (users[user], f)
                expected = [] if user in subscribed_live else sent_user[user]
                assert [f["message"]["message"]["notification_id"] for f in queued] == expected, users[user]
                if expected:
                    assert frames[-1]["type"] == "queue_sync_complete"
                    assert frames[-1]["message_count"] == len(expected)
                    await ws.send_json({"type": "ack", "upTo": frames[-1]["upTo"]})
                    await ws.send_json({"type": "ping", "id": "acked"})
                    await read_until_pong(ws, "acked")
                else:
                    assert len(frames) == 1, frames
            finally:
                await ws.close()

        await asyncio.gather(*(reconnect(u) for u in range(len(users))))
        for user in range(len(users)):
            assert await gw.offline.pending(users[user]) == []
    assert await eventually(lambda: not gw.connections)
    assert gw.hub.channels() == {}
