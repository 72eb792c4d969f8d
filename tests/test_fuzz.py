"""Hypothesis fuzzing of everything that reads untrusted input.

* the channel-name parser: only :class:`InvalidChannel`; accepted names match the grammar
  and round-trip;
* the native codec: only :class:`ProtocolError`; parsed commands are well-formed;
* the client frame handler, end to end against a real gateway over real WebSockets (random
  commands, JSON-ish junk, binary junk, oversized and compressed frames, random profiles,
  resumes of earlier sessions, publishes interleaved) and at the frame level on a raw
  socket: the handler never raises (no "Error handling request", no traceback, no 1011),
  the close codes are the documented ones, and once the client is gone the gateway keeps
  no trace of it (no connection, no hub channel, no batcher, no presence) — no
  half-registered connection; while connected, it never holds more than
  ``max_subscriptions``;
* the bearer-token verifier: only :class:`AuthError`, whatever the token holds;
* the Kafka record decoders (``build_processors()``): outputs or :class:`Rejected` with a
  documented reason, nothing else, and every output publishable (a valid channel, a known
  type, encodable for every profile and compression).

Example counts are bounded and the runs derandomized (the same examples in every run).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import struct

import aiohttp
import orjson
import pytest
import zstandard
from google.transit import gtfs_realtime_pb2
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from fastgw.auth import AuthError, Authenticator
from fastgw.channels import MAX_CHANNEL_LENGTH, Access, Channel, InvalidChannel, is_valid_user_id, parse_channel
from fastgw.messages import MESSAGE_TYPES
from fastgw.prepare import Codecs, PreparedMessage
from fastgw.processing import Output, Rejected, build_processors, encode_vehicle_positions
from fastgw.processing.base import REASONS
from fastgw.profiles import PROFILES, Compression, Encoding
from fastgw.protocol import native
from tests.conftest import IMPLEMENTATIONS, SECRET, eventually, token

PURE = settings(max_examples=400, deadline=None, derandomize=True, database=None)
# Against a real gateway each example costs milliseconds: a failure is reported as found (no
# shrinking, which takes minutes there) unless FASTGW_FUZZ_SHRINK=1 asks for a minimal example.
_LIVE_PHASES = tuple(Phase) if os.environ.get("FASTGW_FUZZ_SHRINK") == "1" else (
    Phase.explicit, Phase.reuse, Phase.generate)
LIVE = settings(max_examples=100, deadline=None, derandomize=True, database=None, phases=_LIVE_PHASES,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)


def dumps(value, ascii_only: bool = False) -> str:
    """Any JSON-ish value as text (big integers, NaN and Infinity included: not all valid JSON)."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)


# --- the channel-name parser ---------------------------------------------------------------

ID = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
GRAMMAR = re.compile(
    rf"route:{ID}:(UP|DOWN|all)|stop:{ID}:arrivals|alerts:{ID}|leaderboard:(daily|weekly|monthly)"
    rf"|leaderboard:route:{ID}|user:{ID}:notifications|system:all_updates", re.ASCII)
ids = st.from_regex(ID, fullmatch=True)
channel_like = st.one_of(
    st.text(max_size=150),
    st.from_regex(GRAMMAR, fullmatch=True),
    st.builds(lambda parts, sep: sep.join(parts),
              st.lists(st.sampled_from(["route", "stop", "alerts", "leaderboard", "user", "system", "all", "UP",
                                        "DOWN", "up", "arrivals", "notifications", "all_updates", "daily", ""])
                       | ids | st.text(max_size=8), min_size=1, max_size=5),
              st.sampled_from([":", "::", ": ", ":\n", "\u0130:", "："])),
    st.builds(lambda name, tail: name + tail, st.from_regex(GRAMMAR, fullmatch=True),
              st.sampled_from(["\n", " ", "\x00", "\u212a", "x" * 120, ":", ""])),
)


@PURE
@given(channel_like)
def test_channel_parser_only_raises_invalid_channel(name):
    try:
        channel = parse_channel(name)
    except InvalidChannel:
        assert not (name.isascii() and len(name) <= MAX_CHANNEL_LENGTH and GRAMMAR.fullmatch(name)), name
        return
    assert isinstance(channel, Channel) and channel.name == name
    assert name.isascii() and 0 < len(name) <= MAX_CHANNEL_LENGTH and GRAMMAR.fullmatch(name), name
    assert parse_channel(channel.name) == channel  # round trip
    assert (channel.access is Access.OWNER) == (channel.kind == "user") == name.startswith("user:")
    assert (channel.access is Access.ADMIN) == (name == "system:all_updates")
    if channel.kind == "user":
        assert channel.owner == name[len("user:"):-len(":notifications")] and is_valid_user_id(channel.owner)
    else:
        assert channel.owner is None


