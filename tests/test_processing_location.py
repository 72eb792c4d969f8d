"""Location processor: JSON and GTFS-Realtime input, validation, rejections, freshness."""

from __future__ import annotations

import math
import struct

import msgspec
import orjson
import pytest
from google.transit import gtfs_realtime_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.channels import parse_channel
from fastgw.messages import MESSAGE_TYPES, location_update
from fastgw.processing import LocationData, Rejected, build_processors, encode_vehicle_positions
from fastgw.processing.base import REASONS
from fastgw.processing.gtfs_rt import decode_vehicle_positions
from fastgw.processing.location import LocationProcessor
from fastgw.sources.simulator import Simulator
from fastgw.transit.gtfs import load_feed

T0810 = 1_796_006_400.0  # 2026-11-30 08:10:00 IST
FEED = load_feed()
UP = FEED.routes["500-D"].directions["UP"]


def f32(x: float) -> float:
    """The float32 nearest ``x``, as GTFS-Realtime carries it."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def record(dist_m: float = 2412.0, ts: float = T0810, **extra) -> dict:
    lat, lon, _ = UP.shape.point_at(dist_m)
    value = {
        "vehicle_id": "KA-57-F-0123",
        "route_id": "500-D",
        "direction": "UP",
        "trip_id": "500-D_UP_0800",
        "latitude": lat,
        "longitude": lon,
        "speed": 18.0,
        "heading": 113.7,
        "accuracy": 8.0,
        "timestamp": int(round(ts * 1000)),
        "contributor_count": 4,
        "confidence": 0.93,
        "source": "crowdsourced",
    }
    value.update(extra)
    return {k: v for k, v in value.items() if v is not None}


@pytest.fixture
def processor() -> LocationProcessor:
    return LocationProcessor(FEED)


def process(processor, value, now=T0810, timestamp_ms=None):
    if isinstance(value, dict):
        value = orjson.dumps(value)
    return processor.process(value, b"500-D", timestamp_ms, now=now)


def reason(processor, value, now=T0810, timestamp_ms=None) -> str:
    with pytest.raises(Rejected) as info:
        process(processor, value, now, timestamp_ms)
    assert info.value.reason in REASONS
    assert info.value.detail
    return info.value.reason


def assert_valid_outputs(outputs) -> None:
    for output in outputs:
        parse_channel(output.channel)
        assert output.message["type"] in MESSAGE_TYPES
        orjson.dumps(output.message)  # serialisable


# ---------------------------------------------------------------- the happy path


def test_location_update_is_built_like_the_builder(processor):
    outputs = process(processor, record())
    assert [o.channel for o in outputs[:3]] == ["route:500-D:UP", "route:500-D:all", "system:all_updates"]
    assert outputs[0].message is outputs[1].message is outputs[2].message
    lat, lon, _ = UP.shape.point_at(2412.0)
    expected = location_update(
        vehicle_id="KA-57-F-0123", route_id="500-D", direction="UP", trip_id="500-D_UP_0800",
        latitude=round(lat, 6), longitude=round(lon, 6), speed=18.0, heading=113.7, accuracy=8.0,
        timestamp=T0810, next_stop_id="20998", next_stop_name="Manyatha Tech Park", distance_to_next_stop=812.9,
        confidence=0.93, contributor_count=4, data_freshness="fresh", source="crowdsourced", quality_score=0.93,
    )  # fmt: skip
    assert outputs[0].message == expected
    assert len(outputs) == 3 + 5
    assert_valid_outputs(outputs)


def test_iso_timestamp_is_accepted(processor):
    by_ms = process(LocationProcessor(FEED), record())
    by_iso = process(processor, record(timestamp="2026-11-30T08:10:00+05:30"))
    assert by_iso == by_ms
    by_z = process(LocationProcessor(FEED), record(timestamp="2026-11-30T02:40:00.000Z"))
    assert by_z == by_ms


def test_optional_fields_can_be_left_out(processor):
    minimal = {k: v for k, v in record().items() if k in ("vehicle_id", "route_id", "direction", "latitude", "longitude", "timestamp")}
    outputs = process(processor, minimal)
    update = outputs[0].message
    assert update["trip_id"] == "500-D_UP_0800"  # matched by schedule
    assert update["speed"] == 0.0 and update["accuracy"] == 10.0 and update["contributor_count"] == 1
    assert update["heading"] == 113.7  # the shape's bearing where the bus is
    assert update["metadata"]["source"] == "crowdsourced"
    assert outputs[3].message["metadata"]["basis"] == "timetable"  # no speed known yet


def test_whitespace_before_json_is_fine(processor):
    assert process(processor, b" \n\t" + orjson.dumps(record()))


@pytest.mark.parametrize(
    ("age", "freshness"),
    [(-30.0, "fresh"), (0.0, "fresh"), (29.999, "fresh"), (30.0, "recent"), (119.999, "recent"), (120.0, "stale"),
     (600.0, "stale")],
)  # fmt: skip
def test_freshness_boundaries(processor, age, freshness):
    outputs = process(processor, record(), now=T0810 + age)
    assert outputs[0].message["data_freshness"] == freshness


def test_eta_counts_from_now_not_from_the_observation(processor):
    fresh = process(LocationProcessor(FEED), record(), now=T0810)[3].message
    later = process(processor, record(), now=T0810 + 60)[3].message
    assert fresh["eta_seconds"] == 163  # 812.9 m at 5 m/s = 162.58 s
    assert later["eta_seconds"] == 103
    assert later["estimated_arrival"] == fresh["estimated_arrival"]


def test_duplicates_and_out_of_order_reports_yield_nothing(processor):
    assert process(processor, record())
    assert process(processor, record()) == []
    assert process(processor, record(dist_m=2300.0, ts=T0810 - 10)) == []
    assert processor.stats["out_of_order"] == 2
    assert process(processor, record(dist_m=2500.0, ts=T0810 + 10))


def test_eta_stops_and_build_processors(processor):
    processors = build_processors(FEED, eta_stops=2)
    assert set(processors) == {"location", "alerts", "notifications", "user_events"}
    for role, p in processors.items():
        assert p.topic_role == role
    outputs = processors["location"].process(orjson.dumps(record()), None, None, now=T0810)
    assert [o.channel for o in outputs[3:]] == ["stop:20998:arrivals", "stop:20884:arrivals"]


def test_clock_is_used_without_now():
    p = build_processors(FEED, clock=lambda: T0810 + 45)["location"]
    outputs = p.process(orjson.dumps(record()), None, None)
    assert outputs[0].message["data_freshness"] == "recent"


# ---------------------------------------------------------------- rejections


def test_oversized_is_checked_first(processor):
    small = LocationProcessor(FEED, max_record_bytes=100)
    assert reason(small, b"{" + b" " * 200) == "oversized"
    assert reason(small, b"\x00" * 101) == "oversized"


def test_empty(processor):
    assert reason(processor, b"") == "empty"


@pytest.mark.parametrize("value", [b"{", b'{"vehicle_id": }', b"{'a': 1}", b'{"a":NaN}', b'{"a":[1,', b"\n{nope"])
def test_malformed_json(processor, value):
    assert reason(processor, value) == "malformed_json"


@pytest.mark.parametrize("value", [b"hello", b"\x00\x01\x02", b"\x0a\x05\x0a\x03", b"   ", b"\xff" * 10])
def test_malformed_protobuf(processor, value):
    assert reason(processor, value) == "malformed_protobuf"


def test_protobuf_without_header_version_is_malformed(processor):
    message = gtfs_realtime_pb2.FeedMessage()
    message.header.timestamp = 1
    assert reason(processor, message.SerializePartialToString()) == "malformed_protobuf"


@pytest.mark.parametrize(
    "change",
    [
        {"vehicle_id": None},  # missing
        {"latitude": None},
        {"timestamp": None},
        {"direction": "up"},
        {"direction": "NORTH"},
        {"latitude": "13.0"},
        {"speed": -1.0},
        {"speed": 150.1},
        {"heading": 360.5},
        {"confidence": 1.5},
        {"accuracy": -2},
        {"contributor_count": 2.5},
        {"timestamp": int(T0810)},  # epoch seconds, not ms
        {"timestamp": "yesterday"},
        {"timestamp": "2026-11-30T08:10:00"},  # no offset
        {"timestamp": 1.7e12},  # float
        {"vehicle_id": ""},
        {"vehicle_id": "x" * 65},
        {"user_id": "bad id"},
        {"source": "Has Spaces"},
        {"occupancy_status": "PACKED"},
        {"latitude": 1e400},
    ],
)
def test_schema(processor, change):
    value = record()
    for key, new in change.items():
        if new is None:
            value.pop(key)
        else:
            value[key] = new
    raw = orjson.dumps(value) if "latitude" not in change or change["latitude"] != 1e400 else (
        orjson.dumps(record()).replace(b'"latitude":13.', b'"latitude":1e400,"x":13.')
    )
    assert reason(processor, raw) == "schema"


def test_not_an_object_is_schema(processor):
    assert reason(processor, b"[1, 2]") == "schema"
    assert reason(processor, b'{"a": 1}') == "schema"


def test_unknown_route(processor):
    assert reason(processor, record(route_id="999-Z")) == "unknown_route"


@pytest.mark.parametrize(
    ("lat", "lon"), [(12.59, 77.6), (13.41, 77.6), (13.0, 77.29), (13.0, 77.91), (0.0, 0.0), (-13.0, -77.6)]
)
def test_bad_coordinates(processor, lat, lon):
    assert reason(processor, record(latitude=lat, longitude=lon)) == "bad_coordinates"


def test_box_edges_are_accepted(processor):
    assert process(processor, record(latitude=13.4, longitude=77.9))  # far off-route, but valid
    assert process(processor, record(latitude=12.6, longitude=77.3, vehicle_id="KA-2"))


def test_nan_coordinates_from_protobuf(processor):
    value = encode_vehicle_positions([record()])
    message = gtfs_realtime_pb2.FeedMessage.FromString(value)
    message.entity[0].vehicle.position.latitude = math.nan
    assert reason(processor, message.SerializeToString()) == "bad_coordinates"


def test_future_timestamp(processor):
    assert process(LocationProcessor(FEED), record(), now=T0810 - 60)  # 60 s ahead: accepted
    assert reason(processor, record(), now=T0810 - 60.001) == "future_timestamp"


def test_stale_timestamp(processor):
    assert process(LocationProcessor(FEED), record(), now=T0810 + 600)
    assert reason(processor, record(), now=T0810 + 600.001) == "stale_timestamp"
    lenient = LocationProcessor(FEED, max_age_s=3600)
    assert process(lenient, record(), now=T0810 + 1800)[0].message["data_freshness"] == "stale"


def test_a_rejection_changes_no_state(processor):
    assert reason(processor, record(latitude=0.0)) == "bad_coordinates"
    assert len(processor.engine) == 0


# ---------------------------------------------------------------- GTFS-Realtime


def f32_record(dist_m: float, ts: float, vehicle_id: str, **extra) -> dict:
    """A record whose values survive GTFS-Realtime exactly (float32, whole seconds)."""
    lat, lon, _ = UP.shape.point_at(dist_m)
    value = record(
        dist_m, ts, vehicle_id=vehicle_id, latitude=f32(lat), longitude=f32(lon), speed=18.0, heading=f32(113.7),
        accuracy=None, contributor_count=None, confidence=None, source="gtfs-rt",
    )  # fmt: skip
    value.update(extra)
    return value


def test_gtfs_rt_round_trip_gives_the_json_outputs():
    reports = [
        f32_record(2412.0, T0810, "KA-01-F-0001"),
        f32_record(2512.0, T0810 + 10, "KA-01-F-0001", speed=36.0),
        f32_record(1674.5, T0810 + 10, "KA-01-F-0002", trip_id=None, speed=None, occupancy_status="FULL"),
        f32_record(1774.5, T0810 + 20, "KA-01-F-0002", trip_id=None, speed=None, occupancy_status="FULL"),
    ]
    by_json, by_pb = LocationProcessor(FEED), LocationProcessor(FEED)
    for report in reports:
        now = report["timestamp"] / 1000 + 3
        json_outputs = by_json.process(orjson.dumps(report), b"500-D", None, now=now)
        pb_outputs = by_pb.process(encode_vehicle_positions([report]), b"500-D", None, now=now)
        assert len(json_outputs) == 8
        assert pb_outputs == json_outputs
    assert json_outputs[3].message["crowding_level"] == "high"
    assert json_outputs[3].message["metadata"]["basis"] == "speed"  # derived from progress


def test_gtfs_rt_message_with_several_vehicles():
    reports = [f32_record(2412.0, T0810, "KA-01-F-0001"), f32_record(5000.0, T0810, "KA-01-F-0002")]
    outputs = LocationProcessor(FEED).process(encode_vehicle_positions(reports), None, None, now=T0810)
    one_by_one = LocationProcessor(FEED)
    expected = [o for r in reports for o in one_by_one.process(orjson.dumps(r), None, None, now=T0810)]
    assert outputs == expected
    assert_valid_outputs(outputs)


def test_gtfs_rt_one_bad_vehicle_rejects_the_whole_message():
    good, bad = f32_record(2412.0, T0810, "KA-01-F-0001"), f32_record(2412.0, T0810, "KA-01-F-0002", route_id="999")
    processor = LocationProcessor(FEED)
    with pytest.raises(Rejected) as info:
        processor.process(encode_vehicle_positions([good, bad]), None, None, now=T0810)
    assert info.value.reason == "unknown_route"
    assert len(processor.engine) == 0  # the good vehicle was not taken in either
    assert processor.process(encode_vehicle_positions([good]), None, None, now=T0810)


def test_gtfs_rt_fields_and_fallbacks():
    message = gtfs_realtime_pb2.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.timestamp = int(T0810)
    entity = message.entity.add(id="e1")
    vp = entity.vehicle
    vp.trip.trip_id = "500-D_UP_0800"  # no route_id / direction_id: taken from the trip
    vp.vehicle.label = "KA-01-F-0009"  # no id: the label
    vp.position.latitude, vp.position.longitude = 13.04, 77.61
    vp.position.speed = 5.0  # m/s
    message.entity.add(id="t1").trip_update.trip.trip_id = "x"  # not a vehicle: skipped
    deleted = message.entity.add(id="d1", is_deleted=True)
    deleted.vehicle.vehicle.id = "gone"
    (data,) = decode_vehicle_positions(message.SerializeToString(), trip_routes={"500-D_UP_0800": ("500-D", "UP")})
    assert (data.vehicle_id, data.route_id, data.direction, data.trip_id) == ("KA-01-F-0009", "500-D", "UP", "500-D_UP_0800")
    assert data.speed == 18.0 and data.heading is None and data.source == "gtfs-rt"
    assert data.timestamp == int(T0810) * 1000  # from the header
    assert data.latitude == f32(13.04)


def test_gtfs_rt_timestamp_falls_back_to_the_kafka_record():
    value = encode_vehicle_positions([f32_record(2412.0, T0810, "KA-1")], timestamp=0)
    message = gtfs_realtime_pb2.FeedMessage.FromString(value)
    message.entity[0].vehicle.ClearField("timestamp")
    message.header.ClearField("timestamp")
    raw = message.SerializeToString()
    processor = LocationProcessor(FEED)
    assert reason(processor, raw) == "schema"  # no time anywhere
    outputs = processor.process(raw, None, int(T0810 * 1000) - 5000, now=T0810)
    assert outputs[0].message["timestamp"] == "2026-11-30T02:39:55.000Z"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda vp: vp.trip.ClearField("route_id") or vp.trip.ClearField("trip_id"), "schema"),
        (lambda vp: vp.trip.ClearField("direction_id") or vp.trip.ClearField("trip_id"), "schema"),
        (lambda vp: vp.ClearField("vehicle"), "schema"),
        (lambda vp: vp.ClearField("position"), "schema"),
        (lambda vp: setattr(vp.trip, "direction_id", 2), "schema"),
        (lambda vp: setattr(vp.position, "speed", 50.0), "schema"),  # 180 km/h
        (lambda vp: setattr(vp.position, "bearing", -5.0), "schema"),
        (lambda vp: setattr(vp.trip, "route_id", "nope"), "unknown_route"),
        (lambda vp: setattr(vp.position, "longitude", 80.0), "bad_coordinates"),
        (lambda vp: setattr(vp, "timestamp", int(T0810) + 3600), "future_timestamp"),
    ],
)
def test_gtfs_rt_rejections(mutate, expected):
    message = gtfs_realtime_pb2.FeedMessage.FromString(encode_vehicle_positions([f32_record(2412.0, T0810, "KA-1")]))
    mutate(message.entity[0].vehicle)
    assert reason(LocationProcessor(FEED), message.SerializeToString()) == expected


def test_encode_accepts_location_update_dicts_from_the_simulator():
    messages = []
    sim = Simulator(lambda channel, message: messages.append(message) if channel == "system:all_updates" else None,
                    feed=FEED, max_buses=20, seed=3)  # fmt: skip
    sim.step(T0810)
    value = encode_vehicle_positions(messages)
    decoded = decode_vehicle_positions(value)
    assert [d.vehicle_id for d in decoded] == [m["vehicle_id"] for m in messages]
    for d, m in zip(decoded, messages):
        assert (d.route_id, d.direction, d.trip_id) == (m["route_id"], m["direction"], m["trip_id"])
        assert d.latitude == pytest.approx(m["latitude"], abs=1e-5)
        assert d.speed == pytest.approx(m["speed"], abs=0.01)
    outputs = LocationProcessor(FEED).process(value, None, None, now=T0810 + 1)
    assert sum(o.message["type"] == "location_update" for o in outputs) == 3 * len(messages)
    assert_valid_outputs(outputs)
    with pytest.raises(ValueError):
        encode_vehicle_positions([{"vehicle_id": "x"}])


# ---------------------------------------------------------------- never crashes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_outputs_or_rejections(value):
    try:
        outputs = LocationProcessor(FEED).process(value, None, None, now=T0810)
    except Rejected as exc:
        assert exc.reason in REASONS
    else:
        assert_valid_outputs(outputs)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: json_values for k in record()} | {
    "latitude": st.floats(12.5, 13.5), "longitude": st.floats(77.2, 78.0),
    "timestamp": st.integers(int(T0810 * 1000) - 700_000, int(T0810 * 1000) + 70_000) | st.text(max_size=30),
    "route_id": st.sampled_from(["500-D", "335-E", "nope"]), "direction": st.sampled_from(["UP", "DOWN", "X"]),
    "vehicle_id": st.text(min_size=1, max_size=5),
}))  # fmt: skip
def test_random_records_are_outputs_or_rejections(value):
    try:
        outputs = LocationProcessor(FEED).process(orjson.dumps(value), None, None, now=T0810)
    except Rejected as exc:
        assert exc.reason in REASONS
    else:
        assert_valid_outputs(outputs)


def test_location_data_struct_round_trips_through_msgspec():
    data = msgspec.json.decode(orjson.dumps(record()), type=LocationData)
    assert msgspec.convert(msgspec.to_builtins(data), LocationData) == data


@pytest.mark.parametrize("header_length", [91, 123])  # '[' and '{' after the leading '\n'
def test_protobuf_whose_header_looks_like_json_after_whitespace(header_length):
    report = f32_record(2412.0, T0810, "KA-1")
    message = gtfs_realtime_pb2.FeedMessage.FromString(encode_vehicle_positions([report]))
    message.header.gtfs_realtime_version = "2.0" + "x" * (header_length - len(message.header.SerializeToString()))
    value = message.SerializeToString()
    assert value[:2] == bytes([0x0A, header_length])
    outputs = LocationProcessor(FEED).process(value, None, None, now=T0810)
    assert outputs == LocationProcessor(FEED).process(orjson.dumps(report), None, None, now=T0810)
