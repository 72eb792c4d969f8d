#!/usr/bin/env python3
"""Train the zstd dictionary of the ``fastgw.v1.zstd`` subprotocol.

Clients that negotiate ``fastgw.v1.zstd`` receive every channel message as one
binary frame: the ``channel_message`` envelope JSON compressed on its own
(stateless, one zstd frame per message) with a dictionary trained on transit
messages. This script builds that dictionary:

1. **Samples.** The bus simulator (:mod:`fastgw.sources.simulator`, packaged
   BMTC GTFS subset) runs at several times of day on several dates, each
   window on a fresh simulator with a fixed seed and a fixed clock. Every
   ``location_update`` published on ``route:{id}:{UP|DOWN}`` and
   ``route:{id}:all`` is wrapped in the ``channel_message`` envelope exactly as
   :func:`fastgw.protocol.native.channel_message` does (message id
   ``<node>-<base36 counter>``, gateway timestamp a few ms after the
   observation), in the three wire forms ``full``, ``cellular`` and ``slow``.
   A few hundred ``service_alert``, ``stop_arrival``, ``user_notification`` and
   ``leaderboard_update`` envelopes (fields of docs/protocol.md, real stop and
   route names) are added.
2. **Training.** ``zstandard.train_dictionary`` (fastCover, single thread,
   k/d optimisation) for a few dictionary sizes and optimisation levels.
3. **Selection.** Each candidate compresses a *held-out* sample (another
   simulator seed, other dates and times of day, another gateway node id) the
   way :class:`fastgw.compression.ZstdCodec` does (no dictionary id, checksum
   or content size in the frame, the codec's level); the candidate with the
   fewest held-out bytes is written (a smaller dictionary wins ties within
   0.1 %).

Training dates are in 2026-2028 and held-out dates in 2029, so the dictionary
cannot profit from date strings it would not see in service later. Node ids
and message counters are random per window for the same reason. A second
figure, "unseen routes", trains on half of the routes and measures on the
other half: what a route outside the packaged subset can expect.

The output is deterministic: same inputs, same dictionary bytes (fastCover is
run single-threaded; the dictionary id is derived by zstd from the dictionary
content, so it is reproducible too).

Usage (from the repository root)::

    python scripts/train_zstd_dictionary.py [--output PATH] [--quiet]

Writes ``fastgw/data/zstd-transit-v1.dict`` (raw dictionary bytes) by default.

The ``cellular``/``slow`` forms use ``fastgw.core.reduce_location`` when the
hot-path module provides it, else :func:`reduce_location_reference` below
(same rules; see docs/protocol.md).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import zstandard

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from fastgw.messages import MessageIds, iso_from_epoch  # noqa: E402
from fastgw.protocol.native import channel_message  # noqa: E402
from fastgw.sources.simulator import SYSTEM_CHANNEL, Simulator  # noqa: E402
from fastgw.transit.gtfs import Feed, load_feed  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "fastgw" / "data" / "zstd-transit-v1.dict"

PROFILES = ("full", "cellular", "slow")
#: profile -> (decimals, drop_confidence) for ``reduce_location``; ``full`` is not reduced.
PROFILE_REDUCTION: dict[str, tuple[int, bool]] = {"cellular": (5, False), "slow": (4, True)}

#: Seeds of the three disjoint streams: training, held-out (dictionary selection), benchmark.
TRAIN_SEED = 2026_11_29
HELDOUT_SEED = 7_331_017
BENCH_SEED = 424_242

#: Local (Asia/Kolkata) times of day the simulator is run at: night (virtual trips),
#: first buses, morning peak, midday, evening peak, late evening.
TRAIN_TIMES = (
    "00:40", "02:30", "05:50", "07:35", "08:50", "10:20", "12:45", "15:10", "17:40", "18:55", "20:30", "22:45",
)
HELDOUT_TIMES = ("01:15", "06:20", "08:05", "11:30", "14:00", "17:05", "19:25", "23:10")
BENCH_TIMES = ("03:00", "06:45", "09:10", "13:20", "16:35", "18:15", "21:05")

TRAIN_YEARS = (2026, 2028)  # inclusive
HELDOUT_YEARS = (2029, 2029)
BENCH_YEARS = (2030, 2030)

#: Training sample: location_update envelopes per profile, and other message types in all.
TRAIN_PER_PROFILE = 2_500
TRAIN_OTHERS = 400
HELDOUT_PER_PROFILE = 1_200
HELDOUT_OTHERS = 200

#: Candidates: dictionary sizes (bytes) x train_dictionary(level=...) of the k/d optimisation.
#: Level 9 in the optimisation was tried too: 1-4 % more held-out bytes at every size and
#: 2.5x the training time. Sizes stop at 16 KiB: 32 KiB saved < 2 % more, mostly by
#: memorising stop names of the packaged routes (see the unseen-routes line).
DICT_SIZES = (4_096, 6_144, 8_192, 12_288, 16_384)
TRAIN_LEVELS = (3,)
#: fastCover k/d search: ``steps`` k values for each d in (6, 8) (d=0 means both).
TRAIN_STEPS = 16
#: A smaller candidate wins when it is within this fraction of the best held-out total.
TIE_FRACTION = 0.001


# --------------------------------------------------------------------------- reduction


def reduce_location_reference(message: dict[str, Any], decimals: int, drop_confidence: bool) -> dict[str, Any]:
    """Reference ``cellular``/``slow`` reduction of a ``location_update`` (used until the core has one).

    A new dict, key order kept: latitude/longitude ``round(x, decimals)``,
    speed ``int(round(x))``, heading to the nearest 5 degrees as an int mod 360,
    ``contributor_count`` removed, ``confidence`` removed if ``drop_confidence``,
    ``metadata.quality_score`` removed and ``metadata`` dropped if then empty.
    """
    out = dict(message)
    for key in ("latitude", "longitude"):
        if isinstance(out.get(key), (int, float)):
            out[key] = round(out[key], decimals)
    if isinstance(out.get("speed"), (int, float)):
        out["speed"] = int(round(out["speed"]))
    if isinstance(out.get("heading"), (int, float)):
        out["heading"] = int(round(out["heading"] / 5.0)) * 5 % 360
    out.pop("contributor_count", None)
    if drop_confidence:
        out.pop("confidence", None)
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        metadata = {k: v for k, v in metadata.items() if k != "quality_score"}
        if metadata:
            out["metadata"] = metadata
        else:
            del out["metadata"]
    return out


def location_reducer() -> tuple[Callable[[dict, int, bool], dict], str]:
    """``fastgw.core.reduce_location`` if the hot-path module has it, else the reference. Returns (fn, name)."""
    import fastgw.core

    fn = getattr(fastgw.core, "reduce_location", None)
    if callable(fn):
        return fn, "fastgw.core.reduce_location"
    return reduce_location_reference, "reduce_location_reference (fastgw.core has no reduce_location)"


# --------------------------------------------------------------------------- message streams


class Publish(NamedTuple):
    """One publish on one channel, as the hub would envelope it."""

    channel: str
    message: dict[str, Any]
    timestamp: str  # the gateway's publish time (envelope ``timestamp``)
    message_id: str


def envelope(publish: Publish, profile: str = "full", reduce: Callable[[dict, int, bool], dict] | None = None) -> bytes:
    """The ``channel_message`` bytes a subscriber with ``profile`` receives for ``publish``."""
    message = publish.message
    if profile != "full" and message.get("type") == "location_update":
        decimals, drop_confidence = PROFILE_REDUCTION[profile]
        message = (reduce or reduce_location_reference)(message, decimals, drop_confidence)
    return channel_message(publish.channel, message, publish.timestamp, publish.message_id)


class _Node:
    """A gateway node's message ids (``<8 hex>-<base36 counter>``) and publish clock."""

    def __init__(self, rng: random.Random) -> None:
        node_id = f"{rng.getrandbits(32):08x}"
        # A node that has been up for a while: counters of 4-6 base36 digits.
        self._ids = MessageIds(node_id, start=rng.randrange(50_000, 500_000_000) + 1)

    def next_id(self) -> str:
        return self._ids.next()