@PURE
@given(json_values | st.binary(max_size=20))
def test_channel_parser_rejects_non_strings(value):
    if isinstance(value, str):
        return
    with pytest.raises(InvalidChannel):
        parse_channel(value)


# --- the native codec ----------------------------------------------------------------------

TYPES = ["subscribe", "unsubscribe", "ping", "ack", "resume", "hello"]
request_ids = st.none() | st.text(max_size=70) | st.integers(-(2**70), 2**70) | st.floats() | json_values
commands = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.text(max_size=12) | json_values},
    optional={
        "id": request_ids,
        "channel": channel_like | json_values,
        "filters": json_values | st.fixed_dictionaries(
            {}, optional={"types": st.lists(st.sampled_from(sorted(MESSAGE_TYPES) + ["nope", ""]), max_size=3)
                          | json_values, "other": json_values}),
        "upTo": st.integers(-3, 2**70) | json_values,
        "sessionId": st.text(max_size=70) | json_values,
        "offsets": st.dictionaries(channel_like, st.text(max_size=70) | st.sampled_from(["0", "1", "2-0"]),
                                   max_size=3) | json_values,
        "profile": st.sampled_from(sorted(PROFILES)) | st.text(max_size=10) | json_values,
        "connection_type": st.sampled_from(["wifi", "4g", "3g", "2g", "LTE", "edge", "slow-2g"])
        | st.text(max_size=8) | json_values,
    },
)
client_texts = st.one_of(
    st.builds(dumps, commands, st.booleans()),
    st.builds(dumps, json_values, st.booleans()),
    st.text(max_size=200),
)


@PURE
@given(client_texts)
def test_native_codec_only_raises_protocol_error(text):
    try:
        cmd = native.parse_command(text)
    except native.ProtocolError as exc:
        assert exc.code == "bad_request" and exc.message
        assert exc.request_id is None or (isinstance(exc.request_id, str) and len(exc.request_id) <= 64)
        native.error(exc.request_id, exc.code, exc.message)  # the reply can always be encoded
        return
    assert cmd.id is None or (isinstance(cmd.id, str) and len(cmd.id) <= 64)
    if isinstance(cmd, (native.Subscribe, native.Unsubscribe)):
        assert isinstance(cmd.channel, str) and cmd.channel
        native.unsubscribed(cmd.id, cmd.channel)  # echoed back as given
    if isinstance(cmd, native.Subscribe) and cmd.types is not None:
        assert cmd.types and cmd.types <= MESSAGE_TYPES
    if isinstance(cmd, native.Ack):
        assert isinstance(cmd.up_to, int) and not isinstance(cmd.up_to, bool) and cmd.up_to >= 0
    if isinstance(cmd, native.Resume):
        assert isinstance(cmd.session_id, str) and 0 < len(cmd.session_id) <= 64 and isinstance(cmd.offsets, dict)
    if isinstance(cmd, native.Hello):
        assert cmd.profile is not None or cmd.connection_type is not None


# --- the bearer-token verifier ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(header_text: str, payload_text: str, key: bytes = SECRET.encode()) -> str:
    signing = f"{_b64(header_text.encode())}.{_b64(payload_text.encode())}"
    return f"{signing}.{_b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


claim_values = st.one_of(json_values, st.integers(0, 2**40), st.sampled_from([9_999_999_999, 0, -1, 1e300]))
token_texts = st.one_of(
    st.text(max_size=200),
    st.builds(lambda parts: ".".join(parts), st.lists(st.text(alphabet="ABCabc012-_=+/.", max_size=40), max_size=4)),
    st.builds(  # correctly signed, any header and claims (what a key holder could mint by mistake)
        lambda header, claims, ascii_only: _signed(dumps(header, ascii_only), dumps(claims, ascii_only)),
        st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "none", "RS256", "HS512"]) | json_values},
                              optional={"typ": json_values, "kid": json_values, "crit": json_values,
                                        "b64": json_values, "jku": json_values}),
        st.fixed_dictionaries({}, optional={"sub": st.sampled_from(["u1", "", "bad user"]) | json_values,
                                            "exp": claim_values, "nbf": claim_values, "iat": claim_values,
                                            "iss": json_values, "aud": json_values, "admin": json_values})
        | json_values,
        st.booleans()),
)


@PURE
@given(token_texts)
def test_token_verifier_only_raises_auth_error(text):
    for auth in (Authenticator(secret=SECRET), Authenticator(secret=SECRET, issuer="i", audience="a")):
        try:
            principal = auth.authenticate(text)
        except AuthError as exc:
            assert exc.reason
            continue
        assert isinstance(principal.user_id, str) and is_valid_user_id(principal.user_id)
        assert principal.admin in (True, False)


# --- the Kafka record decoders ----------------------------------------------------------------

