"""Kafka source: aiokafka consumers, one consumer group per role, at-least-once, dead letters.

Each role (``location``, ``alerts``, ``notifications``, ``user_events``) has its own
topic and consumer group. A consumer takes a batch of records, runs each through
its role's processor (``fastgw.processing``) and publishes the outputs on the hub;
a record the processor rejects is written to the dead-letter topic with the reason
in its headers. Only when every record of the batch has been published or
dead-lettered are the offsets committed, so a crash or a broker outage replays
records (at least once) and loses none.

If the broker is down — at start-up or mid-stream — consumers retry with
exponential backoff and resume from the committed offsets; the gateway keeps
serving WebSocket clients meanwhile.

Consumer lag (records behind the high watermark, per partition) is refreshed after
every poll into ``KafkaStats.lag``, a plain dict read by ``fastgw.metrics``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

__all__ = ["KafkaSettings", "KafkaSource", "DEFAULT_TOPICS", "KafkaStats"]

log = logging.getLogger("fastgw.kafka")

#: role → topic (the seed's topic names)
DEFAULT_TOPICS: dict[str, str] = {
    "location": "location-updates",
    "alerts": "service-alerts",
    "notifications": "system-notifications",
    "user_events": "user-events",
}

Publish = Callable[[str, dict[str, Any]], object]


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    topics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    #: Consumer group of role R is ``{group_prefix}.{R}``.
    group_prefix: str = "fastgw"
    dlq_topic: str = "fastgw.dlq"
    max_batch: int = 500
    poll_timeout_ms: int = 200
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


@dataclass
class KafkaStats:
    records: Counter[str] = field(default_factory=Counter)  # by role
    published: Counter[str] = field(default_factory=Counter)  # outputs, by role
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    dead_lettered: int = 0
    commits: int = 0
    reconnects: int = 0
    #: role → {(topic, partition): records not yet committed}: the partition's high
    #: watermark minus the consumer's position, plus the records of the batch in hand
    #: (they count until committed). Refreshed after every poll; a role's entry is
    #: dropped while its consumer is down (the lag is unknown then, not zero).
    lag: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    #: role → True while its consumer is started and polling.
    up: dict[str, bool] = field(default_factory=dict)


class KafkaSource:
    """Runs the consumers until cancelled. ``await source.run()`` in a task."""

    def __init__(
        self,
        settings: KafkaSettings,
        publish: Publish,
        processors: Mapping[str, Any],
        *,
        stats: KafkaStats | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        unknown = set(settings.topics) - set(processors)
        if unknown:
            raise ValueError(f"no processor for role(s) {sorted(unknown)}")
        self.settings = settings
        self.publish = publish
        self.processors = processors
        self.stats = stats or KafkaStats()
        #: Awaited before each commit: the engine has accepted everything published
        #: (with Redis: published, queued for offline users, kept in history).
        self.settle = settle
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        self._stopping = False

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._run_role(role, topic), name=f"fastgw-kafka-{role}")
            for role, topic in self.settings.topics.items()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._producer is not None:
                await _quietly(self._producer.stop())

    def stop(self) -> None:
        """Finish the batch in hand, commit it, and return from :meth:`run` (graceful drain).

        Each consumer ends after its current batch is published, settled and committed
        (or after an empty poll, ``poll_timeout_ms``); cancel the task for a hard stop.
        """
        self._stopping = True

    # --- one role ------------------------------------------------------------------

    async def _run_role(self, role: str, topic: str) -> None:
        """Consume ``topic`` forever; on broker errors back off and start again."""
        from aiokafka.errors import KafkaError

        backoff = self.settings.backoff_initial
        while not self._stopping:
            consumer = self._consumer(role, topic)
            try:
                await consumer.start()
                log.info("kafka: consuming %s as group %s.%s", topic, self.settings.group_prefix, role,
                         extra={"role": role, "topic": topic})
                self.stats.up[role] = True
                backoff = self.settings.backoff_initial
                await self._consume(role, consumer)
                if self._stopping:
                    log.info("kafka: %s consumer stopped after its last commit", role, extra={"role": role})
                    return
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                self.stats.reconnects += 1
                log.warning("kafka: %s consumer: %s; retrying in %.1fs", role, exc, backoff,
                            extra={"role": role, "topic": topic})
            finally:
                self.stats.up[role] = False
                self.stats.lag.pop(role, None)
                await _quietly(consumer.stop())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.backoff_max)

    def _consumer(self, role: str, topic: str) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.bootstrap,
            group_id=f"{self.settings.group_prefix}.{role}",
            enable_auto_commit=False,  # committed by hand, after publishing
            auto_offset_reset="earliest",
            max_poll_records=self.settings.max_batch,
        )

    async def _consume(self, role: str, consumer: Any) -> None:
        processor = self.processors[role]
        while not self._stopping:
            batches = await consumer.getmany(
                timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch
            )
            await self._refresh_lag(role, consumer, batches)
            if not batches:
                continue
            for records in batches.values():
                for record in records:
                    await self._handle(role, processor, record)
            if self.settle is not None:
                await self.settle()
            await consumer.commit()  # everything above is published or dead-lettered
            self.stats.commits += 1

    async def _refresh_lag(self, role: str, consumer: Any, batches: Mapping[Any, list[Any]]) -> None:
        """``stats.lag[role]``: per assigned partition, high watermark − position + the
        records of ``batches`` (fetched, not yet committed). Partitions without a fetch
        response yet (no known high watermark) are left out."""
        from aiokafka.errors import IllegalStateError, KafkaError

        lag: dict[tuple[str, int], int] = {}
        try:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                position = await consumer.position(tp)  # known once fetched: no round trip
                in_hand = len(batches.get(tp, ()))
                lag[(tp.topic, tp.partition)] = max(0, highwater - position) + in_hand
        except (IllegalStateError, KafkaError, AssertionError):  # rebalancing: next poll
            return
        self.stats.lag[role] = lag

    async def _handle(self, role: str, processor: Any, record: Any) -> None:
        from fastgw.processing.pipeline import Rejected

        self.stats.records[role] += 1
        try:
            outputs = processor.process(record.value or b"", record.key, record.timestamp)
        except Rejected as exc:
            await self._dead_letter(record, exc.reason, exc.detail)
            return
        except Exception as exc:  # a processor bug must not stop the stream
            log.exception("kafka: %s processor failed on %s[%d]@%d", role, record.topic, record.partition, record.offset)
            await self._dead_letter(record, "internal_error", repr(exc))
            return
        for output in outputs:
            try:
                self.publish(output.channel, output.message)
            except Exception as exc:  # an output the gateway cannot encode: dead-letter, keep going
                log.exception("kafka: %s output for %s could not be published", role, output.channel)
                await self._dead_letter(record, "internal_error", repr(exc))
                return
        self.stats.published[role] += len(outputs)

    # --- dead letters ---------------------------------------------------------------

    async def _dead_letter(self, record: Any, reason: str, detail: str) -> None:
        """Write ``record`` to the DLQ (waiting for the broker's ack) before it is committed."""
        self.stats.rejected[reason] += 1
        headers = [
            ("fastgw-reason", reason.encode()),
            ("fastgw-detail", detail.encode("utf-8", "replace")[:1000]),
            ("fastgw-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        producer = await self._dlq_producer()
        await producer.send_and_wait(self.settings.dlq_topic, value=record.value, key=record.key, headers=headers)
        self.stats.dead_lettered += 1

    async def _dlq_producer(self) -> Any:
        async with self._producer_lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, acks="all")
                await producer.start()
                self._producer = producer
            return self._producer


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:  # closing after a failure: nothing useful to do with the error
        pass
