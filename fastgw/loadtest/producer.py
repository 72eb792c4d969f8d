"""The ``bmtc`` scenario's producer: simulated BMTC location reports to Kafka at a fixed rate.

Run as ``python -m fastgw.loadtest.producer`` by :mod:`fastgw.loadtest.bmtc` (a process of
its own, so that producing never delays the controller's event loop; stopped by pid).
Control is one JSON object per line on stdin, events are JSON lines on stdout:

* first line: the configuration ``{"bootstrap", "topic", "rate", "duration", "buses", "seed",
  "warm_route", "windows_ms"}``; the records are built (see below), the aiokafka producer is
  started and the topic's partitions are read → ``{"ev":"ready","records":N,"partitions":[...],...}``
* ``{"cmd":"warm"}``: every 0.5 s, one warm-up record to *each* partition (vehicle
  ``LTWARM-<partition>-<n>`` on ``warm_route``, an explicit partition), until ``go``: the
  gateway's consumers are assigned when a client has seen one from every partition
* ``{"cmd":"go"}`` → ``{"ev":"started","t_ns":...}``, then ``rate`` records per second for
  ``duration`` seconds (record *i* due at start + *i*/rate), ``{"ev":"tick","produced":n}``
  every 0.5 s, and ``{"ev":"done",...}`` with what was produced (see :func:`Producer.result`)
* ``{"cmd":"quit"}`` or the end of stdin: stop (the producer is flushed and closed).

The records are the simulator's (:class:`fastgw.sources.simulator.Simulator`, the code of
``fastgw simulate``) with the simulated clock pinned to Monday 08:30 IST, so ~730 of
1,000 buses run on 39 routes whatever the time of day. One simulator step per simulated
second, turned into JSON ``LocationData`` with :func:`fastgw.sources.reports.location_data`,
keyed by ``route_id`` (as ``fastgw simulate``), all built before the clock starts.

Each record's ``timestamp`` is the produce wall clock (``time.time()`` in epoch ms, taken
right before ``send()``): the gateway carries it into the ``location_update`` and the
``stop_arrival`` messages it makes of the record, so a client computes the end-to-end
latency from it. It is kept strictly increasing per vehicle (+1 ms when two reports of one
bus fall in the same millisecond: the gateway drops a report that is not newer), and
``bumped`` counts those.

The gateway turns each accepted record into exactly one ``location_update`` on
``route:<route_id>:<direction>`` (``fastgw.processing.location``), so the producer counts
the records the broker acknowledged per route direction: what every subscriber of that
channel must receive. ``conflatable`` counts, per channel and batching profile, the
reports that follow the same bus's previous report on that channel by less than the
profile's window + 200 ms: those a ``cellular``/``slow`` subscriber may get conflated
(the newer location of a bus replaces the older one queued in the same window).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from fastgw.loadtest.child import stdio_channel

__all__ = ["START_SIM", "WARM_PREFIX", "build_records", "Producer", "main"]

#: Monday 2026-11-30 08:30:00 IST: every route with trips is running (as benchmarks/test_bench_kafka_e2e.py)
START_SIM = 1_796_007_600.0
#: vehicle ids of the warm-up records: ``LTWARM-<partition>-<n>``
WARM_PREFIX = "LTWARM-"
#: added to a profile's window when counting the reports that may be conflated
CONFLATION_SLACK_MS = 200


def build_records(total: int, buses: int, seed: int) -> list[dict[str, Any]]:
    """``total`` ``LocationData`` records from the simulator at Monday 08:30 IST, one step per
    simulated second (bounded: at most 100,000 steps)."""
    from fastgw.sources.reports import _collect_route_reports, location_data
    from fastgw.sources.simulator import Simulator

    batch: list[dict[str, Any]] = []
    sim = Simulator(_collect_route_reports(batch), max_buses=buses, seed=seed)
    records: list[dict[str, Any]] = []
    step = 0
    while len(records) < total and step < 100_000:
        batch.clear()
        sim.step(START_SIM + step)
        records.extend(location_data(u) for u in batch)
        step += 1
        if step >= 10 and not records:
            break  # no bus runs at all (a feed without trips at that hour)
    return records[:total]


class Producer:
    """One aiokafka producer; the warm-up and the paced run."""

    def __init__(self, cfg: dict[str, Any], emit: Any) -> None:
        self.cfg = cfg
        self.emit = emit
        self.topic = cfg["topic"]
        self.rate = float(cfg["rate"])
        self.duration = float(cfg["duration"])
        self.total = max(1, round(self.rate * self.duration))
        self.windows = {k: int(v) for k, v in (cfg.get("windows_ms") or {}).items() if int(v) > 0}
        self.records: list[dict[str, Any]] = []
        self.producer: Any = None
        self.partitions: list[int] = []
        self.warm_sent = 0
        self.warm_errors = 0
        self.warm_record: dict[str, Any] | None = None
        self.produced = 0  # sent (not yet acknowledged)
        self.acked: dict[str, int] = {}
        self.errors = 0
        self.first_error = ""
        self.bumped = 0
        self.max_behind_s = 0.0
        self.first_send = 0.0
        self.last_send = 0.0
        self.conflatable: dict[str, dict[str, int]] = {}

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        t = time.monotonic()
        self.records = build_records(self.total, int(self.cfg.get("buses", 1000)), int(self.cfg.get("seed", 1)))
        build_s = time.monotonic() - t
        if not self.records:
            raise RuntimeError("the simulator produced no location report")
        warm_route = self.cfg.get("warm_route")  # "route:<id>:<dir>" or None
        if warm_route:
            _, rid, direction = warm_route.split(":")
            self.warm_record = next((r for r in self.records if r["route_id"] == rid and r["direction"] == direction),
                                    None)
        if self.warm_record is None:
            self.warm_record = self.records[0]
        self.producer = AIOKafkaProducer(bootstrap_servers=self.cfg["bootstrap"], acks=1, linger_ms=0,
                                         request_timeout_ms=20_000)
        await asyncio.wait_for(self.producer.start(), 60)
        self.partitions = sorted(await asyncio.wait_for(self.producer.partitions_for(self.topic), 60))
        self.emit({"ev": "ready", "pid": os.getpid(), "records": len(self.records), "build_s": round(build_s, 3),
                   "buses": len({r["vehicle_id"] for r in self.records}),
                   "routes": len({r["route_id"] for r in self.records}), "partitions": self.partitions,
                   "warm_channel": f"route:{self.warm_record['route_id']}:{self.warm_record['direction']}"})

    async def warm(self) -> None:
        """One record per partition every 0.5 s (until cancelled)."""
        assert self.producer is not None and self.warm_record is not None
        n = 0
        while True:
            for p in self.partitions:
                rec = dict(self.warm_record, vehicle_id=f"{WARM_PREFIX}{p}-{n}", timestamp=int(time.time() * 1000))
                try:
                    await self.producer.send(self.topic, value=orjson.dumps(rec),
                                             key=rec["route_id"].encode(), partition=p)
                    self.warm_sent += 1
                except Exception:  # noqa: BLE001 - counted; the controller times the warm-up out
                    self.warm_errors += 1
            n += 1
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        assert self.producer is not None
        producer, topic, rate, records = self.producer, self.topic, self.rate, self.records
        dumps = orjson.dumps
        last_ms: dict[str, int] = {}
        last_on: dict[tuple[str, str], float] = {}
        futures: list[tuple[str, Any]] = []
        self.emit({"ev": "started", "t_ns": time.time_ns()})
        t0 = time.perf_counter()
        hard_stop = t0 + self.duration * 3 + 30
        next_tick = t0 + 0.5
        i = 0
        n = len(records)
        total = self.total
        while i < total and time.perf_counter() < hard_stop:
            now = time.perf_counter()
            due = min(total, int((now - t0) * rate) + 1)
            if due - 1 > i:
                self.max_behind_s = max(self.max_behind_s, now - (t0 + i / rate))
            while i < due:
                record = records[i % n]  # (more than the simulator made: the sequence again, newer times)
                vehicle = record["vehicle_id"]
                channel = f"route:{record['route_id']}:{record['direction']}"
                wall = time.time()
                ms = int(wall * 1000)
                prev = last_ms.get(vehicle, 0)
                if ms <= prev:
                    ms = prev + 1
                    self.bumped += 1
                last_ms[vehicle] = ms
                record["timestamp"] = ms
                key = (channel, vehicle)
                before = last_on.get(key)
                if before is not None and self.windows:
                    gap_ms = (wall - before) * 1000
                    for profile, window in self.windows.items():
                        if gap_ms < window + CONFLATION_SLACK_MS:
                            per = self.conflatable.setdefault(channel, {})
                            per[profile] = per.get(profile, 0) + 1
                last_on[key] = wall
                try:
                    fut = await producer.send(topic, value=dumps(record), key=record["route_id"].encode())
                    futures.append((channel, fut))
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    self.errors += 1
                    self.first_error = self.first_error or repr(exc)[:300]
                if not self.first_send:
                    self.first_send = wall
                self.last_send = wall
                i += 1
                self.produced = i
            if time.perf_counter() >= next_tick:
                self.emit({"ev": "tick", "produced": i})
                next_tick += 0.5
            await asyncio.sleep(max(0.0005, t0 + i / rate - time.perf_counter()))
        try:
            await asyncio.wait_for(producer.flush(), 30)
        except Exception as exc:  # noqa: BLE001
            self.first_error = self.first_error or f"flush: {exc!r}"[:300]
        for channel, fut in futures:
            try:
                await asyncio.wait_for(fut, 10)
                self.acked[channel] = self.acked.get(channel, 0) + 1
            except Exception as exc:  # noqa: BLE001
                self.errors += 1
                self.first_error = self.first_error or repr(exc)[:300]

    def result(self) -> dict[str, Any]:
        span = self.last_send - self.first_send
        acked = sum(self.acked.values())
        return {"ev": "done", "produced": acked, "sent": self.produced, "errors": self.errors,
                "first_error": self.first_error, "target": self.total, "rate": self.rate,
                "duration": self.duration, "send_span_s": round(span, 3),
                "achieved_rate": round((self.produced - 1) / span, 1) if span > 0 and self.produced > 1 else None,
                "first_send_ns": int(self.first_send * 1e9), "last_send_ns": int(self.last_send * 1e9),
                "max_behind_schedule_s": round(self.max_behind_s, 3), "bumped_timestamps": self.bumped,
                "buses": len({r["vehicle_id"] for r in self.records}),
                "routes": len({r["route_id"] for r in self.records}),
                "per_channel": dict(sorted(self.acked.items())), "conflatable": self.conflatable,
                "warmup_records": self.warm_sent, "warmup_errors": self.warm_errors}

    async def stop(self) -> None:
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), 30)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass


async def serve() -> None:
    reader, emit = await stdio_channel(16 * 1024 * 1024)
    first = await reader.readline()
    if not first:
        return
    prod = Producer(orjson.loads(first), emit)
    warming: asyncio.Task[Any] | None = None
    running: asyncio.Task[Any] | None = None
    try:
        try:
            await prod.start()
        except Exception as exc:  # noqa: BLE001 - told to the controller
            emit({"ev": "error", "message": f"{type(exc).__name__}: {exc}"[:500]})
            return
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = orjson.loads(line).get("cmd")
            if cmd == "warm" and warming is None:
                warming = asyncio.ensure_future(prod.warm())
            elif cmd == "go" and running is None:
                if warming is not None:
                    warming.cancel()
                    warming = None

                async def go() -> None:
                    try:
                        await prod.run()
                    except Exception as exc:  # noqa: BLE001
                        prod.first_error = prod.first_error or repr(exc)[:300]
                        prod.errors += 1
                    emit(prod.result())

                running = asyncio.ensure_future(go())
            elif cmd == "quit":
                break
    finally:
        for task in (warming, running):
            if task is not None:
                task.cancel()
        await prod.stop()
        emit({"ev": "bye"})


def main() -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - a dependency on Linux
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(serve())
    except (KeyboardInterrupt, BrokenPipeError):
        pass


if __name__ == "__main__":
    main()