def _windows(seed: int, times: Iterable[str], years: tuple[int, int]) -> list[float]:
    """One epoch start per time of day (Asia/Kolkata), each on a seeded random date in ``years``."""
    rng = random.Random(f"windows:{seed}")
    tz = ZoneInfo("Asia/Kolkata")
    first, last = date(years[0], 1, 1), date(years[1], 12, 31)
    starts = []
    for hhmm in times:
        day = first + timedelta(days=rng.randrange((last - first).days + 1))
        hour, minute = map(int, hhmm.split(":"))
        local = datetime(day.year, day.month, day.day, hour, minute, rng.randrange(60), tzinfo=tz)
        starts.append(local.timestamp() + rng.randrange(1000) / 1000.0)
    return starts


def location_stream(
    seed: int,
    *,
    times: Iterable[str],
    years: tuple[int, int],
    ticks: int = 3,
    max_buses: int = 200,
    interval: float = 1.0,
    routes: Iterable[str] | None = None,
    feed: Feed | None = None,
) -> list[Publish]:
    """Every route-channel ``location_update`` publish of the simulator, window after window.

    Each window (a time of day on a seeded date) runs a fresh
    ``Simulator(seed=...)`` for ``ticks`` ticks ``interval`` s apart on a
    fixed clock, as one gateway node: each publish (the admin channel
    ``system:all_updates`` too) takes the next message id; the gateway
    timestamp is the observation time plus a few milliseconds.
    """
    feed = feed or load_feed()
    route_list = None if routes is None else sorted(routes)
    out: list[Publish] = []
    for index, start in enumerate(_windows(seed, times, years)):
        rng = random.Random(f"stream:{seed}:{index}")
        node = _Node(rng)
        pending: list[tuple[str, dict]] = []
        sim = Simulator(
            lambda channel, message: pending.append((channel, message)),
            feed=feed,
            max_buses=max_buses,
            interval=interval,
            clock=lambda: start,
            seed=seed * 1000 + index,
            routes=route_list,
        )
        for tick in range(ticks):
            now = start + tick * interval
            pending.clear()
            sim.step(now)
            publish_s = now + rng.uniform(0.0004, 0.004)
            for channel, message in pending:
                message_id = node.next_id()
                publish_s += rng.uniform(0.000002, 0.00002)
                if channel == SYSTEM_CHANNEL:
                    continue  # admins only; counted for the message ids
                out.append(Publish(channel, message, iso_from_epoch(publish_s), message_id))
    return out


