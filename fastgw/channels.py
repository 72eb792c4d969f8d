"""Channel names: grammar, parsing and who may subscribe. Pure functions.

Grammar (docs/protocol.md):

====================================  ==========================
``route:{route_id}:{UP|DOWN|all}``    public
``stop:{stop_id}:arrivals``           public
``alerts:{route_id}`` / ``alerts:all`` public
``leaderboard:{daily|weekly|monthly}`` public
``leaderboard:route:{route_id}``      public
``user:{user_id}:notifications``      that user only
``system:all_updates``                admins only
``system:stats``                      admins only
====================================  ==========================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "Access",
    "Channel",
    "Principal",
    "InvalidChannel",
    "parse_channel",
    "can_subscribe",
]

MAX_CHANNEL_LENGTH = 128
_ID = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_ID_RE = re.compile(_ID)


class Access(Enum):
    PUBLIC = "public"
    OWNER = "owner"  # only the user named in the channel
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    kind: str  # route | stop | alerts | leaderboard | user | system
    access: Access
    owner: str | None = None  # user id for user channels


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of a connection or an API call."""

    user_id: str | None
    admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Principal(user_id=None)


class InvalidChannel(ValueError):
    """The name does not match the channel grammar."""


_RULES: tuple[tuple[re.Pattern[str], str, Access], ...] = (
    (re.compile(rf"route:(?P<id>{_ID}):(UP|DOWN|all)"), "route", Access.PUBLIC),
    (re.compile(rf"stop:(?P<id>{_ID}):arrivals"), "stop", Access.PUBLIC),
    (re.compile(rf"alerts:(?P<id>{_ID})"), "alerts", Access.PUBLIC),
    (re.compile(r"leaderboard:(daily|weekly|monthly)"), "leaderboard", Access.PUBLIC),
    (re.compile(rf"leaderboard:route:(?P<id>{_ID})"), "leaderboard", Access.PUBLIC),
    (re.compile(rf"user:(?P<id>{_ID}):notifications"), "user", Access.OWNER),
    (re.compile(r"system:all_updates"), "system", Access.ADMIN),
    (re.compile(r"system:stats"), "system", Access.ADMIN),  # the dashboard's figures (fastgw.admin)
)


def parse_channel(name: object) -> Channel:
    """Parse and validate a channel name; raises :class:`InvalidChannel`."""
    if not isinstance(name, str) or not name:
        raise InvalidChannel("channel must be a non-empty string")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise InvalidChannel(f"channel longer than {MAX_CHANNEL_LENGTH} characters")
    for pattern, kind, access in _RULES:
        m = pattern.fullmatch(name)
        if m:
            owner = m.group("id") if access is Access.OWNER else None
            return Channel(name=name, kind=kind, access=access, owner=owner)
    raise InvalidChannel(f"unknown channel {name!r}")


def can_subscribe(channel: Channel, who: Principal) -> bool:
    """Permission rule: public to all, user channels to their owner, system to admins."""
    if channel.access is Access.PUBLIC:
        return True
    if channel.access is Access.OWNER:
        return who.user_id is not None and who.user_id == channel.owner
    return who.admin


def is_valid_user_id(user_id: str) -> bool:
    return bool(_ID_RE.fullmatch(user_id))
