"""Who subscribes to what: the subscription plan of a load test. Pure, seeded, reproducible.

BMTC pattern (:func:`bmtc_plan`): riders watch a route direction (``route:{id}:UP|DOWN``)
or their stop (``stop:{id}:arrivals``), from the packaged GTFS subset. Popularity is
Zipf-like: the route directions ranked by their number of scheduled trips, the stops
by the number of trips that serve them (ties by id), and the channel of rank ``r``
weighs ``1 / r ** s``. Each client draws ``k`` distinct channels (a route direction
with probability ``route_share``, else a stop), and a share of the users
(``notification_share``) also subscribes to its own ``user:{uid}:notifications``
(only with tokens: anonymous clients may not).

Fan-out (:func:`fanout_plan`): every client on one channel.

Wire profiles (``?profile=``) are dealt out in exact proportions of ``profile_mix``
(largest remainder), shuffled with the same seed. The same arguments always give the
same plan.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Sequence

from fastgw.channels import InvalidChannel, is_valid_user_id, parse_channel

__all__ = [
    "ClientSpec",
    "Plan",
    "PROFILES",
    "parse_profile_mix",
    "deal_profiles",
    "ranked_channels",
    "bmtc_plan",
    "fanout_plan",
    "default_fanout_channel",
]

#: Wire profiles a client may ask for (docs/protocol.md, Wire profiles).
PROFILES = ("full", "cellular", "slow")


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client: its user id (token subject), wire profile and channels (indices into ``Plan.channels``)."""

    index: int
    user_id: str
    profile: str
    channels: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """Channels (most subscribed first) and the clients that subscribe to them."""

    kind: str
    channels: tuple[str, ...]
    clients: tuple[ClientSpec, ...]
    #: the arguments that made it (for the report)
    params: dict[str, Any] = field(default_factory=dict)

    def subscribers(self) -> list[int]:
        """Subscribers per channel, indexed like ``channels``."""
        counts = [0] * len(self.channels)
        for client in self.clients:
            for ch in client.channels:
                counts[ch] += 1
        return counts

    def summary(self, top: int = 10) -> dict[str, Any]:
        subs = self.subscribers()
        kinds = Counter(name.split(":", 1)[0] for name in self.channels)
        per_client = [len(c.channels) for c in self.clients]
        return {
            "kind": self.kind,
            "params": self.params,
            "clients": len(self.clients),
            "channels": len(self.channels),
            "channels_by_kind": dict(sorted(kinds.items())),
            "subscriptions": sum(per_client),
            "subscriptions_per_client": {"min": min(per_client, default=0), "max": max(per_client, default=0)},
            "profiles": dict(sorted(Counter(c.profile for c in self.clients).items())),
            "top_channels": [[self.channels[i], subs[i]] for i in range(min(top, len(self.channels)))],
        }


def parse_profile_mix(text: str | None) -> dict[str, float]:
    """``"full=0.6,cellular=0.3,slow=0.1"`` → shares that sum to 1. Empty or None: all ``full``.

    Shares are relative (``full=3,slow=1`` is 75 % / 25 %); unknown profiles, negative
    or malformed shares raise ``ValueError``."""
    if not text or not text.strip():
        return {"full": 1.0}
    shares: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in PROFILES:
            raise ValueError(f"{part!r}: expected PROFILE=SHARE with PROFILE one of {', '.join(PROFILES)}")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: the share must be a number") from None
        if share < 0 or share != share or share == float("inf"):
            raise ValueError(f"{part!r}: the share must be a finite number >= 0")
        shares[name] = shares.get(name, 0.0) + share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("the profile mix must have a positive share")
    return {name: share / total for name, share in shares.items() if share > 0}


def deal_profiles(n: int, mix: dict[str, float], rng: random.Random) -> list[str]:
    """``n`` profiles in the exact proportions of ``mix`` (largest remainder), shuffled by ``rng``."""
    names = sorted(mix)
    exact = [mix[name] * n for name in names]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(names)), key=lambda i: (exact[i] - counts[i], -i), reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    out = [name for name, count in zip(names, counts) for _ in range(count)]
    rng.shuffle(out)
    return out


def ranked_channels(feed: Any = None) -> tuple[list[str], list[str]]:
    """Route-direction channels and stop channels of the GTFS subset, most popular first.

    Route directions by scheduled trips; stops by the trips of the patterns that serve
    them. Ties are broken by channel name so the order is stable."""
    if feed is None:
        from fastgw.transit.gtfs import load_feed

        feed = load_feed()
    routes: list[tuple[int, str]] = []
    stop_trips: Counter[str] = Counter()
    for pattern in feed.patterns():
        routes.append((len(pattern.trips), f"route:{pattern.route_id}:{pattern.direction}"))
        for stop in pattern.stops:
            stop_trips[stop.stop_id] += len(pattern.trips)
    route_names = [name for _, name in sorted(routes, key=lambda t: (-t[0], t[1]))]
    stop_names = [f"stop:{sid}:arrivals" for sid, _ in sorted(stop_trips.items(), key=lambda t: (-t[1], t[0]))]
    return _valid(route_names), _valid(stop_names)