NOW = 1_796_006_400.0  # 2026-11-30 08:10:00 IST: buses run
NOW_MS = int(NOW * 1000)
PROCESSORS = build_processors()
FEED = PROCESSORS["location"].feed
ROUTE_IDS = sorted(FEED.routes)
TRIP_IDS = sorted(PROCESSORS["location"].index.trip_routes)[::50]
CODECS = Codecs()
ENCODINGS = [Encoding(profile, compression) for profile in PROFILES.values() for compression in Compression]

def mostly(valid, invalid=None):
    """``valid`` nine times in ten, else ``invalid`` (default: any JSON value): records that get
    past the schema often enough to reach the feed, clock and leaderboard logic."""
    invalid = invalid if invalid is not None else json_values
    return st.integers(0, 9).flatmap(lambda i: valid if i else invalid)  # (one_of dedups equal branches)


near_now_ms = st.integers(NOW_MS - 700_000, NOW_MS + 120_000)
timestamps = mostly(
    near_now_ms | st.builds(lambda ms: _iso(ms), st.integers(NOW_MS - 700_000, NOW_MS + 120_000)),
    st.integers(-(2**64), 2**64)
    | st.sampled_from(["2026-11-30T08:09:30+05:30", "2026-11-30T02:39:50Z", "2026-11-30T02:39:50",
                       "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "2026-11-30", "nope",
                       "2026-11-30T02:39:50.123456789Z", "", "2026-11-30T02:39:50+24:00", "2026-W48-1T08:00Z"])
    | st.text(max_size=45) | json_values,
)


def _iso(ms: int) -> str:
    import datetime

    offset = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    return datetime.datetime.fromtimestamp(ms / 1000, offset).isoformat()


