"""``fastgw loadtest bmtc``: a real Kafka broker, a real ``fastgw serve --kafka`` subprocess,
real client processes; and the scenario's counting on hand-made frames.

Behaviour only (what was produced, delivered, lost, measured and written); no speed thresholds.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace

import orjson
import pytest

from fastgw.loadtest import bmtc
from fastgw.loadtest.controller import LoadtestConfig, check_config, run_loadtest
from fastgw.loadtest.histogram import Histogram
from fastgw.processing.times import iso_ms
from tests.conftest import SECRET
from tests.test_loadtest import Serve


def kafka_serve(bootstrap: str, topic: str, group: str) -> Serve:
    """``python -m fastgw serve --kafka ...`` on a free loopback port (stopped by pid: ``stop()``)."""
    return Serve("--kafka", bootstrap, "--kafka-topic", f"location={topic}", "--kafka-group-prefix", group,
                 "--kafka-dlq-topic", f"{group}.dlq")


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                             replication_factor=1)]), 30)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- end to end


@pytest.mark.kafka
async def test_bmtc_scenario_end_to_end(kafka_bootstrap, tmp_path):
    run_id = f"ltb{uuid.uuid4().hex[:8]}"
    topic = f"{run_id}.location"
    await create_topic(kafka_bootstrap, topic)
    gw = kafka_serve(kafka_bootstrap, topic, run_id)
    try:
        await gw.ready(30.0)
        cfg = LoadtestConfig(scenario="bmtc", url=f"http://127.0.0.1:{gw.port}", clients=200, jwt_secret=SECRET,
                             kafka=kafka_bootstrap, kafka_topic=topic, report_rate=200, duration=3.0,
                             sources="none", processes=1, profile_mix="full=3,cellular=1",
                             report_path=str(tmp_path / "bmtc.json"))
        report = await run_loadtest(cfg)
    finally:
        gw.stop()
    s = report["scenario_report"]
    producer = s["producer"]
    # every report asked for was produced and acknowledged, counted per route direction
    assert producer["produced"] == producer["target"] == 600 and producer["errors"] == 0
    assert sum(producer["per_channel"].values()) == 600
    assert all(name.startswith("route:") for name in producer["per_channel"])
    assert producer["buses"] > 100 and producer["routes"] > 30  # Monday 08:30 IST whatever the time
    # the warm-up saw the gateway consume every partition before measuring
    assert s["warmup"]["complete"] and s["warmup"]["partitions_seen"] == [0, 1, 2]
    # location updates on route channels and ETAs on stop channels reached the clients
    assert s["deliveries_by_kind"]["route"] > 0 and s["deliveries_by_kind"]["stop"] > 0
    assert s["deliveries"] == sum(s["deliveries_by_kind"].values())
    assert s["stop_messages_seen"] > 0
    # route channels: every subscriber got the producer's count of its route direction
    assert s["deliveries_by_kind"]["route"] + s["lost_by_kind"]["route"] + s["conflated"] \
        == s["expected_route_deliveries"]
    assert s["lost"] == 0 and s["more_than_expected"] == 0 and s["malformed"] == 0
    # latency recorded overall, per kind and per profile, from the message's own timestamp
    lat = s["latency_ms"]
    assert lat["n"] == s["deliveries"]
    values = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "max")]
    assert all(v is not None and v >= 0 for v in values) and values == sorted(values)
    assert set(s["latency_ms_by_kind"]) == {"route", "stop"}
    assert set(s["latency_ms_by_profile"]) == {"full", "cellular"}
    assert "timestamp" in s["clock"] and s["deliveries_per_s"] > 0
    assert set(s["target"]["by_profile"]) == {"full", "cellular"}
    # the summary rows and the verdict; the JSON report carries the same
    labels = [row[0] for row in s["rows"]]
    assert "e2e latency p50 / p90 / p99" in labels and "lost (route / stop)" in labels
    assert report["ok"], report["problems"]
    assert report["connect"]["connected"] == 200 and report["connections"]["dropped"] == 0
    written = json.loads((tmp_path / "bmtc.json").read_text())
    assert written["scenario_report"]["deliveries"] == s["deliveries"]
    assert "jwt_secret" not in written["config"]


def test_bmtc_needs_kafka():
    with pytest.raises(ValueError, match="--kafka"):
        check_config(LoadtestConfig(scenario="bmtc", clients=10))
    with pytest.raises(ValueError, match="report-rate"):
        check_config(LoadtestConfig(scenario="bmtc", clients=10, kafka="127.0.0.1:9092", report_rate=0))
    check_config(LoadtestConfig(scenario="bmtc", clients=10, kafka="127.0.0.1:9092"))


# --------------------------------------------------------------------------- the counting


def envelope(channel: str, message: dict) -> bytes:
    return orjson.dumps({"type": "channel_message", "channel": channel, "message": message,
                         "timestamp": "2000-01-01T00:00:00.000Z", "messageId": "x-1", "offset": "7"})


def location(vehicle: str, ms: int) -> dict:
    return {"type": "location_update", "vehicle_id": vehicle, "route_id": "500-D", "direction": "UP",
            "latitude": 12.9, "longitude": 77.6, "timestamp": iso_ms(ms), "metadata": {"source": "simulator"}}


def arrival(vehicle: str, ms: int) -> dict:
    return {"type": "stop_arrival", "stop_id": "S1", "vehicle_id": vehicle, "eta_seconds": 60,
            "estimated_arrival": iso_ms(ms + 60_000), "scheduled_arrival": iso_ms(ms + 30_000),
            "timestamp": iso_ms(ms)}


def fake_engine(channels: list[str]) -> SimpleNamespace:
    eng = SimpleNamespace(channels=channels, t0_ns=0, conns=[], tick=lambda: {"ev": "tick"})
    return eng


class FakeConn:
    """What the counter reads of a ``client.Conn`` (hashed by identity, like a Conn)."""

    def __init__(self, profile: str, chans: list[int], state: int = 2) -> None:
        self.spec = ["u", profile, "", chans]
        self.state = state


conn = FakeConn


def test_source_counter_reads_single_and_batched_frames():
    channels = ["route:500-D:UP", "stop:S1:arrivals", "user:lt0:notifications"]
    eng = fake_engine(channels)
    counter = bmtc.SourceCounter(eng)
    a, b = conn("full", [0, 1]), conn("slow", [0, 1])
    eng.conns = [a, b]
    # before the mark: the warm-up's frames only tell which partitions reached a client
    t = 1_796_000_000_000
    counter.frame(a, envelope("route:500-D:UP", location("LTWARM-2-0", t)), t * 1_000_000)
    assert counter.warm == {2} and counter.deliveries == 0 and counter.tick()["src_warm"] == [2]
    eng.t0_ns = (t + 1000) * 1_000_000
    # after: a warm-up straggler is not counted; the rest is, latency from the message's timestamp
    counter.frame(a, envelope("route:500-D:UP", location("LTWARM-2-1", t + 500)), (t + 1500) * 1_000_000)
    assert counter.stale == 1 and counter.deliveries == 0
    counter.frame(a, envelope("route:500-D:UP", location("KA-1", t + 1000)), (t + 1025) * 1_000_000)
    counter.frame(a, envelope("stop:S1:arrivals", arrival("KA-1", t + 1000)), (t + 1040) * 1_000_000)
    batch = (b'{"type":"batched_messages","batches":['
             + envelope("route:500-D:UP", location("KA-1", t + 1000)) + b","
             + envelope("stop:S1:arrivals", arrival("KA-1", t + 1000)) + b","
             + envelope("stop:S1:arrivals", arrival("KA-2", t + 1200))
             + b'],"total_messages":3,"batched_at":"2000-01-01T00:00:00.000Z"}')
    counter.frame(b, batch, (t + 1500) * 1_000_000)
    assert counter.deliveries == 5 and counter.malformed == 0
    assert counter.tick()["src_deliveries"] == 5 and counter.tick()["src_route"] == 2
    r = counter.report()
    assert r["by_kind"] == {"route": 2, "stop": 3}
    assert Histogram.from_dict(r["latency_us"]["route"]).lo == 25_000  # 25 ms, from the message's timestamp
    assert Histogram.from_dict(r["latency_us"]["stop"]).hi == 500_000
    assert r["received"] == {"0": {"full": {"1": 1}, "slow": {"1": 1}}, "1": {"full": {"1": 1}, "slow": {"2": 1}}}
    assert r["stop_keys"] == {"1": {"KA-1": [t + 1000], "KA-2": [t + 1200]}}
    assert set(r["latency_us_by_profile"]) == {"full", "slow"}


def test_losses_per_route_from_the_producer_and_per_stop_from_the_union():
    channels = ("route:A:UP", "stop:S1:arrivals", "route:B:UP")
    producer = {"per_channel": {"route:A:UP": 10, "route:B:UP": 4}, "conflatable": {"route:A:UP": {"slow": 2}},
                "produced": 14, "target": 14, "rate": 14.0, "achieved_rate": 14.0, "send_span_s": 1.0, "errors": 0}
    lat = {"route": {"counts": {"100": 3}, "n": 3, "total": 300, "min": 100, "max": 100}}
    child1 = {"source": {"deliveries": 3, "latency_us": lat, "latency_us_by_profile": {"full": {"100": 3}},
                         "received": {"0": {"full": {"10": 2, "7": 1}, "slow": {"9": 1}},
                                      "1": {"full": {"2": 1}}, "2": {"full": {"4": 1}}},
                         "received_dropped": {"0": {"full": {"3": 1}}},
                         "stop_keys": {"1": {"V1": [1, 2]}}}}
    child2 = {"source": {"received": {"1": {"full": {"2": 1}}}, "stop_keys": {"1": {"V2": [5]}}}}
    s = bmtc.summarize(channels, {"producer": producer, "warmup": {"complete": True}}, [child1, child2])
    # route A: one full subscriber 3 short; the slow one 1 short, within its conflatable 2
    # stop S1: 3 distinct messages seen, each subscriber got 2
    assert s["lost_by_kind"] == {"route": 3, "stop": 2}
    assert s["conflated"] == 1
    assert s["lost_on_dropped_connections"] == {"route": 7, "stop": 0}
    assert s["expected_route_deliveries"] == 10 * 4 + 4
    assert s["stop_messages_seen"] == 3
    assert set(s["lost_per_channel"]) == {"route:A:UP", "stop:S1:arrivals"}
    assert any("5 messages lost" in p for p in s["problems"])
    assert s["target"]["met"] is False


def test_a_client_process_with_the_bmtc_counter_reports_its_counts_in_every_tick():
    from fastgw.loadtest.client import Engine

    eng = Engine({"protocol": "native", "host": "127.0.0.1", "port": 1, "channels": ["route:500-D:UP"],
                  "clients": [], "source_module": "fastgw.loadtest.bmtc"}, lambda ev: None)
    assert type(eng.source).__name__ == "SourceCounter"
    tick = eng.tick()
    assert tick["src_deliveries"] == 0 and tick["src_warm"] == [] and tick["ev"] == "tick"
    assert eng.report({}, {})["source"]["deliveries"] == 0
