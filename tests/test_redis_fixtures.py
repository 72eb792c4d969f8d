"""The redis-server fixtures (tests/redis_server.py): real servers, started, emptied, killed, restarted."""

from __future__ import annotations

import socket

import pytest
import redis
import redis.cluster
import redis.utils

from tests.redis_server import RedisCluster, RedisServer, flushall, ping


def test_hiredis_parser_available():
    assert redis.utils.HIREDIS_AVAILABLE  # the project depends on redis[hiredis]


def test_redis_url_answers_and_starts_empty(redis_url):
    assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        assert client.dbsize() == 0
        client.set("k", "v")
        client.execute_command("SELECT", 3)
        client.set("k3", "v")
        flushall(redis_url)  # what the fixture does before each test: every database
        assert client.dbsize() == 0
        client.execute_command("SELECT", 0)
        assert client.get("k") is None


def test_redis_url_brings_back_a_killed_shared_server(redis_server, request):
    redis_server.kill9()
    assert not redis_server.running and redis_server.pid is None
    url = request.getfixturevalue("redis_url")
    assert url == redis_server.url and redis_server.running
    assert ping(redis_server.host, redis_server.port)


def test_private_server_kill9_and_restart_on_same_port(redis_private: RedisServer, redis_url):
    assert redis_private.url != redis_url  # not the shared one
    port, url, pid = redis_private.port, redis_private.url, redis_private.pid
    assert pid and redis_private.dir.is_dir()
    with redis.Redis.from_url(url) as client:
        client.set("k", "v")
    redis_private.kill9()
    assert redis_private.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((redis_private.host, port), timeout=1).close()
    with redis.Redis.from_url(url, socket_connect_timeout=1) as client, \
            pytest.raises(redis.ConnectionError):
        client.ping()
    redis_private.restart()
    assert (redis_private.port, redis_private.url) == (port, url)
    assert redis_private.pid not in (None, pid)
    with redis.Redis.from_url(url) as client:
        assert client.ping()
        assert client.get("k") is None  # nothing is persisted


def test_private_server_stop_then_start(redis_private: RedisServer):
    redis_private.stop()
    assert not ping(redis_private.host, redis_private.port)
    redis_private.start()
    assert ping(redis_private.host, redis_private.port)


def test_cluster_is_ok_and_spreads_keys(redis_cluster: RedisCluster, redis_cluster_url):
    assert len(redis_cluster.nodes) == 3 and redis_cluster_url == redis_cluster.nodes[0].url
    for node in redis_cluster.nodes:
        with redis.Redis.from_url(node.url) as client:
            assert client.cluster("INFO")["cluster_state"] == "ok"
            assert client.dbsize() == 0
    with redis.cluster.RedisCluster.from_url(redis_cluster_url) as cluster:
        keys = ["a", "b", "c"]
        for key in keys:
            cluster.set(key, f"value-{key}")
        assert [cluster.get(key) for key in keys] == [b"value-a", b"value-b", b"value-c"]
        owners = {cluster.get_node_from_key(key).port for key in keys}
        assert len(owners) > 1
        assert owners <= {node.port for node in redis_cluster.nodes}


def test_cluster_sharded_pubsub(redis_cluster_url):
    with redis.cluster.RedisCluster.from_url(redis_cluster_url) as cluster:
        pubsub = cluster.pubsub()
        try:
            pubsub.ssubscribe("fastgw-test")
            first = pubsub.get_sharded_message(timeout=5)
            assert first and first["type"] == "ssubscribe"
            assert cluster.spublish("fastgw-test", "hello") == 1
            message = pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=5)
            assert message and message["data"] == b"hello"
        finally:
            pubsub.close()