latitudes = st.floats(12.8, 13.2) | st.floats(12.5, 13.5) | st.floats(width=32) | st.sampled_from([13.0045, 12.9716])
longitudes = st.floats(77.4, 77.8) | st.floats(77.2, 78.0) | st.floats(width=32) | st.sampled_from([77.5946, 77.6101])
route_ids = mostly(st.sampled_from(ROUTE_IDS), st.text(max_size=10) | json_values)
location_records = st.fixed_dictionaries(
    {"vehicle_id": mostly(st.text(min_size=1, max_size=10)),
     "route_id": route_ids,
     "direction": mostly(st.sampled_from(["UP", "DOWN"])),
     "latitude": mostly(latitudes), "longitude": mostly(longitudes),
     "timestamp": timestamps},
    optional={
        "trip_id": mostly(st.sampled_from(TRIP_IDS) | st.text(min_size=1, max_size=10)),
        "speed": mostly(st.floats(0, 150), st.floats(-10, 200) | json_values),
        "heading": mostly(st.floats(0, 360), st.floats(-10, 400) | json_values),
        "accuracy": mostly(st.floats(0, 10_000), st.floats(-1, 20_000) | json_values),
        "contributor_count": mostly(st.integers(0, 10_000), st.integers(-5, 20_000) | json_values),
        "confidence": mostly(st.floats(0, 1), st.floats(-1, 2) | json_values),
        "user_id": mostly(ids), "source": mostly(st.sampled_from(["gtfs-rt", "crowdsourced", "simulator"])),
        "occupancy_status": mostly(st.sampled_from(["FULL", "EMPTY", "STANDING_ROOM_ONLY"])),
        "extra": json_values,
    },
)
alert_records = st.fixed_dictionaries(
    {"alert_id": mostly(ids), "severity": mostly(st.sampled_from(["info", "warning", "critical"])),
     "title": mostly(st.text(min_size=1, max_size=200), st.text(max_size=210) | json_values)},
    optional={"message": mostly(st.text(max_size=50)),
              "affected_routes": mostly(st.lists(mostly(st.sampled_from(ROUTE_IDS), st.text(max_size=8)),
                                                 max_size=4)),
              "start_time": timestamps, "end_time": timestamps, "timestamp": timestamps},
)
notification_records = st.fixed_dictionaries(
    {"title": mostly(st.text(min_size=1, max_size=200), st.text(max_size=210) | json_values)},
    optional={"notification_id": mostly(ids), "user_id": mostly(ids), "body": mostly(st.text(max_size=30)),
              "category": mostly(st.sampled_from(["system", "trip", "achievement"]), st.text(max_size=40)),
              "data": mostly(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
              "timestamp": timestamps},
)
_event_base = {"user_id": mostly(ids), "display_name": mostly(st.text(min_size=1, max_size=64)),
               "event_id": mostly(ids), "timestamp": timestamps, "route_id": route_ids, "extra": json_values}
user_event_records = st.one_of(
    st.fixed_dictionaries({"event_type": st.just("points_earned"),
                           "points": mostly(st.integers(-1_000_000, 1_000_000), st.integers(-(2**70), 2**70))},
                          optional={**_event_base, "reason": mostly(st.text(max_size=20))}),
    st.fixed_dictionaries({"event_type": st.just("rank_change"),
                           "period": mostly(st.sampled_from(["daily", "weekly", "monthly"]), st.text(max_size=8)),
                           "points": mostly(st.integers(0, 1_000_000_000), st.integers(-(2**70), 2**70))},
                          optional={**_event_base, "old_rank": mostly(st.integers(1, 50)),
                                    "new_rank": mostly(st.integers(1, 50), st.integers(-5, 0))}),
    st.fixed_dictionaries({"event_type": st.just("achievement"), "achievement_id": mostly(ids),
                           "title": mostly(st.text(min_size=1, max_size=200))},
                          optional={**_event_base, "description": mostly(st.text(max_size=30)),
                                    "points": mostly(st.integers(0, 1_000_000), st.integers(-5, 2**40))}),
    st.fixed_dictionaries({"event_type": mostly(st.text(max_size=12))}, optional=_event_base),
)
OCCUPANCY = [v for _, v in gtfs_realtime_pb2.VehiclePosition.OccupancyStatus.items()]


@st.composite
def feed_messages(draw) -> bytes:
    """A GTFS-Realtime FeedMessage with random (mostly plausible) contents, maybe corrupted."""
    chance = lambda tenths: draw(st.integers(0, 9)) < tenths  # noqa: E731
    if chance(1):  # what the encoder makes of a JSON record, then maybe corrupted below
        try:
            data = encode_vehicle_positions([draw(location_records)], timestamp=NOW)
        except (ValueError, KeyError, TypeError):
            data = b""
    else:
        m = gtfs_realtime_pb2.FeedMessage()
        if chance(9):
            m.header.gtfs_realtime_version = draw(mostly(st.just("2.0"),
                                                         st.sampled_from(["1.0", ""]) | st.text(max_size=4)))
        if chance(5):
            m.header.timestamp = draw(mostly(st.integers(int(NOW) - 700, int(NOW) + 120), st.integers(0, 2**64 - 1)))
        for _ in range(draw(st.integers(0, 3))):
            e = m.entity.add()
            if chance(9):
                e.id = draw(st.text(max_size=6))
            if chance(2):
                e.is_deleted = draw(st.booleans())
            if chance(1):
                continue  # an entity without a vehicle
            vp = e.vehicle
            if chance(8):
                vp.trip.route_id = draw(mostly(st.sampled_from(ROUTE_IDS), st.text(max_size=6)))
            if chance(5):
                vp.trip.trip_id = draw(mostly(st.sampled_from(TRIP_IDS), st.text(max_size=6)))
            if chance(8):
                vp.trip.direction_id = draw(mostly(st.sampled_from([0, 1]), st.integers(0, 2**32 - 1)))
            if chance(9):
                vp.vehicle.id = draw(st.text(max_size=8))
            if chance(3):
                vp.vehicle.label = draw(st.text(max_size=8))
            if chance(9):
                vp.position.latitude = draw(latitudes)
                vp.position.longitude = draw(longitudes)
                if chance(5):
                    vp.position.speed = draw(mostly(st.floats(0, 40, width=32), st.floats(width=32)))
                if chance(5):
                    vp.position.bearing = draw(mostly(st.floats(0, 360, width=32), st.floats(width=32)))
            if chance(7):
                vp.timestamp = draw(mostly(st.integers(int(NOW) - 700, int(NOW) + 120), st.integers(0, 2**64 - 1)))
            if chance(3):
                vp.occupancy_status = draw(st.sampled_from(OCCUPANCY))
        data = m.SerializePartialToString()  # required fields may be missing: the decoder's problem
    how = draw(st.sampled_from(["none"] * 6 + ["flip", "truncate", "append", "splice"]))
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    elif how == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "append":
        data += draw(st.binary(max_size=20))
    elif how == "splice" and data:
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(max_size=10)) + data[i:]
    return data


def _json_bytes(strategy):
    return st.builds(lambda v, a: dumps(v, a).encode(), strategy, st.booleans())


def _deeply_nested(records, fields):
    """A record whose first field (known or not) holds lists nested ``depth`` deep (< 64 KiB)."""
    return st.builds(
        lambda record, field, depth: (f'{{"{field}":' + "[" * depth + "]" * depth + ("," if record else "")
                                      + dumps(record)[1:]).encode(),
        records, st.sampled_from(fields), st.sampled_from([3, 300, 3_000, 20_000]))  # a stack of ~1,000 frames


def _nested_data():
    """A notification whose free-form ``data`` holds lists nested ``depth`` deep."""
    hole = "\u0000nest"
    return st.builds(
        lambda record, depth: dumps({**record, "data": {"x": hole}}, True)
        .replace(json.dumps(hole), "[" * depth + "]" * depth).encode(),
        notification_records, st.sampled_from([3, 200, 300, 3_000]))  # orjson encodes at most 254 levels


