"""``system-notifications`` and ``user-events`` records: notifications and leaderboards.

* :class:`NotificationProcessor`: JSON :class:`~fastgw.processing.schemas.NotificationData`
  -> ``user_notification`` on ``user:{user_id}:notifications``.
* :class:`UserEventProcessor`: JSON ``points_earned`` / ``rank_change`` /
  ``achievement`` events -> ``leaderboard_update`` on ``leaderboard:{period}`` (global
  boards) and ``leaderboard:route:{route_id}`` (route boards), published only when
  a board's top 10 changes; an achievement also sends a ``user_notification``.

For both topics the Kafka key is the user id: it is used when the value has no
``user_id``, and a value whose ``user_id`` differs from a non-empty key is
rejected (``key_mismatch``) rather than delivered to the wrong user.

The leaderboard is **in memory** and per gateway process: it starts empty, so
after a restart it shows only points earned since (``rank_change`` events, which
carry the backend's authoritative totals, re-sync it). See ``docs/ingest.md``.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from typing import Any, Callable

import orjson

from fastgw.transit.gtfs import Feed, load_feed

from .base import Output, Rejected, decode_json_record, record_time_ms
from .schemas import (
    ID_RE,
    NOTIFICATION_DECODER,
    PERIODS,
    USER_EVENT_DECODER,
    Achievement,
    PointsEarned,
    RankChange,
)
from .times import ServiceClock, iso_ms

__all__ = ["NotificationProcessor", "UserEventProcessor", "Leaderboard", "Board", "TOP_N"]

#: Entries per leaderboard_update.
TOP_N = 10


def resolve_user(body_user: str | None, key: bytes | None) -> str:
    """The record's user id from its value and/or its Kafka key (see the module docstring)."""
    key_user = None
    if key:
        try:
            key_user = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("schema", "the key is not UTF-8") from None
    if body_user is None:
        if key_user is None:
            raise Rejected("schema", "no user_id in the value and no key")
        if not ID_RE.fullmatch(key_user):
            raise Rejected("schema", f"the key {key_user[:80]!r} is not a valid user id")
        return key_user
    if key_user is not None and key_user != body_user:
        raise Rejected("key_mismatch", f"key {key_user[:80]!r} != user_id {body_user!r}")
    return body_user


class NotificationProcessor:
    """The ``notifications`` role's processor (stateless)."""

    topic_role = "notifications"

    def __init__(self, *, max_record_bytes: int = 64 * 1024, clock: Callable[[], float] = time.time) -> None:
        self.max_record_bytes = max_record_bytes
        self._clock = clock

    def process(
        self, value: bytes, key: bytes | None, timestamp_ms: int | None, now: float | None = None
    ) -> list[Output]:
        if now is None:
            now = self._clock()
        note = decode_json_record(NOTIFICATION_DECODER, value, self.max_record_bytes)
        user_id = resolve_user(note.user_id, key)
        ms = record_time_ms(note.timestamp, timestamp_ms, now)
        notification_id = note.notification_id
        if notification_id is None:  # stable across redeliveries of the same record
            notification_id = "n-" + hashlib.blake2b(bytes(value), digest_size=8).hexdigest()
        message = {
            "type": "user_notification",
            "notification_id": notification_id,
            "user_id": user_id,
            "title": note.title,
            "body": note.body,
            "category": note.category,
            "data": note.data,
            "timestamp": iso_ms(ms),
        }
        try:  # it must survive the envelope's encoder (64-bit integers, bounded nesting)
            orjson.dumps(note.data)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise Rejected("schema", f"data cannot be sent: {exc}") from None
        return [Output(f"user:{user_id}:notifications", message)]


# --------------------------------------------------------------------------
# Leaderboard
# --------------------------------------------------------------------------


class Board:
    """Points per user for one (period, route or global) board and its current bucket.

    ``top`` holds the best :data:`TOP_N` user ids, ordered by points (desc) then
    user id (asc); it is maintained incrementally (a full O(n) recount only
    when a top user loses points). At most ``max_users`` users are kept: beyond
    that the lowest-ranked 10 % are forgotten (they restart from 0 if they earn
    again; only the top 10 is ever published).
    """

    __slots__ = ("period", "route_id", "bucket", "points", "names", "top", "channel", "max_users")

    def __init__(self, period: str, route_id: str | None, bucket: int, max_users: int) -> None:
        self.period = period
        self.route_id = route_id
        self.bucket = bucket
        self.points: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.top: list[str] = []
        self.channel = f"leaderboard:{period}" if route_id is None else f"leaderboard:route:{route_id}"
        self.max_users = max_users

    def reset(self, bucket: int) -> None:
        self.bucket = bucket
        self.points.clear()
        self.names.clear()
        self.top.clear()

    def _key(self, user: str) -> tuple[int, str]:
        return (-self.points[user], user)

    def snapshot(self) -> list[tuple[str, int, str]]:
        points, names = self.points, self.names
        return [(user, points[user], names.get(user, user)) for user in self.top]

    def set(self, user: str, total: int, display_name: str | None) -> bool:
        """Set ``user``'s points; True if the top entries changed."""
        before = self.snapshot()
        previous = self.points.get(user)
        self.points[user] = total
        if display_name is not None:
            self.names[user] = display_name
        top = self.top
        if user in top:
            if previous is not None and total < previous and len(self.points) > len(top):
                self.top = heapq.nsmallest(TOP_N, self.points, key=self._key)  # an outsider may pass
            else:
                top.sort(key=self._key)
        elif len(top) < TOP_N or self._key(user) < self._key(top[-1]):
            top.append(user)
            top.sort(key=self._key)
            del top[TOP_N:]
        if len(self.points) > self.max_users:
            self._evict()
        return self.snapshot() != before

    def _evict(self) -> None:
        keep = set(self.top)
        target = max(len(keep), int(self.max_users * 0.9))
        excess = len(self.points) - target
        if excess <= 0:
            return
        losers = heapq.nlargest(excess, (u for u in self.points if u not in keep), key=self._key)
        for user in losers:
            del self.points[user]
            self.names.pop(user, None)

    def message(self, updated_ms: int) -> dict[str, Any]:
        return {
            "type": "leaderboard_update",
            "period": self.period,
            "route_id": self.route_id,
            "entries": [
                {"rank": rank, "user_id": user, "display_name": name, "points": points}
                for rank, (user, points, name) in enumerate(self.snapshot(), start=1)
            ],
            "updated_at": iso_ms(updated_ms),
        }


