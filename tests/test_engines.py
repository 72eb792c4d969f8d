"""One contract, every engine: memory, Redis, and Redis Cluster (real redis-server processes).

Each test drives an engine through the interfaces of ``fastgw.engines.base`` only,
so the memory engine (the reference) and the Redis engine are held to the same
behaviour: routing, history and recovery, offline queue, sessions, presence.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from fastgw.config import Config
from fastgw.engines.base import SessionRecord
from fastgw.engines.memory import MemoryEngine

_nodes = itertools.count(1)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_engine(request):
    """``await make_engine(**config)`` → a started engine (a new node each call)."""
    engines = []

    async def make(**options):
        node_id = f"node{next(_nodes)}"
        if request.param == "memory":
            engine = MemoryEngine(node_id=node_id, **{k: v for k, v in options.items() if k != "heartbeat"})
        else:
            from fastgw.engines.redis import RedisEngine

            url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
            engine = RedisEngine(Config(redis=url, redis_cluster=request.param == "cluster", node_id=node_id,
                                        simulator=False, **options))
        await engine.start(dict, list)
        engines.append(engine)
        return engine

    make.kind = request.param
    yield make
    for engine in engines:
        await engine.close()


class Recorder:
    def __init__(self, engine) -> None:
        self.got: list[tuple[str, str, bytes, str | None]] = []
        engine.broker.set_handler(self.deliver)

    def deliver(self, *args) -> int:
        self.got.append(args)
        return 1  # taken by one connection

    async def wait(self, n: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.got


async def settle() -> None:
    """Let batched subscription changes reach Redis (one loop turn plus a round trip)."""
    await asyncio.sleep(0.2)


def env(i: int) -> bytes:
    return b'{"type":"channel_message","n":%d}' % i


async def test_delivers_only_subscribed_channels_with_increasing_positions(make_engine):
    engine = await make_engine()
    rec = Recorder(engine)
    engine.broker.subscribe("route:335E:UP")
    await settle()
    for i in range(5):
        engine.broker.publish("route:335E:UP", "location_update", env(i))
        engine.broker.publish("route:500D:UP", "location_update", env(100 + i))  # nobody here wants it
    await engine.broker.flush()
    got = await rec.wait(5)
    await asyncio.sleep(0.1)
    assert [g[2] for g in got] == [env(i) for i in range(5)]
    assert {g[0] for g in got} == {"route:335E:UP"}
    positions = [tuple(int(p) for p in g[3].split("-")) for g in got]
    assert positions == sorted(positions) and len(set(positions)) == 5


async def test_messages_cross_nodes_and_unsubscribe_stops_them(make_engine):
    a, b = await make_engine(), await make_engine()
    rec_a, rec_b = Recorder(a), Recorder(b)
    a.broker.subscribe("alerts:all")
    b.broker.subscribe("alerts:all")
    await settle()
    b.broker.publish("alerts:all", "service_alert", env(1))
    await b.broker.flush()
    if make_engine.kind == "memory":  # nodes of the memory engine share nothing
        assert (await rec_b.wait(1))[0][2] == env(1) and rec_a.got == []
        return
    assert (await rec_a.wait(1))[0][2] == env(1) and (await rec_b.wait(1))[0][2] == env(1)
    a.broker.unsubscribe("alerts:all")
    await settle()
    b.broker.publish("alerts:all", "service_alert", env(2))
    await b.broker.flush()
    await rec_b.wait(2)
    await asyncio.sleep(0.1)
    assert len(rec_a.got) == 1


async def test_history_recovers_what_came_after_a_position(make_engine):
    engine = await make_engine(history_size=50)
    rec = Recorder(engine)
    engine.broker.subscribe("route:1:UP")
    await settle()
    for i in range(3):
        engine.broker.publish("route:1:UP", "service_alert", env(i))
    await engine.broker.flush()
    got = await rec.wait(3)
    found = await engine.history.since("route:1:UP", got[0][3])
    assert found.recovered and [e[2] for e in found.entries] == [env(1), env(2)]
    assert [e[0] for e in found.entries] == [got[1][3], got[2][3]]
    assert await engine.history.position("route:1:UP") == got[2][3]
    nothing = await engine.history.since("route:1:UP", got[2][3])
    assert nothing.recovered and nothing.entries == []


async def test_history_says_when_messages_were_trimmed(make_engine):
    engine = await make_engine(history_size=5)
    rec = Recorder(engine)
    engine.broker.subscribe("route:2:UP")
    await settle()
    engine.broker.publish("route:2:UP", "service_alert", env(0))
    await engine.broker.flush()
    first = (await rec.wait(1))[0][3]
    for i in range(1, 400):  # far beyond the history (Redis trims approximately: ~100-entry nodes)
        engine.broker.publish("route:2:UP", "service_alert", env(i))
    await engine.broker.flush()
    found = await engine.history.since("route:2:UP", first)
    assert found.recovered is False
    assert (await engine.history.since("route:2:UP", "not-a-position")).recovered is False


async def test_history_is_kept_without_subscribers(make_engine):
    """A session whose last subscriber left can still recover what was published meanwhile."""
    engine = await make_engine()
    start = await engine.history.position("route:3:UP")
    engine.broker.publish("route:3:UP", "service_alert", env(7))
    await engine.broker.flush()
    found = await engine.history.since("route:3:UP", start)
    assert found.recovered and [e[2] for e in found.entries] == [env(7)]


async def test_offline_queue_keeps_newest_until_acknowledged(make_engine):
    engine = await make_engine(offline_max_messages=3)
    for i in range(5):
        engine.broker.publish("user:u1:notifications", "user_notification", env(i))
    await engine.broker.flush()
    pending = await engine.offline.pending("u1")
    assert [e for _, e in pending] == [env(2), env(3), env(4)]  # newest 3, oldest first
    seqs = [s for s, _ in pending]
    assert seqs == sorted(seqs)
    assert await engine.offline.pending("u1") == pending  # reading does not consume
    assert await engine.offline.ack("u1", seqs[1]) == 2
    assert [e for _, e in await engine.offline.pending("u1")] == [env(4)]
    assert await engine.offline.pending("nobody") == []


async def test_notification_with_a_live_subscriber_is_not_queued(make_engine):
    a, b = await make_engine(), await make_engine()
    rec = Recorder(a)
    a.broker.subscribe("user:u2:notifications")
    await settle()
    source = a if make_engine.kind == "memory" else b  # with Redis: published on another node
    source.broker.publish("user:u2:notifications", "user_notification", env(1))
    await source.broker.flush()
    got = await rec.wait(1)
    assert got[0][2] == env(1) and got[0][3] is None  # no history position: the queue covers it
    assert await source.offline.pending("u2") == []


async def test_offline_queue_expires(make_engine):
    engine = await make_engine(offline_retention=1.0)
    engine.broker.publish("user:u3:notifications", "user_notification", env(1))
    await engine.broker.flush()
    assert len(await engine.offline.pending("u3")) == 1
    await asyncio.sleep(2.2)  # Redis stores whole seconds
    assert await engine.offline.pending("u3") == []


async def test_session_is_taken_once(make_engine):
    a, b = await make_engine(), await make_engine()
    record = SessionRecord("u9", {"route:1:UP": None, "alerts:all": frozenset({"service_alert"})}, {"route:1:UP": "5-0"})
    await a.sessions.save("s1", record)
    if make_engine.kind != "memory":
        await asyncio.sleep(0.05)
        a = b  # another node finds it
    assert await a.sessions.take("s1", "someone-else") is None  # not theirs, and still there
    got = await a.sessions.take("s1", "u9")
    assert got is not None and got.user_id == "u9"
    assert got.subscriptions == record.subscriptions and got.positions == record.positions
    assert await a.sessions.take("s1", "u9") is None
    assert await a.sessions.take("never", "u9") is None


async def test_presence_and_cluster_wide_counts(make_engine):
    a, b = await make_engine(), await make_engine()
    a.presence.connected("sa", "u5", "android")
    b.presence.connected("sb", "u5", "ios")
    await settle()
    if make_engine.kind == "memory":
        assert await a.presence.user_presence("u5") == {"online": True, "devices": 1}
        assert await a.presence.subscriber_count("alerts:all", 1) == 1
        return
    await a.presence.register()
    await b.presence.register()
    assert await a.presence.user_presence("u5") == {"online": True, "devices": 2}
    assert await a.presence.subscriber_count("alerts:all", 1) == 1
    assert await b.presence.subscriber_count("alerts:all", 2) == 3
    nodes = {i["node"] for i in await a.presence.instances()}
    assert {a.presence.node_id, b.presence.node_id} <= nodes
    b.presence.disconnected("sb", "u5")
    b.presence.count_changed("alerts:all", 0)
    await settle()
    assert await a.presence.user_presence("u5") == {"online": True, "devices": 1}
    assert await a.presence.subscriber_count("alerts:all", 1) == 1


async def test_a_dead_instance_expires_from_the_registry_and_the_counts(make_engine):
    """A node that vanishes without deregistering (kill -9) drops out after three refresh
    periods: from ``instances`` and from cluster-wide subscriber counts."""
    if make_engine.kind == "memory":
        pytest.skip("one node: there is no registry")
    a, doomed = await make_engine(instance_refresh=0.2), await make_engine(instance_refresh=0.2)
    await a.presence.register()
    await doomed.presence.register()
    assert await a.presence.subscriber_count("alerts:all", 1) == 1
    assert await doomed.presence.subscriber_count("alerts:all", 4) == 5
    doomed.presence._task.cancel()  # dies: no more refreshes, no deregistration
    doomed.link.up = False  # and its close() will not clean up after it
    nodes = {i["node"] for i in await a.presence.instances()}
    assert doomed.presence.node_id in nodes
    await asyncio.sleep(0.9)  # > 3 x 0.2 s
    await a.presence.register()
    assert doomed.presence.node_id not in {i["node"] for i in await a.presence.instances()}
    assert await a.presence.subscriber_count("alerts:all", 1) == 1