record_values = {
    "location": st.one_of(st.binary(max_size=300), _json_bytes(json_values), _json_bytes(location_records),
                          feed_messages(), st.builds(lambda v: b"\n" + v, _json_bytes(location_records)),
                          _deeply_nested(location_records, ["extra", "trip_id"])),
    "alerts": st.one_of(st.binary(max_size=200), _json_bytes(json_values), _json_bytes(alert_records),
                        _deeply_nested(alert_records, ["extra", "affected_routes"])),
    "notifications": st.one_of(st.binary(max_size=200), _json_bytes(json_values), _json_bytes(notification_records),
                               _deeply_nested(notification_records, ["extra", "data"]), _nested_data()),
    "user_events": st.one_of(st.binary(max_size=200), _json_bytes(json_values), _json_bytes(user_event_records),
                             _deeply_nested(user_event_records, ["extra", "points"])),
}
keys = st.none() | st.none() | ids.map(str.encode) | ids.map(str.encode) | st.binary(max_size=12)
kafka_timestamps = st.none() | st.integers(-(2**63), 2**63 - 1) | st.integers(NOW_MS - 100_000, NOW_MS)


def assert_publishable(output) -> None:
    """What ``hub.publish`` and every subscriber's encoding will do with an output."""
    assert isinstance(output, Output)
    parse_channel(output.channel)  # raises InvalidChannel: the test fails with it
    message = output.message
    assert isinstance(message, dict) and message.get("type") in MESSAGE_TYPES, message
    envelope = native.channel_message(output.channel, message, "2026-11-30T02:40:00.000Z", "fuzz-1")
    for core in IMPLEMENTATIONS.values():
        prepared = PreparedMessage(output.channel, envelope, message["type"], core, CODECS)
        for encoding in ENCODINGS:
            prepared.frame(encoding)
            prepared.payload(encoding.profile)
        prepared.conflation_key()


@pytest.mark.parametrize("role", sorted(record_values))
@PURE
@given(data=st.data(), key=keys, timestamp_ms=kafka_timestamps)
def test_kafka_decoders_only_reject(role, data, key, timestamp_ms):
    value = data.draw(record_values[role], label="value")
    try:
        outputs = PROCESSORS[role].process(value, key, timestamp_ms, now=NOW)
    except Rejected as exc:
        assert exc.reason in REASONS, exc.reason
        event(f"rejected: {exc.reason}")
        return
    event(f"outputs: {min(len(outputs), 3)}{'+' if len(outputs) > 3 else ''}")
    assert isinstance(outputs, list)
    for output in outputs:
        assert_publishable(output)


# --- the client frame handler, end to end ----------------------------------------------------------

ERROR_LOG: list[logging.LogRecord] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        ERROR_LOG.append(record)


@pytest.fixture
def error_log():
    """Every ERROR (or worse) record, and every record with a traceback, while the test runs."""
    handler = _Collect(level=logging.DEBUG)
    handler.addFilter(lambda r: r.levelno >= logging.ERROR or r.exc_info is not None)
    root = logging.getLogger()
    root.addHandler(handler)
    ERROR_LOG.clear()
    yield ERROR_LOG
    root.removeHandler(handler)


def assert_no_errors(log: list[logging.LogRecord]) -> None:
    if log:
        formatter = logging.Formatter()
        text = "\n".join(f"{r.name}: {r.getMessage()}\n{formatter.formatException(r.exc_info) if r.exc_info else ''}"
                         for r in log)
        log.clear()
        raise AssertionError(f"the gateway logged errors:\n{text}")


def no_trace(gw) -> bool:
    """Nothing of any client is left (no other client is connected during these tests)."""
    presence = gw.engine.presence
    return (not gw.connections and gw.hub.channels() == {} and not gw.hub._batcher_owners
            and not gw._closing_snapshots and gw._upgrading == 0 and gw.stats.connections_active == 0
            and presence.connections == 0 and not presence._devices and not gw.broker._channels)


def trace(gw) -> dict:
    return {"connections": [(c.session_id, dict(c.subscriptions)) for c in gw.connections],
            "channels": gw.hub.channels(), "batchers": len(gw.hub._batcher_owners),
            "snapshots": len(gw._closing_snapshots), "upgrading": gw._upgrading,
            "presence": (gw.engine.presence.connections, dict(gw.engine.presence._devices)),
            "broker": set(gw.broker._channels)}


FUZZ_GATEWAY = dict(
    allow_anonymous=True, max_frame_size=4096, max_subscriptions=4, window_cellular_ms=15, window_slow_ms=25,
    connect_rate_per_ip=1e9, connect_burst_per_ip=10**9, connect_rate=1e9, connect_burst=10**9,
)
# The documented close codes (docs/protocol.md); never 1011 (internal error) nor an abort.
ALLOWED_CLOSE_CODES = {1000, 1002, 1003, 1007, 1008, 1009, 4008}