# Realistic texts of the other message types (docs/protocol.md lists their fields).
_ALERT_TEXTS = (
    ("Diversion", "Route {r} diverted via {s} due to metro construction work. Expect delays of up to 15 minutes."),
    ("Service disruption", "Buses on route {r} are running late because of heavy traffic near {s}."),
    ("Waterlogging", "Heavy rain: route {r} will skip {s} until the water recedes."),
    ("Road closure", "{s} is closed for a public event. Route {r} stops at the next stop instead."),
    ("Extra services", "Additional buses on route {r} this evening for the match at {s}."),
    ("Strike advisory", "Reduced frequency on route {r} today. Please plan your journey in advance."),
)
_SEVERITIES = ("info", "warning", "critical")
_NOTIFICATION_TEXTS = (
    ("arrival", "Your bus is arriving", "{r} towards {h} will reach {s} in {m} min."),
    ("arrival", "Bus delayed", "{r} is running {m} min late at {s}."),
    ("reward", "Points earned", "You earned {m} points for sharing your location on {r}. Thank you!"),
    ("trip", "Trip reminder", "Leave now to catch {r} from {s} in {m} minutes."),
    ("alert", "Route alert", "{r}: diversion near {s}. Tap for details."),
)
_FIRST_NAMES = ("Aditi", "Rahul", "Kavya", "Suresh", "Meera", "Arjun", "Lakshmi", "Vikram", "Divya", "Manjunath",
                "Priya", "Naveen", "Ananya", "Ravi", "Deepa", "Kiran", "Shreya", "Ganesh", "Pooja", "Harish")