def _valid(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            parse_channel(name)
        except InvalidChannel:  # an id outside the grammar: not subscribable, leave it out
            continue
        out.append(name)
    return out


def default_fanout_channel(feed: Any = None) -> str:
    """The most popular route direction: what the ``fanout`` scenario uses by default."""
    routes, _ = ranked_channels(feed)
    return routes[0]


class _Zipf:
    """Draws indices 0..n-1 with weight ``1 / (i + 1) ** s``."""

    def __init__(self, n: int, s: float) -> None:
        self.n = n
        self.cum = list(accumulate(1.0 / (i + 1) ** s for i in range(n)))

    def draw(self, rng: random.Random) -> int:
        i = bisect_right(self.cum, rng.random() * self.cum[-1])
        return min(i, self.n - 1)


def user_ids(n: int, prefix: str) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    if n and not (is_valid_user_id(ids[0]) and is_valid_user_id(ids[-1])):
        raise ValueError(f"user id prefix {prefix!r} gives invalid user ids (e.g. {ids[-1]!r})")
    return ids


def bmtc_plan(
    n: int,
    *,
    k: int = 3,
    seed: int = 1,
    zipf_s: float = 1.0,
    route_share: float = 0.5,
    notification_share: float = 0.2,
    anonymous: bool = False,
    user_prefix: str = "lt",
    profile_mix: dict[str, float] | None = None,
    feed: Any = None,
) -> Plan:
    """Each of ``n`` clients: ``k`` distinct route/stop channels drawn by Zipf popularity,
    plus its own notifications for a ``notification_share`` of the users (not when anonymous)."""
    if n < 0 or k < 0:
        raise ValueError("clients and channels per client must be >= 0")
    if not 0.0 <= route_share <= 1.0 or not 0.0 <= notification_share <= 1.0:
        raise ValueError("route_share and notification_share must be between 0 and 1")
    if zipf_s < 0:
        raise ValueError("the Zipf exponent must be >= 0")
    rng = random.Random(seed)
    routes, stops = ranked_channels(feed)
    pools = [(routes, _Zipf(len(routes), zipf_s)), (stops, _Zipf(len(stops), zipf_s))]
    k_eff = min(k, len(routes) + len(stops))
    uids = user_ids(n, user_prefix)
    profiles = deal_profiles(n, profile_mix or {"full": 1.0}, rng)
    drawn: list[list[str]] = []
    for i in range(n):
        mine: list[str] = []
        for _attempt in range(20 * k_eff + 20):  # bounded: distinct draws from a skewed pool
            if len(mine) >= k_eff:
                break
            names, zipf = pools[0] if (rng.random() < route_share and routes) or not stops else pools[1]
            name = names[zipf.draw(rng)]
            if name not in mine:
                mine.append(name)
        wants_notifications = rng.random() < notification_share
        if wants_notifications and not anonymous:
            mine.append(f"user:{uids[i]}:notifications")
        drawn.append(mine)
    params = {"k": k, "seed": seed, "zipf_s": zipf_s, "route_share": route_share,
              "notification_share": 0.0 if anonymous else notification_share,
              "user_prefix": user_prefix, "profile_mix": profile_mix or {"full": 1.0}}
    return _assemble("bmtc", drawn, uids, profiles, params)


def fanout_plan(
    n: int,
    channel: str,
    *,
    seed: int = 1,
    user_prefix: str = "lt",
    profile_mix: dict[str, float] | None = None,
) -> Plan:
    """Every one of ``n`` clients subscribes to ``channel`` (which must be in the grammar)."""
    parse_channel(channel)  # InvalidChannel (a ValueError) for a bad name
    if channel.startswith("user:") and n > 1:
        raise ValueError("a user channel has one subscriber: pick a public channel for fanout")
    rng = random.Random(seed)
    uids = user_ids(n, user_prefix)
    profiles = deal_profiles(n, profile_mix or {"full": 1.0}, rng)
    params = {"channel": channel, "seed": seed, "user_prefix": user_prefix,
              "profile_mix": profile_mix or {"full": 1.0}}
    return _assemble("fanout", [[channel]] * n, uids, profiles, params)


def _assemble(kind: str, drawn: Sequence[Sequence[str]], uids: list[str], profiles: list[str],
              params: dict[str, Any]) -> Plan:
    """Index the channels, most subscribed first (ties by name), and build the clients."""
    counts = Counter(name for mine in drawn for name in mine)
    channels = tuple(name for name, _ in sorted(counts.items(), key=lambda t: (-t[1], t[0])))
    index = {name: i for i, name in enumerate(channels)}
    clients = tuple(
        ClientSpec(i, uids[i], profiles[i], tuple(index[name] for name in mine)) for i, mine in enumerate(drawn)
    )
    return Plan(kind, channels, clients, params)