PUBLISHABLE = ["route:500-D:UP", "route:500-D:all", "alerts:all", "user:fuzzer:notifications", "system:all_updates"]
SUBSCRIBABLE = PUBLISHABLE + ["user:other:notifications", "stop:20823:arrivals", "leaderboard:daily",
                              "route:201:DOWN", "alerts:500-D", "leaderboard:route:201", "stop:1:arrivals"]
PREVIOUS_SESSION = "@@previous-session@@"  # replaced by the previous example's sessionId
live_commands = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.text(max_size=8) | json_values},
    optional={
        "id": request_ids,
        "channel": st.sampled_from(SUBSCRIBABLE) | channel_like | json_values,
        "filters": st.fixed_dictionaries({}, optional={"types": st.lists(st.sampled_from(sorted(MESSAGE_TYPES)),
                                                                         min_size=1, max_size=2) | json_values})
        | json_values,
        "upTo": st.integers(-1, 10**6) | json_values,
        "sessionId": st.just(PREVIOUS_SESSION) | st.text(max_size=70) | json_values,
        "offsets": st.dictionaries(st.sampled_from(SUBSCRIBABLE) | channel_like,
                                   st.sampled_from(["0", "1", "3", "999", "1-0", "x"]) | st.text(max_size=70),
                                   max_size=3) | json_values,
        "profile": st.sampled_from(sorted(PROFILES)) | st.text(max_size=6) | json_values,
        "connection_type": st.sampled_from(["wifi", "4g", "3g"]) | st.text(max_size=6) | json_values,
    },
)
likely_commands = st.one_of(  # the well-formed commands, often: they reach the deep paths
    st.fixed_dictionaries({"type": st.just("subscribe"), "id": st.text(max_size=4),
                           "channel": st.sampled_from(SUBSCRIBABLE)},
                          optional={"filters": st.fixed_dictionaries(
                              {"types": st.lists(st.sampled_from(sorted(MESSAGE_TYPES)), min_size=1, max_size=2)})}),
    st.fixed_dictionaries({"type": st.just("unsubscribe"), "channel": st.sampled_from(SUBSCRIBABLE)}),
    st.fixed_dictionaries({"type": st.just("resume"), "sessionId": st.just(PREVIOUS_SESSION)},
                          optional={"offsets": st.dictionaries(st.sampled_from(SUBSCRIBABLE),
                                                               st.sampled_from(["0", "1", "5", "x"]), max_size=2)}),
    st.fixed_dictionaries({"type": st.just("hello")}, optional={
        "profile": st.sampled_from(sorted(PROFILES)), "connection_type": st.sampled_from(["wifi", "4g", "3g"])}),
    st.fixed_dictionaries({"type": st.just("ack"), "upTo": st.integers(0, 10**6)}),
    st.fixed_dictionaries({"type": st.just("ping")}, optional={"id": request_ids}),
)
published_messages = st.builds(
    lambda mtype, extra: {**extra, "type": mtype},
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(st.sampled_from(["vehicle_id", "latitude", "longitude", "speed", "heading", "metadata",
                                     "confidence", "contributor_count", "title"]), json_values, max_size=5),
).filter(lambda m: _orjson_ok(m))


def _orjson_ok(message) -> bool:
    try:
        orjson.dumps(message)
        return True
    except TypeError:
        return False


actions = st.one_of(  # none of these closes the connection (binary ones do on non-zstd connections)
    st.tuples(st.just("text"), st.builds(dumps, live_commands, st.booleans())),
    st.tuples(st.just("text"), st.builds(dumps, likely_commands, st.booleans())),
    st.tuples(st.just("text"), st.builds(dumps, likely_commands, st.booleans())),
    st.tuples(st.just("text"), st.builds(dumps, json_values, st.booleans()) | st.text(max_size=100)),
    st.tuples(st.just("zstd"), st.builds(dumps, likely_commands | live_commands, st.booleans())),
    st.tuples(st.just("publish"), st.tuples(st.sampled_from(PUBLISHABLE), published_messages)),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.02])),
)
finales = st.one_of(  # what may end a session: each closes it in its own documented way
    st.none(), st.none(), st.none(),
    st.tuples(st.just("binary"), st.binary(max_size=64)),
    st.tuples(st.just("big"), st.integers(4097, 9000)),
)
subscribe_commands = st.builds(
    lambda channel, rid: ("text", dumps({"type": "subscribe", "id": rid, "channel": channel})),
    st.sampled_from(SUBSCRIBABLE), st.text(max_size=3))
resume_commands = st.builds(
    lambda offsets: ("text", dumps({"type": "resume", "id": "r", "sessionId": PREVIOUS_SESSION, "offsets": offsets})),
    st.dictionaries(st.sampled_from(SUBSCRIBABLE), st.sampled_from(["0", "1", "5", "x"]), max_size=2))
