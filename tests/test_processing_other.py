"""Alerts, notifications and user events (leaderboards, achievements)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.channels import Access, parse_channel
from fastgw.messages import MESSAGE_TYPES
from fastgw.processing import Rejected, build_processors
from fastgw.processing.base import REASONS
from fastgw.processing.times import ServiceClock, iso_ms, parse_timestamp
from fastgw.processing.users import Board, Leaderboard
from fastgw.transit.gtfs import load_feed

FEED = load_feed()
T0810 = 1_796_006_400.0  # Monday 2026-11-30 08:10:00 IST = 02:40:00Z
T0810_ISO = "2026-11-30T02:40:00.000Z"


@pytest.fixture
def processors():
    return build_processors(FEED, clock=lambda: T0810)


def run(processor, value, key=None, timestamp_ms=None, now=T0810):
    outputs = processor.process(orjson.dumps(value) if isinstance(value, dict) else value, key, timestamp_ms, now=now)
    for output in outputs:
        parse_channel(output.channel)
        assert output.message["type"] in MESSAGE_TYPES
    return outputs


def reason(processor, value, key=None, timestamp_ms=None, now=T0810) -> str:
    with pytest.raises(Rejected) as info:
        run(processor, value, key, timestamp_ms, now)
    assert info.value.reason in REASONS
    return info.value.reason


# ---------------------------------------------------------------- alerts

ALERT = {
    "alert_id": "a-2026-11-30-1",
    "severity": "warning",
    "title": "Diversion at Hebbal",
    "message": "Buses skip Hebbala flyover until 10:00",
    "affected_routes": ["500-D", "V-500D", "500-D"],
    "start_time": "2026-11-30T08:00:00+05:30",
    "end_time": 1796014800000,  # 10:30 IST
}


def test_alert_goes_to_each_route_and_to_all(processors):
    outputs = run(processors["alerts"], ALERT, key=b"500-D", timestamp_ms=int(T0810 * 1000) - 1000)
    assert [o.channel for o in outputs] == ["alerts:500-D", "alerts:V-500D", "alerts:all"]
    assert outputs[0].message == {
        "type": "service_alert",
        "alert_id": "a-2026-11-30-1",
        "severity": "warning",
        "title": "Diversion at Hebbal",
        "message": "Buses skip Hebbala flyover until 10:00",
        "affected_routes": ["500-D", "V-500D"],
        "start_time": "2026-11-30T02:30:00.000Z",
        "end_time": "2026-11-30T05:00:00.000Z",
        "timestamp": "2026-11-30T02:39:59.000Z",  # the Kafka record time
    }
    for output in outputs:
        assert parse_channel(output.channel).kind == "alerts"


def test_network_wide_alert_and_defaults(processors):
    outputs = run(processors["alerts"], {"alert_id": "a2", "severity": "critical", "title": "Strike"})
    assert [o.channel for o in outputs] == ["alerts:all"]
    message = outputs[0].message
    assert message["affected_routes"] == [] and message["message"] == ""
    assert message["start_time"] is None and message["end_time"] is None
    assert message["timestamp"] == T0810_ISO  # no own time, no Kafka time: now


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"affected_routes": ["500-D", "999"]}, "unknown_route"),
        ({"severity": "severe"}, "schema"),
        ({"alert_id": "has space"}, "schema"),
        ({"title": ""}, "schema"),
        ({"end_time": "2026-11-30T07:00:00+05:30"}, "schema"),  # before start
        ({"start_time": "soon"}, "schema"),
        ({"start_time": "0001-01-01T00:00:00+14:00"}, "schema"),  # out of range
        ({"end_time": "9999-12-31T23:59:59Z"}, "schema"),
        ({"timestamp": 1796006461000}, "future_timestamp"),  # 61 s ahead
    ],
)
def test_alert_rejections(processors, change, expected):
    assert reason(processors["alerts"], {**ALERT, **change}) == expected


def test_alert_malformed_and_oversized():
    alerts = build_processors(FEED, max_record_bytes=200)["alerts"]
    assert reason(alerts, b'{"alert_id":') == "malformed_json"
    assert reason(alerts, b"") == "empty"
    assert reason(alerts, orjson.dumps({**ALERT, "message": "x" * 300})) == "oversized"


# ---------------------------------------------------------------- notifications

NOTE = {"user_id": "u42", "title": "Your bus is near", "body": "500-D is 2 stops away", "category": "trip",
        "data": {"route_id": "500-D", "stop_id": "20998"}, "timestamp": 1796006395000}  # fmt: skip


def test_notification_to_the_user_channel(processors):
    outputs = run(processors["notifications"], {**NOTE, "notification_id": "n1"}, key=b"u42")
    assert len(outputs) == 1
    assert outputs[0].channel == "user:u42:notifications"
    channel = parse_channel(outputs[0].channel)
    assert channel.access is Access.OWNER and channel.owner == "u42"
    assert outputs[0].message == {
        "type": "user_notification",
        "notification_id": "n1",
        "user_id": "u42",
        "title": "Your bus is near",
        "body": "500-D is 2 stops away",
        "category": "trip",
        "data": {"route_id": "500-D", "stop_id": "20998"},
        "timestamp": "2026-11-30T02:39:55.000Z",
    }


def test_notification_id_is_a_stable_hash_of_the_record(processors):
    first = run(processors["notifications"], NOTE)[0].message["notification_id"]
    again = run(processors["notifications"], NOTE)[0].message["notification_id"]
    other = run(processors["notifications"], {**NOTE, "body": "changed"})[0].message["notification_id"]
    assert first == again != other
    assert first.startswith("n-") and len(first) == 18


def test_notification_user_from_the_key(processors):
    note = {k: v for k, v in NOTE.items() if k != "user_id"}
    outputs = run(processors["notifications"], note, key=b"u7")
    assert outputs[0].channel == "user:u7:notifications" and outputs[0].message["user_id"] == "u7"


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        (NOTE, b"u43", "key_mismatch"),
        ({k: v for k, v in NOTE.items() if k != "user_id"}, None, "schema"),
        ({k: v for k, v in NOTE.items() if k != "user_id"}, b"bad user", "schema"),
        ({k: v for k, v in NOTE.items() if k != "user_id"}, b"\xff\xfe", "schema"),
        ({**NOTE, "user_id": "u1:notifications"}, None, "schema"),  # would break the channel grammar
        ({**NOTE, "category": "Not A Category"}, None, "schema"),
        ({**NOTE, "data": [1, 2]}, None, "schema"),
        ({**NOTE, "title": None}, None, "schema"),
        (b"not json", None, "malformed_json"),
    ],
)
def test_notification_rejections(processors, value, key, expected):
    assert reason(processors["notifications"], value, key=key) == expected


# ---------------------------------------------------------------- user events


def points(user, n, **extra):
    return {"event_type": "points_earned", "user_id": user, "points": n, **extra}


def test_points_update_every_period_and_the_route_board(processors):
    outputs = run(processors["user_events"], points("u1", 10, route_id="500-D", display_name="Asha"), key=b"u1")
    assert [o.channel for o in outputs] == [
        "leaderboard:daily", "leaderboard:route:500-D",
        "leaderboard:weekly", "leaderboard:route:500-D",
        "leaderboard:monthly", "leaderboard:route:500-D",
    ]  # fmt: skip
    assert outputs[0].message == {
        "type": "leaderboard_update",
        "period": "daily",
        "route_id": None,
        "entries": [{"rank": 1, "user_id": "u1", "display_name": "Asha", "points": 10}],
        "updated_at": T0810_ISO,
    }
    assert outputs[1].message["route_id"] == "500-D" and outputs[1].message["period"] == "daily"
    assert [o.message["period"] for o in outputs[1::2]] == ["daily", "weekly", "monthly"]


def test_top_ten_order_ties_and_changes_only(processors):
    events = processors["user_events"]
    for i in range(12):
        run(events, points(f"u{i:02d}", 100 - i))
    # u11 (89 points) is 12th. +1 = 90 ties u10 (11th): ties go to the smaller id, nothing changes
    assert run(events, points("u11", 1)) == []
    # +1 = 91 ties u09 (10th): u09 keeps its place, the top 10 is the same, nothing is published
    assert run(events, points("u11", 1)) == []
    outputs = run(events, points("u11", 10))  # 101: first
    daily = outputs[0].message
    assert [e["user_id"] for e in daily["entries"]] == ["u11", "u00", "u01", "u02", "u03", "u04", "u05", "u06", "u07", "u08"]
    assert [e["rank"] for e in daily["entries"]] == list(range(1, 11))
    assert daily["entries"][0]["points"] == 101
    assert daily["entries"][0]["display_name"] == "u11"  # no display name given: the id


def test_a_top_user_losing_points_lets_an_outsider_in(processors):
    events = processors["user_events"]
    for i in range(11):
        run(events, points(f"u{i:02d}", 100 - i))
    outputs = run(events, points("u00", -95))  # 5 points: falls to the bottom
    entries = outputs[0].message["entries"]
    assert [e["user_id"] for e in entries] == [f"u{i:02d}" for i in range(1, 11)]
    assert all(e["user_id"] != "u00" for e in entries)


def test_points_never_go_below_zero_and_negative_first_event_is_ignored(processors):
    events = processors["user_events"]
    assert run(events, points("u1", -5)) == []
    run(events, points("u1", 5))
    outputs = run(events, points("u1", -50))
    assert outputs[0].message["entries"] == [{"rank": 1, "user_id": "u1", "display_name": "u1", "points": 0}]


def test_rank_change_sets_the_authoritative_total(processors):
    events = processors["user_events"]
    run(events, points("u1", 10))
    outputs = run(events, {"event_type": "rank_change", "user_id": "u1", "period": "weekly", "points": 250,
                           "old_rank": 5, "new_rank": 1, "display_name": "Asha"})  # fmt: skip
    assert [o.channel for o in outputs] == ["leaderboard:weekly"]
    assert outputs[0].message["entries"] == [{"rank": 1, "user_id": "u1", "display_name": "Asha", "points": 250}]
    outputs = run(events, {"event_type": "rank_change", "user_id": "u2", "period": "daily", "points": 7,
                           "route_id": "201"})  # fmt: skip
    assert [o.channel for o in outputs] == ["leaderboard:route:201"]


def test_achievement_notifies_the_user_and_counts_its_points(processors):
    event = {"event_type": "achievement", "user_id": "u9", "achievement_id": "first-ride", "title": "First ride",
             "description": "You reported your first bus", "points": 20, "timestamp": "2026-11-30T08:09:00+05:30"}  # fmt: skip
    outputs = run(processors["user_events"], event, key=b"u9")
    assert [o.channel for o in outputs] == [
        "user:u9:notifications", "leaderboard:daily", "leaderboard:weekly", "leaderboard:monthly"
    ]
    assert outputs[0].message == {
        "type": "user_notification",
        "notification_id": "achievement-first-ride-u9",
        "user_id": "u9",
        "title": "Achievement unlocked: First ride",
        "body": "You reported your first bus",
        "category": "achievement",
        "data": {"achievement_id": "first-ride", "points": 20, "route_id": None},
        "timestamp": "2026-11-30T02:39:00.000Z",
    }
    assert outputs[1].message["entries"][0]["points"] == 20
    no_points = {**event, "points": 0, "achievement_id": "x"}
    assert [o.channel for o in run(processors["user_events"], no_points)] == ["user:u9:notifications"]


def test_periods_roll_over_in_local_time(processors):
    events = processors["user_events"]
    run(events, points("u1", 10), now=T0810)
    # Sunday 2026-12-06 23:59 IST: same week and month, another day
    sunday = parse_timestamp("2026-12-06T23:59:00+05:30") / 1000
    outputs = run(events, points("u2", 3), now=sunday)
    by_period = {o.message["period"]: o.message["entries"] for o in outputs}
    assert by_period["daily"] == [{"rank": 1, "user_id": "u2", "display_name": "u2", "points": 3}]
    assert [e["user_id"] for e in by_period["weekly"]] == ["u1", "u2"]
    assert [e["user_id"] for e in by_period["monthly"]] == ["u2"]  # November was u1's
    # Monday 2026-12-07 00:00 IST (18:30Z on Sunday): new day and week, same month
    monday = parse_timestamp("2026-12-07T00:00:00+05:30") / 1000
    outputs = run(events, points("u3", 1), now=monday)
    by_period = {o.message["period"]: o.message["entries"] for o in outputs}
    assert [e["user_id"] for e in by_period["weekly"]] == ["u3"]
    assert [e["user_id"] for e in by_period["monthly"]] == ["u2", "u3"]
    # a late event from last week counts for the month only
    outputs = run(events, points("u4", 50, timestamp=int(sunday * 1000)), now=monday)
    assert [o.message["period"] for o in outputs] == ["monthly"]


def test_service_clock_buckets():
    clock = ServiceClock("Asia/Kolkata")
    monday = parse_timestamp("2026-11-30T00:00:00+05:30") / 1000
    assert clock.period_bucket("weekly", monday) == clock.period_bucket("weekly", monday + 7 * 86400 - 1)
    assert clock.period_bucket("weekly", monday - 1) != clock.period_bucket("weekly", monday)
    assert clock.period_bucket("daily", monday - 1) + 1 == clock.period_bucket("daily", monday)
    assert clock.period_bucket("monthly", monday) == 2026 * 12 + 10  # November
    assert clock.period_bucket("monthly", monday + 86400) == 2026 * 12 + 11
    assert clock.midnight(monday + 5000) == monday


def test_user_event_rejections(processors):
    events = processors["user_events"]
    assert reason(events, points("u1", 5, route_id="999")) == "unknown_route"
    assert reason(events, {"event_type": "bonus", "user_id": "u1"}) == "schema"
    assert reason(events, {"user_id": "u1", "points": 5}) == "schema"  # no event_type
    assert reason(events, points("u1", 5), key=b"u2") == "key_mismatch"
    assert reason(events, points("u1", "5")) == "schema"
    assert reason(events, {"event_type": "rank_change", "user_id": "u1", "points": 5}) == "schema"  # no period
    assert reason(events, points("u1", 5, timestamp=int(T0810 * 1000) + 61_000)) == "future_timestamp"
    assert reason(events, b"{") == "malformed_json"


def test_board_is_bounded():
    board = Board("daily", None, 0, max_users=100)
    for i in range(1000):
        board.set(f"u{i:04d}", i, None)
    assert len(board.points) <= 100
    assert [u for u, _, _ in board.snapshot()] == [f"u{i:04d}" for i in range(999, 989, -1)]


def test_leaderboard_display_names_stick():
    board = Leaderboard(ServiceClock("Asia/Kolkata"))
    (daily,) = [b for b in board.add("u1", 5, T0810, None, "Asha") if b.period == "daily"]
    board.add("u1", 5, T0810, None, None)
    assert daily.snapshot() == [("u1", 10, "Asha")]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_json_processors(value):
    processors = build_processors(FEED, clock=lambda: T0810)
    for role in ("alerts", "notifications", "user_events"):
        try:
            run(processors[role], value, key=b"u1")
        except Rejected as exc:
            assert exc.reason in REASONS


def test_iso_ms_matches_the_message_builder_format():
    from fastgw.messages import iso_from_epoch

    for ms in (0, 1, 999, 86_399_999, 1_796_006_400_123, 4_102_444_799_999):
        assert iso_ms(ms) == iso_from_epoch(ms / 1000)