_LAST_INITIALS = "ABCDGHKMNPRSTV"
_CROWDING = ("low", "medium", "high", "full")
_PERIODS = ("daily", "weekly", "monthly")


def _user_id(rng: random.Random) -> str:
    return f"u{rng.randrange(10_000, 9_999_999)}"


def other_stream(seed: int, count: int, *, years: tuple[int, int], feed: Feed | None = None) -> list[Publish]:
    """``count`` envelopes of the non-location types, a quarter of each, with real stops and routes.

    ``stop_arrival`` on ``stop:{id}:arrivals``, ``service_alert`` on
    ``alerts:{route}``/``alerts:all``, ``user_notification`` on
    ``user:{id}:notifications``, ``leaderboard_update`` on
    ``leaderboard:{period}``/``leaderboard:route:{route}``.
    """
    feed = feed or load_feed()
    rng = random.Random(f"others:{seed}")
    node = _Node(rng)
    routes = sorted(feed.routes.values(), key=lambda r: r.route_id)
    starts = _windows(seed, [f"{h:02d}:{m:02d}" for h in range(5, 24, 3) for m in (5, 35)], years)
    out: list[Publish] = []
    for i in range(count):
        now = starts[i % len(starts)] + rng.uniform(0, 3600)
        route = rng.choice(routes)
        pattern = route.directions[rng.choice(sorted(route.directions))]
        stop = feed.stops[rng.choice(pattern.stops).stop_id]
        kind = i % 4
        if kind == 0:
            eta = rng.randrange(30, 1800)
            delay = rng.choice((0, 0, 1, 2, 3, 5, 8, -1))
            message = {
                "type": "stop_arrival",
                "stop_id": stop.stop_id,
                "route_id": route.route_id,
                "route_number": route.short_name,
                "vehicle_id": f"KA-{rng.choice(('01', '41', '51', '57'))}-F-{rng.randrange(1, 10_000):04d}",
                "eta_seconds": eta,
                "estimated_arrival": iso_from_epoch(now + eta),
                "scheduled_arrival": iso_from_epoch(now + eta - delay * 60),
                "delay_minutes": delay,
                "confidence": round(rng.uniform(0.6, 0.99), 2),
                "crowding_level": rng.choice(_CROWDING),
            }
            channel = f"stop:{stop.stop_id}:arrivals"
        elif kind == 1:
            title, text = rng.choice(_ALERT_TEXTS)
            affected = sorted({route.route_id, *(rng.choice(routes).route_id for _ in range(rng.randrange(3)))})
            message = {
                "type": "service_alert",
                "alert_id": f"alert-{rng.randrange(1, 99_999)}",
                "severity": rng.choice(_SEVERITIES),
                "title": f"{title}: {route.short_name}",
                "message": text.format(r=route.short_name, s=stop.name),
                "affected_routes": affected,
                "start_time": iso_from_epoch(now - rng.randrange(0, 7200)),
                "end_time": iso_from_epoch(now + rng.randrange(1800, 86_400)),
            }
            channel = rng.choice((f"alerts:{route.route_id}", "alerts:all"))
        elif kind == 2:
            category, title, body = rng.choice(_NOTIFICATION_TEXTS)
            user_id = _user_id(rng)
            message = {
                "type": "user_notification",
                "notification_id": f"n-{rng.getrandbits(40):010x}",
                "user_id": user_id,
                "title": title,
                "body": body.format(r=route.short_name, h=pattern.headsign, s=stop.name, m=rng.randrange(2, 25)),
                "category": category,
                "data": {"route_id": route.route_id, "stop_id": stop.stop_id},
            }
            channel = f"user:{user_id}:notifications"
        else:
            period = rng.choice(_PERIODS)
            points = sorted((rng.randrange(50, 5000) for _ in range(rng.choice((3, 5, 10)))), reverse=True)
            entries = [
                {"rank": rank, "user_id": _user_id(rng),
                 "display_name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_INITIALS)}.", "points": p}
                for rank, p in enumerate(points, 1)
            ]
            by_route = rng.random() < 0.5
            message = {
                "type": "leaderboard_update",
                "period": period,
                "route_id": route.route_id if by_route else None,
                "entries": entries,
                "updated_at": iso_from_epoch(now),
            }
            channel = f"leaderboard:route:{route.route_id}" if by_route else f"leaderboard:{period}"
        out.append(Publish(channel, message, iso_from_epoch(now + rng.uniform(0.0004, 0.004)), node.next_id()))
    return out


