"""``fastgw simulate --kafka``: the simulator's buses as location reports on a Kafka topic.

The embedded simulator publishes ``location_update`` payloads straight to the hub;
here the same buses (same code, same timetable) become ``LocationData`` records —
what crowdsourcing apps send — produced to ``location-updates`` keyed by route, as
JSON or as GTFS-Realtime ``FeedMessage`` protobufs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any, Literal

from fastgw.sources.simulator import Simulator

__all__ = ["location_data", "produce_reports"]

log = logging.getLogger("fastgw.simulate")

Format = Literal["json", "gtfs-rt"]


def location_data(update: dict[str, Any]) -> dict[str, Any]:
    """A simulator ``location_update`` as the ``LocationData`` record of docs/ingest.md."""
    observed = datetime.fromisoformat(update["timestamp"].replace("Z", "+00:00")).timestamp()
    record = {
        "vehicle_id": update["vehicle_id"],
        "route_id": update["route_id"],
        "direction": update["direction"],
        "latitude": update["latitude"],
        "longitude": update["longitude"],
        "speed": update["speed"],
        "heading": update["heading"],
        "accuracy": update["accuracy"],
        "timestamp": int(observed * 1000),
        "contributor_count": update["contributor_count"],
        "confidence": update["confidence"],
        "source": "simulator",
    }
    if "trip_id" in update:
        record["trip_id"] = update["trip_id"]
    return record


def _collect_route_reports(sim_out: list[dict[str, Any]]):
    """A publish callback keeping one report per bus (the ``route:{id}:{dir}`` copy)."""

    def publish(channel: str, message: dict[str, Any]) -> None:
        if channel.count(":") == 2 and not channel.endswith(":all"):
            sim_out.append(message)

    return publish


async def produce_reports(
    bootstrap: str,
    *,
    topic: str = "location-updates",
    buses: int = 200,
    rate: float = 200.0,
    fmt: Format = "json",
    duration: float = 60.0,
    seed: int | None = None,
) -> int:
    """Produce about ``rate`` reports per second from ``buses`` simulated buses for
    ``duration`` seconds (bounded). Returns the number of records produced."""
    import orjson
    from aiokafka import AIOKafkaProducer

    batch: list[dict[str, Any]] = []
    sim = Simulator(_collect_route_reports(batch), max_buses=buses, seed=seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    produced = 0
    period = max(0.05, buses / rate) if rate > 0 else 1.0
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            tick = time.monotonic()
            batch.clear()
            sim.step(time.time())
            records = [location_data(update) for update in batch]
            if fmt == "gtfs-rt":
                from fastgw.processing.gtfs_rt import encode_vehicle_positions

                by_route: dict[str, list[dict[str, Any]]] = {}
                for record in records:
                    by_route.setdefault(record["route_id"], []).append(record)
                for route_id, group in by_route.items():
                    await producer.send(topic, value=encode_vehicle_positions(group), key=route_id.encode())
            else:
                for record in records:
                    await producer.send(topic, value=orjson.dumps(record), key=record["route_id"].encode())
            produced += len(records)
            await asyncio.sleep(max(0.0, period - (time.monotonic() - tick)))
        await producer.flush()
    finally:
        await producer.stop()
    log.info("produced %d location reports to %s", produced, topic)
    return produced
