"""Smoke tests of the real Kafka broker that tests/kafka_broker.py provides (scripts/kafka.sh)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PARTITIONS = 3


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
        # wait until every partition has a leader, so the first produce does not bounce
        deadline = time.monotonic() + 15
        while True:
            (desc,) = await admin.describe_topics([topic])
            parts = desc["partitions"]
            if len(parts) == PARTITIONS and all(p["leader"] >= 0 for p in parts):
                return
            assert time.monotonic() < deadline, f"no leaders for {topic}: {desc}"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=value) for value in values]
        await producer.flush()
        for future in futures:
            await future  # raises if a record was not acknowledged
    finally:
        await producer.stop()


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} records"
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            got.extend(record.value for record in records)
    return got


async def _committed(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int | None]:
    return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}


def test_bootstrap_is_loopback(kafka_bootstrap):
    host, _, port = kafka_bootstrap.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0


async def test_produce_consume_commit_100(kafka_bootstrap):
    topic, group = _name("smoke"), _name("smoke-group")
    await _create_topic(kafka_bootstrap, topic)
    sent = [f"record-{i}".encode() for i in range(100)]
    await _produce(kafka_bootstrap, topic, sent)

    consumer = _consumer(kafka_bootstrap, topic, group)
    await consumer.start()
    try:
        got = await _consume(consumer, len(sent))
        await consumer.commit()
        committed = await _committed(consumer, topic)
    finally:
        await consumer.stop()

    assert sorted(got) == sorted(sent)  # all of them, each once
    assert sum(offset or 0 for offset in committed.values()) == len(sent)
    # keyed records spread over the partitions
    assert sum(1 for offset in committed.values() if offset) >= 2


async def test_committed_offsets_survive_broker_restart(kafka_bootstrap, kafka_control):
    topic, group = _name("restart"), _name("restart-group")
    await _create_topic(kafka_bootstrap, topic)
    first = [f"before-{i}".encode() for i in range(30)]
    await _produce(kafka_bootstrap, topic, first)

    consumer = _consumer(kafka_bootstrap, topic, group)
    await consumer.start()
    try:
        assert sorted(await _consume(consumer, len(first))) == sorted(first)
        await consumer.commit()
        before = await _committed(consumer, topic)
    finally:
        await consumer.stop()
    assert sum(before.values()) == len(first)

    await kafka_control.stop()
    host, _, port = kafka_bootstrap.rpartition(":")
    with socket.socket() as probe:  # really down
        assert probe.connect_ex((host, int(port))) != 0
    await kafka_control.start()
    assert kafka_control.bootstrap == kafka_bootstrap

    after_restart = [f"after-{i}".encode() for i in range(10)]
    await _produce(kafka_bootstrap, topic, after_restart)
    consumer = _consumer(kafka_bootstrap, topic, group)
    await consumer.start()
    try:
        assert await _committed(consumer, topic) == before  # the commit survived
        # the group resumes at its committed offsets: only the new records arrive
        got = await _consume(consumer, len(after_restart))
        await asyncio.sleep(0.5)
        got += [r.value for rs in (await consumer.getmany(timeout_ms=200)).values() for r in rs]
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(after_restart)
