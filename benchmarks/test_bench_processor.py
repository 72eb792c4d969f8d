"""Location records per second through the Kafka location processor, on one core.

The stream: ``fastgw.sources.simulator.Simulator`` at 08:30 IST on a Monday
(real trips of all 40 routes running), ``max_buses=500``, one report per bus
every 10 s for 20 ticks: 10,000 ``location_update`` positions on 39 routes
(335-E has no trip running then), turned into
``location-updates`` records three ways:

* ``json``: one JSON ``LocationData`` per record (the crowdsourced path);
* ``gtfs-rt``: one GTFS-Realtime ``FeedMessage`` with one vehicle per record;
* ``gtfs-rt-batched``: one ``FeedMessage`` per route per tick (~13 vehicles each),
  as a GTFS-Realtime producer keyed by route would send them.

Each round feeds the whole stream to a processor whose vehicle state was reset
(``LocationProcessor.reset``), so every round does the same work: decode,
validate, project on the shape (first report of a vehicle: grid search; then
local search from its previous projection), match the trip, 5 stop ETAs, build
1 ``location_update`` (3 channels) + 5 ``stop_arrival``. ``now`` is each
record's observation time + 1 s. Reported: records/s (from the fastest round;
the mean round is in ``extra_info``) and µs per record; also written to
``benchmarks/results/processor-latest.json`` (git-ignored).

    pytest benchmarks/test_bench_processor.py               # ~20 s
    pytest benchmarks/test_bench_processor.py --benchmark-disable   # smoke: one pass each
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import msgspec
import pytest

from fastgw.processing import LocationData, encode_vehicle_positions
from fastgw.processing.location import LocationProcessor
from fastgw.processing.times import parse_timestamp
from fastgw.sources.simulator import SYSTEM_CHANNEL, Simulator
from fastgw.transit.gtfs import load_feed

START = 1_796_007_600.0  # Monday 2026-11-30 08:30:00 IST
TICKS, INTERVAL_S, BUSES = 20, 10.0, 500
TARGET = 20_000  # records/s per core
RESULTS = Path(__file__).resolve().parent / "results" / "processor-latest.json"
_RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def stream() -> list[LocationData]:
    """~10,000 simulator positions as LocationData (epoch-ms timestamps), in publish order."""
    messages: list[dict] = []
    sim = Simulator(
        lambda channel, message: messages.append(message) if channel == SYSTEM_CHANNEL else None,
        feed=load_feed(), max_buses=BUSES, seed=20261130,
    )  # fmt: skip
    for tick in range(TICKS):
        sim.step(START + tick * INTERVAL_S)
    records = []
    for message in messages:
        record = msgspec.convert(message, LocationData)
        record.timestamp = parse_timestamp(record.timestamp)
        record.source = "simulator"
        records.append(record)
    assert len(records) >= 9_000, len(records)
    assert len({r.route_id for r in records}) >= 39  # all but 335-E (two trips a day, none at 08:30)
    return records


def _inputs(fmt: str, records: list[LocationData]) -> tuple[list[tuple[bytes, bytes, float]], int]:
    """(value, key, now) per Kafka record, and the number of vehicle positions they hold."""
    if fmt == "json":
        encode = msgspec.json.encode
        return [(encode(r), r.route_id.encode(), r.timestamp / 1000 + 1) for r in records], len(records)
    if fmt == "gtfs-rt":
        return [
            (encode_vehicle_positions([r]), r.route_id.encode(), r.timestamp / 1000 + 1) for r in records
        ], len(records)
    groups: dict[tuple[int, str], list[LocationData]] = {}
    for r in records:
        groups.setdefault((r.timestamp // 1000, r.route_id), []).append(r)
    return [
        (encode_vehicle_positions(group), route_id.encode(), seconds + 1.0)
        for (seconds, route_id), group in sorted(groups.items())
    ], len(records)


@pytest.mark.parametrize("fmt", ["json", "gtfs-rt", "gtfs-rt-batched"])
def test_location_processor_throughput(benchmark, stream, fmt):
    benchmark.group = "processor: location records"
    inputs, positions = _inputs(fmt, stream)
    processor = LocationProcessor(load_feed(), eta_stops=5)
    process = processor.process
    counts: list[int] = []

    def setup():
        processor.reset()

    def run() -> None:
        n = 0
        for value, key, now in inputs:
            n += len(process(value, key, None, now))
        counts.append(n)

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1, warmup_rounds=1)

    # Every position yields a location_update on 3 channels, and stop_arrivals unless
    # it is past its last stop; the simulator keeps buses on their shapes.
    assert counts[-1] >= positions * 3 + positions * 4, counts[-1]
    assert processor.stats["off_route"] == 0 and processor.stats["out_of_order"] == 0
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: one timed pass
        start = time.perf_counter()
        setup()
        run()
        best = mean = time.perf_counter() - start
    else:
        best, mean = stats.stats.min, stats.stats.mean
    rate = positions / best
    result = {
        "records": len(inputs),
        "positions": positions,
        "outputs": counts[-1],
        "positions_per_s": round(rate),
        "positions_per_s_mean_round": round(positions / mean),
        "us_per_position": round(best / positions * 1e6, 2),
        "target_per_s": TARGET,
    }
    benchmark.extra_info.update(result)
    _RESULTS[fmt] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"python": platform.python_version(), "machine": platform.machine(), "results": _RESULTS}, indent=2)
        + "\n"
    )
    print(f"\n{fmt}: {rate:,.0f} positions/s ({best / positions * 1e6:.1f} µs each; target {TARGET:,}/s)")