sessions = st.fixed_dictionaries({
    "who": st.sampled_from(["fuzzer", "fuzzer", "fuzzer", "anonymous", "ops"]),
    "profile": st.sampled_from([None, "full", "cellular", "slow", "slow", "bogus"]),
    "zstd": st.booleans(),
    "deflate": st.booleans(),
    # a few subscriptions first (what a real client does), so that later commands, the resume
    # of this session by a later example, publishes and the close all have state to work on
    "actions": st.tuples(st.lists(subscribe_commands, min_size=1, max_size=4), st.lists(actions, max_size=12),
                         st.lists(resume_commands, max_size=1), st.lists(actions, max_size=5))
    .map(lambda parts: [a for part in parts for a in part]),
    "finale": finales,
})


@pytest.fixture
async def fuzz_gateway(start_gateway):
    return await start_gateway(**FUZZ_GATEWAY)


async def run_session(gw, plan: dict, earlier_sessions: list[str], log) -> None:
    who = plan["who"]
    query = []
    if who != "anonymous":
        query.append(f"token={token(who, admin=who == 'ops')}")
    if plan["profile"] is not None:
        query.append(f"profile={plan['profile']}")
    url = f"ws://127.0.0.1:{gw.port}/ws?{'&'.join(query)}"
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, protocols=("fastgw.v1.zstd",) if plan["zstd"] else (),
                                          compress=15 if plan["deflate"] else 0, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 400 and plan["profile"] == "bogus", exc
            assert await eventually(lambda: no_trace(gw)), trace(gw)
            assert_no_errors(log)
            return
        welcome = await ws.receive_json(timeout=5)
        assert welcome["type"] == "welcome"
        zstd_codec = zstandard.ZstdCompressor()
        previous = earlier_sessions[-1] if earlier_sessions else "none"
        try:
            for kind, arg in plan["actions"] + ([plan["finale"]] if plan["finale"] else []):
                if ws.closed:
                    break
                if kind == "text":
                    await ws.send_str(arg.replace(PREVIOUS_SESSION, previous))
                elif kind == "binary":
                    await ws.send_bytes(arg)
                elif kind == "zstd":
                    await ws.send_bytes(zstd_codec.compress(arg.replace(PREVIOUS_SESSION, previous).encode()))
                elif kind == "big":
                    await ws.send_str('{"type":"ping","id":"' + "x" * arg + '"}')
                elif kind == "publish":
                    channel, message = arg
                    gw.hub.publish(channel, message)
                elif kind == "sleep":
                    await asyncio.sleep(arg)
        except (ConnectionError, RuntimeError):  # the server closed first: its close frame follows
            pass
        earlier_sessions.append(welcome["sessionId"])
        close_code = None
        if not ws.closed:
            try:
                await ws.send_str('{"type":"ping","id":"fuzz-end"}')
            except (ConnectionError, RuntimeError):
                pass
        while True:  # the end marker, or the server's close
            msg = await ws.receive(timeout=5)
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = orjson.loads(msg.data)
                if frame.get("type") == "pong" and frame.get("id") == "fuzz-end":
                    break
                if frame.get("type") == "resumed":
                    restored = len(frame["channels"])
                    event(f"resumed {min(restored, 2)}{'+' if restored > 2 else ''} channels")
                elif frame.get("type") in ("queued_message", "batched_messages", "profile"):
                    event(f"received {frame['type']}")
                assert frame.get("type") != "error" or frame.get("code") != "internal", frame
            elif msg.type is aiohttp.WSMsgType.BINARY:
                continue
            else:
                close_code = ws.close_code
                break
        event(f"closed with {close_code}" if close_code is not None else "answered the end marker")
        if close_code is None:  # still connected: within the limits, and registered consistently
            (conn,) = gw.connections
            assert len(conn.subscriptions) <= gw.config.max_subscriptions, dict(conn.subscriptions)
            assert set(gw.hub.channels()) == set(conn.subscriptions), trace(gw)
        await ws.close()
        if close_code is not None:
            assert close_code in ALLOWED_CLOSE_CODES, close_code
    assert await eventually(lambda: no_trace(gw)), trace(gw)
    assert_no_errors(log)


@given(earlier=sessions, plan=sessions, same_principal=st.integers(0, 4))
@LIVE
async def test_frame_handler_never_raises_nor_leaks(fuzz_gateway, error_log, earlier, plan, same_principal):
    """Two sessions one after the other, mostly of the same principal: the second may resume
    the first (``@@previous-session@@``)."""
    if same_principal:
        plan = {**plan, "who": earlier["who"]}
    session_ids: list[str] = []
    await run_session(fuzz_gateway, earlier, session_ids, error_log)
    await run_session(fuzz_gateway, plan, session_ids, error_log)


# --- frames on a raw socket: reserved bits, bad opcodes, fragments, lying lengths ------------------