# --------------------------------------------------------------------------- sample sets


class SampleSet(NamedTuple):
    """Envelope bytes by kind: ``full``/``cellular``/``slow`` location updates and ``other`` types."""

    by_kind: dict[str, list[bytes]]

    def all(self) -> list[bytes]:
        return [s for kind in sorted(self.by_kind) for s in self.by_kind[kind]]


def _pick(rng: random.Random, items: list[Publish], n: int) -> list[Publish]:
    """``n`` items in stream order (all of them if fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), n))]


def build_samples(
    seed: int,
    *,
    times: Iterable[str],
    years: tuple[int, int],
    per_profile: int,
    others: int,
    reduce: Callable[[dict, int, bool], dict],
    routes: Iterable[str] | None = None,
    feed: Feed | None = None,
) -> SampleSet:
    """A seeded sample: ``per_profile`` location envelopes per profile (drawn independently) + ``others``."""
    feed = feed or load_feed()
    stream = location_stream(seed, times=times, years=years, routes=routes, feed=feed)
    rng = random.Random(f"pick:{seed}")
    by_kind = {profile: [envelope(p, profile, reduce) for p in _pick(rng, stream, per_profile)] for profile in PROFILES}
    by_kind["other"] = [envelope(p) for p in other_stream(seed, others, years=years, feed=feed)]
    return SampleSet(by_kind)


# --------------------------------------------------------------------------- training


def train(samples: list[bytes], dict_size: int, level: int) -> zstandard.ZstdCompressionDict:
    """fastCover with k/d optimisation, single-threaded (deterministic)."""
    return zstandard.train_dictionary(dict_size, samples, d=0, steps=TRAIN_STEPS, level=level, threads=0)


def compressed_sizes(dictionary: bytes, samples: Iterable[bytes], level: int) -> list[int]:
    """Sizes of the frames the codec would send (no dict id, checksum or content size)."""
    from fastgw.compression import make_compressor

    cctx = make_compressor(dictionary, level)
    return [len(cctx.compress(s)) for s in samples]


def _mean(values: list[int]) -> float:
    return statistics.fmean(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="dictionary file (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only the result line")
    parser.add_argument("--no-unseen", action="store_true", help="skip the unseen-routes measurement")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.quiet else print

    from fastgw.compression import DEFAULT_LEVEL

    t0 = time.perf_counter()
    feed = load_feed()
    reduce, reducer_name = location_reducer()
    say(f"reducer: {reducer_name}")
    training = build_samples(TRAIN_SEED, times=TRAIN_TIMES, years=TRAIN_YEARS, per_profile=TRAIN_PER_PROFILE,
                             others=TRAIN_OTHERS, reduce=reduce, feed=feed)
    heldout = build_samples(HELDOUT_SEED, times=HELDOUT_TIMES, years=HELDOUT_YEARS, per_profile=HELDOUT_PER_PROFILE,
                            others=HELDOUT_OTHERS, reduce=reduce, feed=feed)
    train_samples, held_samples = training.all(), heldout.all()
    if set(train_samples) & set(held_samples):
        raise SystemExit("held-out sample overlaps the training sample")
    say(f"samples: training {len(train_samples)} ({sum(map(len, train_samples)):,} B), "
        f"held-out {len(held_samples)} ({sum(map(len, held_samples)):,} B); "
        f"{time.perf_counter() - t0:.1f} s")
    kinds = sorted(training.by_kind)
    say("mean envelope bytes (held-out): " + ", ".join(f"{k} {_mean([len(s) for s in heldout.by_kind[k]]):.1f}"
                                                       for k in kinds))

    # --- candidates
    say(f"\nheld-out mean compressed bytes at codec level {DEFAULT_LEVEL} (no dict id / checksum / content size)")
    say(f"{'size':>6} {'tlevel':>6} {'k':>5} {'d':>3} {'train s':>7} " + " ".join(f"{k:>9}" for k in kinds)
        + f" {'total B':>9}")
    candidates = []
    for dict_size in DICT_SIZES:
        for tlevel in TRAIN_LEVELS:
            t = time.perf_counter()
            d = train(train_samples, dict_size, tlevel)
            elapsed = time.perf_counter() - t
            raw = d.as_bytes()
            per_kind = {k: _mean(compressed_sizes(raw, heldout.by_kind[k], DEFAULT_LEVEL)) for k in kinds}
            total = sum(sum(compressed_sizes(raw, heldout.by_kind[k], DEFAULT_LEVEL)) for k in kinds)
            candidates.append((total, len(raw), tlevel, raw, d))
            say(f"{len(raw):>6} {tlevel:>6} {d.k:>5} {d.d:>3} {elapsed:>7.2f} "
                + " ".join(f"{per_kind[k]:>9.1f}" for k in kinds) + f" {total:>9,}")
    best_total = min(c[0] for c in candidates)
    eligible = [c for c in candidates if c[0] <= best_total * (1 + TIE_FRACTION)]
    total, size, tlevel, raw, chosen = min(eligible, key=lambda c: (c[1], c[0], c[2]))
    say(f"chosen: {size} B, train level {tlevel}, k={chosen.k} d={chosen.d}, held-out total {total:,} B "
        f"(best {best_total:,} B)")

    # --- level sweep with the chosen dictionary (informs fastgw.compression.DEFAULT_LEVEL)
    say("\ncodec level sweep, chosen dictionary: held-out location_update mean B; compress µs/message (cellular)")
    say(f"{'level':>5} " + " ".join(f"{k:>9}" for k in PROFILES) + f" {'µs/msg':>7}")
    from fastgw.compression import make_compressor

    sweep_input = heldout.by_kind["cellular"]
    for level in (1, 3, 4, 5, 6, 7, 9, 12, 15, 19):
        cctx = make_compressor(raw, level)
        best_us = float("inf")
        for _ in range(3 if level < 12 else 1):
            t = time.perf_counter()
            for s in sweep_input:
                cctx.compress(s)
            best_us = min(best_us, (time.perf_counter() - t) / len(sweep_input) * 1e6)
        means = [_mean([len(cctx.compress(s)) for s in heldout.by_kind[k]]) for k in PROFILES]
        mark = "  <- codec" if level == DEFAULT_LEVEL else ""
        say(f"{level:>5} " + " ".join(f"{m:>9.1f}" for m in means) + f" {best_us:>7.2f}{mark}")

    # --- generalisation to routes the dictionary has not seen
    if not args.no_unseen:
        route_ids = sorted(feed.routes)
        seen, unseen = route_ids[0::2], route_ids[1::2]
        tr = build_samples(TRAIN_SEED, times=TRAIN_TIMES, years=TRAIN_YEARS, per_profile=TRAIN_PER_PROFILE,
                           others=0, reduce=reduce, routes=seen, feed=feed)
        ho = build_samples(HELDOUT_SEED, times=HELDOUT_TIMES, years=HELDOUT_YEARS, per_profile=HELDOUT_PER_PROFILE,
                           others=0, reduce=reduce, routes=unseen, feed=feed)
        half = zstandard.train_dictionary(size, tr.all(), k=chosen.k, d=chosen.d, threads=0,
                                          level=tlevel).as_bytes()
        line = []
        for k in PROFILES:
            same = _mean(compressed_sizes(raw, heldout.by_kind[k], DEFAULT_LEVEL))
            other = _mean(compressed_sizes(half, ho.by_kind[k], DEFAULT_LEVEL))
            line.append(f"{k} {other:.1f} B (all routes seen: {same:.1f} B)")
        say(f"\nunseen routes (trained on {len(seen)} routes, measured on the other {len(unseen)}): " + "; ".join(line))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(args.output)
    dict_id = zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_FULLDICT).dict_id()
    print(f"wrote {args.output} ({len(raw)} B, dict id {dict_id}, sha256 {hashlib.sha256(raw).hexdigest()[:16]}, "
          f"libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