class Leaderboard:
    """All boards: daily/weekly/monthly x (global + one per route), in local time.

    Periods roll over at local midnight / Monday / the 1st (the feed's time
    zone): the first event of a new period empties the board; events of an
    earlier period than the board's are ignored for it (late events).
    """

    def __init__(self, clock: ServiceClock, *, max_users_per_board: int = 10_000) -> None:
        self.clock = clock
        self.max_users_per_board = max_users_per_board
        self.boards: dict[tuple[str, str | None], Board] = {}

    def _board(self, period: str, route_id: str | None, ts: float) -> Board | None:
        bucket = self.clock.period_bucket(period, ts)
        board = self.boards.get((period, route_id))
        if board is None:
            board = self.boards[(period, route_id)] = Board(period, route_id, bucket, self.max_users_per_board)
        elif bucket > board.bucket:
            board.reset(bucket)
        elif bucket < board.bucket:
            return None
        return board

    def add(self, user: str, points: int, ts: float, route_id: str | None, name: str | None) -> list[Board]:
        """Add ``points`` (totals never go below 0) on every board the event counts for;
        the boards whose top changed."""
        changed = []
        for period in PERIODS:
            for rid in (None, route_id) if route_id is not None else (None,):
                board = self._board(period, rid, ts)
                if board is None:
                    continue
                previous = board.points.get(user)
                if previous is None and points <= 0:
                    continue  # nothing to record
                total = max(0, (previous or 0) + points)
                if board.set(user, total, name):
                    changed.append(board)
        return changed

    def set(
        self, user: str, total: int, period: str, ts: float, route_id: str | None, name: str | None
    ) -> list[Board]:
        """Set the authoritative total of one board; ``[board]`` if its top changed."""
        board = self._board(period, route_id, ts)
        if board is not None and board.set(user, total, name):
            return [board]
        return []


class UserEventProcessor:
    """The ``user_events`` role's processor: keeps the in-memory :class:`Leaderboard`."""

    topic_role = "user_events"

    def __init__(
        self,
        feed: Feed | None = None,
        *,
        max_record_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
        max_users_per_board: int = 10_000,
    ) -> None:
        self.feed = feed if feed is not None else load_feed()
        self.route_ids = frozenset(self.feed.routes)
        self.max_record_bytes = max_record_bytes
        self._clock = clock
        self.leaderboard = Leaderboard(ServiceClock(self.feed.timezone), max_users_per_board=max_users_per_board)

    def process(
        self, value: bytes, key: bytes | None, timestamp_ms: int | None, now: float | None = None
    ) -> list[Output]:
        if now is None:
            now = self._clock()
        event = decode_json_record(USER_EVENT_DECODER, value, self.max_record_bytes)
        user_id = resolve_user(event.user_id, key)
        route_id = event.route_id
        if route_id is not None and route_id not in self.route_ids:
            raise Rejected("unknown_route", f"route {route_id!r} is not in the GTFS feed")
        ms = record_time_ms(event.timestamp, timestamp_ms, now)
        ts = ms / 1000.0
        outputs: list[Output] = []
        board = self.leaderboard
        if isinstance(event, PointsEarned):
            boards = board.add(user_id, event.points, ts, route_id, event.display_name)
        elif isinstance(event, RankChange):
            boards = board.set(user_id, event.points, event.period, ts, route_id, event.display_name)
        else:
            assert isinstance(event, Achievement)
            outputs.append(Output(f"user:{user_id}:notifications", _achievement_notification(event, user_id, ms)))
            boards = board.add(user_id, event.points, ts, route_id, event.display_name) if event.points else []
        outputs.extend(Output(b.channel, b.message(ms)) for b in boards)
        return outputs


def _achievement_notification(event: Achievement, user_id: str, ms: int) -> dict[str, Any]:
    return {
        "type": "user_notification",
        "notification_id": f"achievement-{event.achievement_id}-{user_id}",
        "user_id": user_id,
        "title": f"Achievement unlocked: {event.title}",
        "body": event.description or event.title,
        "category": "achievement",
        "data": {"achievement_id": event.achievement_id, "points": event.points, "route_id": event.route_id},
        "timestamp": iso_ms(ms),
    }