@st.composite
def raw_frames(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=64))
    if draw(st.booleans()):
        first = draw(st.integers(0, 255))  # any FIN/RSV bits and opcode
    else:
        first = 0x80 | draw(st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]))
    payload = draw(st.binary(max_size=200) | st.builds(str.encode, st.builds(dumps, likely_commands)))
    if first & 0x0F == 8 and draw(st.booleans()):  # a close frame: a code, maybe invalid, and a reason
        payload = struct.pack("!H", draw(st.integers(0, 65535))) + draw(st.binary(max_size=10))
    masked = draw(st.integers(0, 9)) > 0
    length = len(payload) if draw(st.integers(0, 4)) else draw(st.integers(0, 2**63 - 1))
    if length < 126:
        header = bytes((first, (0x80 if masked else 0) | length))
    elif length < 65536:
        header = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", length)
    if masked:
        mask = draw(st.binary(min_size=4, max_size=4))
        payload = mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + payload


@given(frames=st.lists(raw_frames(), min_size=1, max_size=6), who=st.sampled_from(["fuzzer", "anonymous"]))
@LIVE
async def test_raw_frames_never_raise_nor_leak(fuzz_gateway, error_log, frames, who):
    gw = fuzz_gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    query = f"?token={token(who)}" if who != "anonymous" else ""
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    subscribe = orjson.dumps({"type": "subscribe", "id": "s", "channel": "route:500-D:UP"})
    mask = b"\x01\x02\x03\x04"
    writer.write(bytes((0x81, 0x80 | len(subscribe))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(subscribe)))
    try:
        for frame in frames:
            writer.write(frame)
            await writer.drain()
        await asyncio.sleep(0.01)  # the server reads what arrived before the end of the stream
    except ConnectionError:
        pass
    writer.close()
    assert await eventually(lambda: no_trace(gw)), trace(gw)
    assert_no_errors(error_log)


# --- what the fuzzers found, as plain regression tests (minimal inputs) ------------------------------


@pytest.mark.parametrize("role,value", [
    ("location", b'{"extra":' + b"[" * 3000 + b"]" * 3000 + b',"vehicle_id":"0","route_id":"13","direction":"UP",'
                 b'"latitude":13.0,"longitude":77.5,"timestamp":1796006400000}'),
    ("alerts", b'{"extra":' + b"[" * 3000 + b"]" * 3000 + b',"alert_id":"0","severity":"info","title":"0"}'),
    ("notifications", b'{"extra":' + b"[" * 3000 + b"]" * 3000 + b',"title":"0","user_id":"u1"}'),
    ("user_events", b'{"extra":' + b"[" * 3000 + b"]" * 3000 + b',"event_type":"points_earned","points":0}'),
], ids=["location", "alerts", "notifications", "user_events"])
def test_deeply_nested_json_is_rejected_not_a_recursion_error(role, value):
    """msgspec raises RecursionError (not a DecodeError) past ~1,000 levels, even in a field it skips."""
    with pytest.raises(Rejected):
        PROCESSORS[role].process(value, None, None, now=NOW)


@pytest.mark.parametrize("data", [
    b'{"x":18446744073709551616}',  # 2**64: msgspec decodes it, orjson cannot encode it
    b'{"x":-9223372036854775809}',  # -(2**63) - 1
    b'{"x":' + b"[" * 300 + b"]" * 300 + b"}",  # orjson encodes at most 254 levels
], ids=["2**64", "-2**63-1", "nested-300"])
def test_notification_data_is_publishable_or_rejected(data):
    """An accepted record whose ``data`` the hub cannot encode makes ``hub.publish`` raise TypeError
    in ``KafkaSource._handle``, outside its try: the consumer task dies."""
    value = b'{"title":"t","user_id":"u1","data":' + data + b"}"
    try:
        outputs = PROCESSORS["notifications"].process(value, None, None, now=NOW)
    except Rejected:
        return
    for output in outputs:
        assert_publishable(output)


async def test_resume_respects_max_subscriptions(start_gateway):
    """``Recovery.resume`` checks the limit once per restored channel against the count before
    any of them is added, so a resume can take a connection past ``max_subscriptions``."""
    gw = await start_gateway(max_subscriptions=2)
    url = f"ws://127.0.0.1:{gw.port}/ws?token={token('u1')}"
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url) as ws:
            old_session = (await ws.receive_json(timeout=5))["sessionId"]
            for channel in ["route:1:UP", "route:2:UP"]:
                await ws.send_json({"type": "subscribe", "channel": channel})
                assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        assert await eventually(lambda: not gw.connections)
        async with s.ws_connect(url) as ws:
            await ws.receive_json(timeout=5)
            await ws.send_json({"type": "subscribe", "channel": "route:3:UP"})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
            await ws.send_json({"type": "resume", "id": "r", "sessionId": old_session})
            resumed = await ws.receive_json(timeout=5)
            assert resumed["type"] == "resumed"
            (conn,) = gw.connections
            assert len(conn.subscriptions) <= 2, dict(conn.subscriptions)
            assert not resumed["recovered"]  # not everything could be restored: the client must know
