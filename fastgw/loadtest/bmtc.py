"""The ``bmtc`` scenario: the whole path, Kafka → ``fastgw serve --kafka`` → N WebSocket clients.

What runs (the gateway is started by the user, with ``--kafka`` on the same topic):

1. the BMTC plan (:func:`fastgw.loadtest.plan.bmtc_plan`: route directions and stops by
   Zipf popularity, own notifications for a share of the users), the riders' devices as
   wire profiles (:data:`DEFAULT_PROFILE_MIX` unless ``--profile-mix``: phones on ``cellular``);
2. the clients connect (``controller``), each client process with a :class:`SourceCounter`
   (``client_options`` → ``source_module``);
3. the producer subprocess (:mod:`fastgw.loadtest.producer`): simulated reports built at
   Monday 08:30 IST, then a warm-up (one record per partition every 0.5 s) until a
   client has seen a ``location_update`` from every partition (the gateway's consumers
   are assigned), 1 s of quiet, ``run.mark(t0)``, and ``--report-rate`` reports/s for
   ``--duration`` s, each stamped with the produce wall clock;
4. the deliveries drain (until none came for 2 s, bounded by ``--drain-timeout``);
5. :meth:`BmtcScenario.finish`: latency percentiles (overall, per channel kind, per wire
   profile, per second), deliveries/s, losses, the producer's rate, the target row.

Latency: ``time.time_ns()`` at the client's socket read − the ``timestamp`` inside the
message (``location_update.timestamp`` on route channels, ``stop_arrival.timestamp`` on
stop channels: both are the report's observation time, which the producer sets to its
wall clock right before ``send()``; ETAs are computed from that report). Both clocks are
CLOCK_REALTIME of the load-test host; the timestamp has millisecond resolution (truncated),
so the figures read 0–1 ms high. It covers the produce, the broker, the gateway's
consumer poll and processing (ETAs included), the fan-out and the client's read.

Losses:

* route channels (``route:<id>:<UP|DOWN>``): exact. The location processor turns every
  accepted report into exactly one ``location_update`` on ``route:<route_id>:<direction>``
  (``fastgw.processing.location``); the producer counts the records the broker
  acknowledged per route direction, and each subscriber connection must have received
  that many (those with a source timestamp at or after ``t0``). For ``cellular``/``slow``
  subscribers, a newer location of the same bus may replace an older one queued in the
  same flush window (conflation): up to the producer's ``conflatable`` count of the
  channel is reported as conflated, not lost.
* stop channels (``stop:<id>:arrivals``, ETAs): which stops a report yields
  ``stop_arrival`` for depends on the gateway's ETA engine state (next 5 stops, none
  when off-route), so the expected set is the union of the ``(vehicle_id, timestamp)``
  keys that *any* subscriber of the channel received (all client processes merged); a
  subscriber that lacks some of them lost them. The channel ``offset`` is not used: it is
  contiguous only with the in-memory engine (per-channel counters), while ``--workers 2``
  needs Redis, whose offsets are stream ids. A message that no subscriber of its stop got
  is not seen (a stop with one subscriber cannot show a loss).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import sys
import time
from typing import Any

from fastgw.loadtest import plan as plans
from fastgw.loadtest.child import ChildProcess
from fastgw.loadtest.controller import Run, Scenario, admin_token
from fastgw.loadtest.histogram import N_BUCKETS, Histogram, bucket_of
from fastgw.loadtest.producer import WARM_PREFIX

__all__ = ["BmtcScenario", "SourceCounter", "KINDS", "TARGET_P99_MS", "PROFILE_WINDOWS_MS", "DEFAULT_PROFILE_MIX"]

#: the issue's target: p99 end-to-end at most this (plus the profile's batch window), nothing lost
TARGET_P99_MS = 100.0
#: the gateway's default flush windows (``fastgw serve --window-*``)
PROFILE_WINDOWS_MS = {"full": 0, "cellular": 100, "slow": 500}
#: channel kinds, in the order of the counters
KINDS = ("route", "stop", "user", "system", "other")
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
ROUTE, STOP = 0, 1
#: seconds the deliveries must stay unchanged after the producer finished
QUIET_S = 2.0
#: seconds for the warm-up (a consumer group's first assignment takes a few seconds)
WARMUP_S = 60.0

_CHANNEL = b'"channel":"'
_TIMESTAMP = b'"timestamp":"'
_VEHICLE = b'"vehicle_id":"'
_WARM = WARM_PREFIX.encode()
_READY = 2  # fastgw.loadtest.client.READY


# =========================================================================== client side


#: The riders' devices when ``--profile-mix`` is not given: phones on cellular links (the
#: ``cellular`` profile), the admin dashboard and web on ``full``, a few phones on ``slow``.
DEFAULT_PROFILE_MIX = "cellular=0.8,full=0.1,slow=0.1"


class SourceCounter:
    """Counts, in a client process, the channel messages the gateway made of the Kafka records.

    ``frame(conn, payload, now_ns)`` for every data frame with a ``channel_message`` that
    the load test did not publish (``fastgw.loadtest.client.Engine``). Bytes searches only:
    per envelope (a ``slow`` client's ``batched_messages`` frame holds several) the channel
    name, the message's ``timestamp`` (the first one after the channel: the message's own,
    the envelope's comes after it) and, on stop channels, the ``vehicle_id``.
    """

    def __init__(self, engine: Any) -> None:
        self.eng = engine
        self.index = {name.encode(): i for i, name in enumerate(engine.channels)}
        self.kinds = [_KIND_INDEX.get(name.split(":", 1)[0], len(KINDS) - 1) for name in engine.channels]
        self.hist = [[0] * N_BUCKETS for _ in KINDS]
        self.count = [0] * len(KINDS)
        self.lat_sum = [0] * len(KINDS)
        self.lat_max = [0] * len(KINDS)
        self.lat_min = [1 << 62] * len(KINDS)
        self.hist_by_profile: dict[str, list[int]] = {}
        self.per_second: dict[int, int] = {}  # (sec << 12) | bucket -> count
        self.per_conn: dict[Any, dict[int, int]] = {}
        self.stop_keys: dict[int, set[tuple[bytes, int]]] = {}
        self.prefix_ms: dict[bytes, int] = {}
        self.t0_ns = 0
        self.t0_ms = 0
        self.deliveries = 0
        self.frames = 0
        self.early = 0  # before the mark (warm-up)
        self.stale = 0  # after the mark, but from a report older than t0 (warm-up stragglers)
        self.unknown_channel = 0
        self.malformed = 0
        self.warm: set[int] = set()

    def tick(self) -> dict[str, Any]:
        """The running counts, merged into the client process's ticks (``Engine.tick``)."""
        return {"src_deliveries": self.deliveries, "src_route": self.count[ROUTE], "src_early": self.early,
                "src_warm": sorted(self.warm)}

    def _ms(self, s: bytes) -> int:
        """Epoch ms of ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the minute's base cached)."""
        head = s[:16]
        base = self.prefix_ms.get(head)
        if base is None:
            if len(self.prefix_ms) > 1000:
                self.prefix_ms.clear()
            base = self.prefix_ms[head] = calendar.timegm(time.strptime(head.decode(), "%Y-%m-%dT%H:%M")) * 1000
        return base + int(s[17:19]) * 1000 + int(s[20:23])

    def frame(self, conn: Any, payload: bytes, now: int) -> None:
        self.frames += 1
        t0n = self.eng.t0_ns
        if t0n != self.t0_ns:
            self.t0_ns = t0n
            self.t0_ms = t0n // 1_000_000
        p = payload.find(_CHANNEL)
        if p < 0:
            self.malformed += 1
            return
        while p >= 0:
            p += 11
            q = payload.find(b'"', p)
            t = payload.find(_TIMESTAMP, q)
            if q < 0 or t < 0:
                self.malformed += 1
                return
            t += 13
            try:
                ts_ms = self._ms(payload[t:t + 24])
            except ValueError:
                self.malformed += 1
                return
            ch = self.index.get(payload[p:q])
            if not t0n or ts_ms < self.t0_ms:
                if not t0n:
                    self.early += 1
                    v = payload.find(_VEHICLE, q, t)
                    if v >= 0 and payload.startswith(_WARM, v + 14):  # LTWARM-<partition>-<n>
                        v += 14 + len(_WARM)
                        with contextlib.suppress(ValueError):
                            self.warm.add(int(payload[v:payload.find(b"-", v)]))
                else:
                    self.stale += 1
            elif ch is None:
                self.unknown_channel += 1
            else:
                kind = self.kinds[ch]
                self.deliveries += 1
                us = now // 1000 - ts_ms * 1000
                if us < 0:
                    us = 0
                b = bucket_of(us)
                self.hist[kind][b] += 1
                self.count[kind] += 1
                self.lat_sum[kind] += us
                if us > self.lat_max[kind]:
                    self.lat_max[kind] = us
                if us < self.lat_min[kind]:
                    self.lat_min[kind] = us
                ph = self.hist_by_profile.get(conn.spec[1])
                if ph is None:
                    ph = self.hist_by_profile[conn.spec[1]] = [0] * N_BUCKETS
                ph[b] += 1
                sec = ts_ms // 1000 - self.t0_ms // 1000
                key = (sec << 12) | b
                self.per_second[key] = self.per_second.get(key, 0) + 1
                counts = self.per_conn.get(conn)
                if counts is None:
                    counts = self.per_conn[conn] = {}
                counts[ch] = counts.get(ch, 0) + 1
                if kind == STOP:
                    v = payload.find(_VEHICLE, q, t)
                    if v >= 0:
                        v += 14
                        keys = self.stop_keys.get(ch)
                        if keys is None:
                            keys = self.stop_keys[ch] = set()
                        keys.add((payload[v:payload.find(b'"', v)], ts_ms))
            p = payload.find(_CHANNEL, t)

    def report(self) -> dict[str, Any]:
        # per channel, per wire profile: {messages received: connections}, alive and dropped apart
        received: dict[str, dict[str, dict[str, int]]] = {}
        received_dropped: dict[str, dict[str, dict[str, int]]] = {}
        for conn in self.eng.conns:
            counts = self.per_conn.get(conn) or {}
            into = received if conn.state == _READY else received_dropped
            profile = conn.spec[1]
            for ch in conn.spec[3]:
                per = into.setdefault(str(ch), {}).setdefault(profile, {})
                c = str(counts.get(ch, 0))
                per[c] = per.get(c, 0) + 1
        stop_keys: dict[str, dict[str, list[int]]] = {}
        for ch, keys in self.stop_keys.items():
            by_vehicle: dict[str, list[int]] = {}
            for vehicle, ts in keys:
                by_vehicle.setdefault(vehicle.decode("utf-8", "replace"), []).append(ts)
            stop_keys[str(ch)] = by_vehicle
        latency = {}
        for i, kind in enumerate(KINDS):
            if self.count[i]:
                latency[kind] = {"counts": {str(b): c for b, c in enumerate(self.hist[i]) if c}, "n": self.count[i],
                                 "total": self.lat_sum[i], "min": self.lat_min[i], "max": self.lat_max[i]}
        per_second: dict[str, dict[str, int]] = {}
        for key, c in self.per_second.items():
            per_second.setdefault(str(key >> 12), {})[str(key & 0xFFF)] = c
        return {"frames": self.frames, "deliveries": self.deliveries, "early": self.early, "stale": self.stale,
                "unknown_channel": self.unknown_channel, "malformed": self.malformed,
                "warm_partitions": sorted(self.warm),
                "by_kind": {kind: self.count[i] for i, kind in enumerate(KINDS) if self.count[i]},
                "latency_us": latency,
                "latency_us_by_profile": {p: {str(b): c for b, c in enumerate(h) if c}
                                          for p, h in self.hist_by_profile.items() if any(h)},
                "per_second": per_second, "received": received, "received_dropped": received_dropped,
                "stop_keys": stop_keys}


# =========================================================================== controller side


class ProducerProcess(ChildProcess):
    """``python -m fastgw.loadtest.producer``: its pipes and events; stopped by pid."""

    module = "fastgw.loadtest.producer"
    label = "producer"
    stop_grace = (10.0, 5.0, 5.0)  # after ``quit`` it flushes and closes its Kafka producer

    def __init__(self, python: str) -> None:
        super().__init__(python)
        self.produced = 0
        self.done: dict[str, Any] | None = None

    async def start(self, config: dict[str, Any]) -> None:
        await self.spawn()
        await self.send(config)

    def on_event(self, event: dict[str, Any]) -> bool:
        if event.get("ev") == "tick":
            self.produced = int(event.get("produced", 0))
            return False
        if event.get("ev") == "done":
            self.done = event
            self.produced = int(event.get("sent", 0))
        return True


async def gateway_stats(base_url: str, token: str | None) -> dict[str, Any] | None:
    """``GET /api/stats`` (admin) of one of the gateway's processes, or None when it cannot be read."""
    if not token:
        return None
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(base_url + "/api/stats", headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status != 200:
                    return {"status": r.status}
                return await r.json()
    except Exception as exc:  # noqa: BLE001 - informative only
        return {"error": repr(exc)[:200]}


class BmtcScenario(Scenario):
    """Kafka + simulated location reports at ``--report-rate``, N clients with the BMTC mix, ETAs on."""

    name = "bmtc"

    def plan(self) -> plans.Plan:
        c = self.cfg
        return plans.bmtc_plan(c.clients, k=c.channels_per_client, seed=c.seed, zipf_s=c.zipf_s,
                               route_share=c.route_share, notification_share=c.notification_share,
                               anonymous=not c.jwt_secret, user_prefix=c.user_prefix,
                               profile_mix=plans.parse_profile_mix(c.profile_mix or DEFAULT_PROFILE_MIX))

    def client_options(self) -> dict[str, Any]:
        return {"source_module": "fastgw.loadtest.bmtc"}

    def check(self) -> None:
        c = self.cfg
        if not c.kafka:
            raise ValueError("bmtc produces to Kafka: give --kafka HOST:PORT (the broker the gateway consumes from)")
        if c.report_rate <= 0 or c.buses < 1 or c.duration <= 0:
            raise ValueError("bmtc: --report-rate > 0, --buses >= 1 and --duration > 0")

    async def execute(self, run: Run) -> dict[str, Any]:
        c = self.cfg
        try:
            token: str | None = admin_token(c)
        except ValueError:
            token = None
        stats_before = await gateway_stats(run.target.base_url, token)
        notes: list[str] = []
        if stats_before is None:
            notes.append("no admin credentials: the gateway's Kafka consumption was not checked")
        elif "kafka" not in stats_before and "status" not in stats_before and "error" not in stats_before:
            raise RuntimeError("the gateway does not consume Kafka: start it with "
                               f"`fastgw serve --kafka {c.kafka} --kafka-topic location={c.kafka_topic} ...`")
        warm_channel = next((name for name in run.plan.channels if name.startswith("route:")), None)
        prod = ProducerProcess(c.python)
        outcome: dict[str, Any] = {"last_seq": {}, "void": {}, "publisher": None}
        try:
            run.progress.note("building the simulated reports, starting the Kafka producer")
            await prod.start({"bootstrap": c.kafka, "topic": c.kafka_topic, "rate": c.report_rate,
                              "duration": c.duration, "buses": c.buses, "seed": c.seed, "warm_route": warm_channel,
                              "windows_ms": {p: w for p, w in PROFILE_WINDOWS_MS.items() if w}})
            ready = await prod.wait("ready", 180.0)
            partitions = set(ready["partitions"])

            # warm-up: until a client saw a report from every partition (consumers assigned)
            await prod.send({"cmd": "warm"})
            t_warm = time.monotonic()

            def warm_seen() -> set[int]:
                seen: set[int] = set()
                for p in run.procs:
                    seen.update(p.tick.get("src_warm") or ())
                return seen

            def warm_info() -> str:
                return (f"partitions seen {len(warm_seen() & partitions)}/{len(partitions)}  "
                        f"early frames {run.ticks('src_early'):,}")

            def warm_done() -> bool:
                if warm_channel is None:  # no route channel in the plan: any frame of the warm-up will do
                    return run.ticks("src_early") > 0
                return partitions <= warm_seen()

            await run.hold(WARMUP_S, "warm-up: waiting for the gateway's consumers", warm_info, until=warm_done)
            warm_s = time.monotonic() - t_warm
            seen = warm_seen()
            warmup = {"seconds": round(warm_s, 3), "partitions": sorted(partitions),
                      "partitions_seen": sorted(seen & partitions), "channel": ready.get("warm_channel"),
                      "complete": warm_done()}
            await asyncio.sleep(1.0)  # quiet: the warm-up's stragglers are out

            t0_ns = time.time_ns()
            await run.mark(t0_ns)
            await prod.send({"cmd": "go"})
            started = await prod.wait("started", 30.0)
            t_run = time.monotonic()

            def info() -> str:
                got = run.ticks("src_deliveries")
                rate = got / max(1e-3, time.monotonic() - t_run)
                return f"reports {prod.produced:,}  deliveries {got:,} ({rate:,.0f}/s)"

            await run.hold(c.duration * 3 + 60.0, "producing", info, until=lambda: prod.done is not None,
                           shown=c.duration)
            if prod.done is None:
                raise TimeoutError(f"the producer did not finish in {c.duration * 3 + 60:g} s")
            produce_s = time.monotonic() - t_run
            # drain: until the deliveries stopped for QUIET_S (bounded by --drain-timeout)
            last = [run.ticks("src_deliveries"), time.monotonic()]

            def quiet() -> bool:
                got = run.ticks("src_deliveries")
                if got != last[0]:
                    last[0], last[1] = got, time.monotonic()
                return time.monotonic() - last[1] >= QUIET_S

            drained = await run.hold(c.drain_timeout + QUIET_S, "waiting for deliveries", info, until=quiet)
            drain_quiet = quiet()
            stats_after = await gateway_stats(run.target.base_url, token)
        finally:
            await prod.stop()
        outcome.update({"t0_ns": t0_ns, "producer": prod.done, "producer_ready": ready, "warmup": warmup,
                        "producer_started_ns": started.get("t_ns"), "produce_s": round(produce_s, 3),
                        "drain_s": round(drained, 3), "drain_ended": "quiet" if drain_quiet else "drain timeout",
                        "notes": notes,
                        "gateway_kafka": {"before": (stats_before or {}).get("kafka"),
                                          "after": (stats_after or {}).get("kafka"),
                                          "note": "one gateway process's counters (GET /api/stats answers from "
                                                  "whichever worker accepts the request)"}})
        return outcome

    def finish(self, run: Run, outcome: dict[str, Any], children: list[dict[str, Any]]) -> None:
        outcome["scenario_report"] = summarize(run.plan.channels, outcome, children)


# =========================================================================== the figures


def _ms(h: Histogram) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v / 1000.0, 3)

    return {"n": h.n, "p50": r(h.percentile(50)), "p90": r(h.percentile(90)), "p99": r(h.percentile(99)),
            "p99.9": r(h.percentile(99.9)), "max": r(h.hi), "min": r(h.lo), "mean": r(h.mean())}


CLOCK = ("time.time_ns() (CLOCK_REALTIME) of the load-test host at the client's socket read, minus the "
         "message's own timestamp (location_update.timestamp / stop_arrival.timestamp: the report's "
         "observation time, which the producer subprocess sets to its wall clock in ms right before "
         "send(); same host, same clock; ms resolution, truncated: 0-1 ms high). Covers produce, broker, "
         "the gateway's consumer and processing (ETAs), fan-out and the client's read.")


def summarize(channels: tuple[str, ...] | list[str], outcome: dict[str, Any],
              children: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the client processes' ``source`` reports with the producer's counts."""
    producer = outcome.get("producer") or {}
    per_channel_produced: dict[str, int] = producer.get("per_channel") or {}
    conflatable: dict[str, dict[str, int]] = producer.get("conflatable") or {}
    sources = [c.get("source") or {} for c in children]
    overall = Histogram()
    by_kind: dict[str, Histogram] = {}
    by_profile: dict[str, Histogram] = {}
    per_second: dict[int, dict[int, int]] = {}
    totals = dict.fromkeys(("frames", "deliveries", "early", "stale", "unknown_channel", "malformed"), 0)
    for s in sources:
        for key in totals:
            totals[key] += int(s.get(key, 0))
        for kind, d in (s.get("latency_us") or {}).items():
            h = Histogram.from_dict(d)
            by_kind.setdefault(kind, Histogram()).merge(h)
            overall.merge(h)
        for profile, counts in (s.get("latency_us_by_profile") or {}).items():
            by_profile.setdefault(profile, Histogram()).merge(Histogram.from_counts(counts))
        for sec, counts in (s.get("per_second") or {}).items():
            into = per_second.setdefault(int(sec), {})
            for b, n in counts.items():
                into[int(b)] = into.get(int(b), 0) + int(n)

    # --- losses
    def merged(key: str) -> dict[int, dict[str, dict[int, int]]]:
        out: dict[int, dict[str, dict[int, int]]] = {}
        for s in sources:
            for ch, per_profile in (s.get(key) or {}).items():
                for profile, counts in per_profile.items():
                    into = out.setdefault(int(ch), {}).setdefault(profile, {})
                    for got, n in counts.items():
                        into[int(got)] = into.get(int(got), 0) + int(n)
        return out

    received, received_dropped = merged("received"), merged("received_dropped")
    stop_union: dict[int, set[tuple[str, int]]] = {}
    for s in sources:
        for ch, by_vehicle in (s.get("stop_keys") or {}).items():
            keys = stop_union.setdefault(int(ch), set())
            for vehicle, stamps in by_vehicle.items():
                keys.update((vehicle, ts) for ts in stamps)
    lost = {"route": 0, "stop": 0}
    lost_dropped = {"route": 0, "stop": 0}
    conflated = 0
    extra = 0
    expected_route = 0
    lost_per_channel: dict[str, dict[str, int]] = {}
    for ch in sorted(set(received) | set(received_dropped)):
        name = channels[ch]
        kind = name.split(":", 1)[0]
        if kind == "route":
            want = int(per_channel_produced.get(name, 0))
        elif kind == "stop":
            want = len(stop_union.get(ch, ()))
        else:
            continue  # nothing is produced to user channels: what came is counted as "other"
        row = {"expected_each": want, "subscribers": 0, "lost": 0, "lost_on_dropped_connections": 0}
        for alive, table in ((True, received), (False, received_dropped)):
            for profile, counts in table.get(ch, {}).items():
                allowance = int(conflatable.get(name, {}).get(profile, 0)) if kind == "route" else 0
                for got, n in counts.items():
                    row["subscribers"] += n
                    if kind == "route" and alive:
                        expected_route += want * n
                    missing = want - got
                    if missing < 0:
                        extra += -missing * n
                        continue
                    if allowance and alive:
                        allowed = min(missing, allowance)
                        conflated += allowed * n
                        missing -= allowed
                    if not missing:
                        continue
                    if alive:
                        lost[kind] += missing * n
                        row["lost"] += missing * n
                    else:
                        lost_dropped[kind] += missing * n
                        row["lost_on_dropped_connections"] += missing * n
        if row["lost"] or row["lost_on_dropped_connections"]:
            lost_per_channel[name] = row

    # --- rates
    span_s = (producer.get("send_span_s") or 0.0) or None
    deliveries = totals["deliveries"]
    first_ns, last_ns = producer.get("first_send_ns"), producer.get("last_send_ns")
    series = []
    for sec in sorted(per_second):
        h = Histogram.from_counts(per_second[sec])
        series.append({"t": sec, "n": h.n, "p50": _ms(h)["p50"], "p99": _ms(h)["p99"], "max": _ms(h)["max"]})

    # --- the target: p99 <= 100 ms + the profile's window, nothing lost
    lat = _ms(overall)
    target_rows = {}
    met = bool(overall.n)
    for profile, h in sorted(by_profile.items()):
        limit = TARGET_P99_MS + PROFILE_WINDOWS_MS.get(profile, 0)
        p99 = _ms(h)["p99"]
        ok = p99 is not None and p99 <= limit
        met = met and ok
        target_rows[profile] = {"p99_ms": p99, "limit_ms": limit, "met": ok}
    total_lost = lost["route"] + lost["stop"]
    met = met and total_lost == 0
    kind_ms = {kind: _ms(h) for kind, h in sorted(by_kind.items())}
    figures = {
        "clock": CLOCK,
        "producer": producer,
        "warmup": outcome.get("warmup"),
        "produce_s": outcome.get("produce_s"),
        "drain_s": outcome.get("drain_s"),
        "drain_ended": outcome.get("drain_ended"),
        "gateway_kafka": outcome.get("gateway_kafka"),
        "deliveries": deliveries,
        "deliveries_by_kind": {k: h.n for k, h in sorted(by_kind.items())},
        "deliveries_per_s": round(deliveries / span_s, 1) if span_s else None,
        "window_s": span_s,
        "first_send_ns": first_ns, "last_send_ns": last_ns,
        "latency_ms": lat,
        "latency_ms_by_kind": kind_ms,
        "latency_ms_by_profile": {p: _ms(h) for p, h in sorted(by_profile.items())},
        "latency_per_second": series,
        "latency_histogram_us": overall.to_dict(),
        "expected_route_deliveries": expected_route,
        "offered_route_deliveries_per_s": round(expected_route / span_s, 1) if span_s else None,
        "lost": total_lost,
        "lost_by_kind": lost,
        "lost_on_dropped_connections": lost_dropped,
        "conflated": conflated,
        "more_than_expected": extra,
        "lost_per_channel": lost_per_channel,
        "stop_messages_seen": sum(len(v) for v in stop_union.values()),
        "frames": totals["frames"], "early_frames": totals["early"], "stale_frames": totals["stale"],
        "unknown_channel": totals["unknown_channel"], "malformed": totals["malformed"],
        "loss_method": ("route channels: every acknowledged report is one location_update on "
                        "route:<id>:<dir>; each alive subscriber must have all the producer's count for it "
                        "(cellular/slow: up to the producer's conflatable count is 'conflated'). Stop channels: "
                        "expected = union of (vehicle_id, timestamp) over all subscribers of the stop."),
        "target": {"p99_ms_max": TARGET_P99_MS, "plus_window_ms": PROFILE_WINDOWS_MS, "by_profile": target_rows,
                   "lost": total_lost, "met": met},
        "notes": outcome.get("notes", []),
    }

    def f(v: Any) -> str:
        return "-" if v is None else f"{v}"

    rate = producer.get("achieved_rate")
    rows = [
        ["reports produced (rate)", f"{producer.get('produced', 0):,} of {producer.get('target', 0):,} "
                                    f"({f(rate)}/s of {producer.get('rate', 0):g}/s)"],
        ["producer: buses / routes / errors", f"{producer.get('buses', 0)} / {producer.get('routes', 0)} / "
                                              f"{producer.get('errors', 0)}"],
        ["warm-up", f"{f((outcome.get('warmup') or {}).get('seconds'))} s"],
        ["deliveries (route / stop)", f"{deliveries:,} ({by_kind.get('route', Histogram()).n:,} / "
                                      f"{by_kind.get('stop', Histogram()).n:,})"],
        ["deliveries/s", f(figures["deliveries_per_s"])],
        ["e2e latency p50 / p90 / p99", f"{lat['p50']} / {lat['p90']} / {lat['p99']} ms"],
        ["e2e latency p99.9 / max", f"{lat['p99.9']} / {lat['max']} ms"],
    ]
    for kind, m in kind_ms.items():
        rows.append([f"  {kind}: p50 / p99 / max", f"{m['p50']} / {m['p99']} / {m['max']} ms"])
    if len(by_profile) > 1:
        for profile, m in figures["latency_ms_by_profile"].items():
            rows.append([f"  {profile}: p50 / p99", f"{m['p50']} / {m['p99']} ms"])
    rows.append(["lost (route / stop)", f"{lost['route']:,} / {lost['stop']:,}"
                 + (f"; {conflated:,} conflated" if conflated else "")])
    rows.append(["produce / drain", f"{f(outcome.get('produce_s'))} s / {f(outcome.get('drain_s'))} s "
                 f"({outcome.get('drain_ended') or '-'})"])
    rows.append(["offered route deliveries/s", f(round(expected_route / span_s, 1) if span_s else None)])
    rows.append(["target p99 <= 100 ms + window, 0 lost", "met" if met else "NOT met"])

    problems = []
    if total_lost:
        still = (f"; deliveries were still arriving when --drain-timeout ({outcome.get('drain_s')} s) ended: "
                 "the gateway was behind, part of these may have been on their way"
                 if outcome.get("drain_ended") == "drain timeout" else "")
        problems.append(f"{total_lost} messages lost ({lost['route']} location_update, {lost['stop']} stop_arrival)"
                        + still)
    if producer.get("errors"):
        problems.append(f"{producer['errors']} location reports failed to produce ({producer.get('first_error')})")
    if not producer:
        problems.append("the producer did not report")
    elif rate is not None and rate < 0.95 * float(producer.get("rate") or 0):
        problems.append(f"the producer reached {rate}/s of the {producer.get('rate'):g}/s asked")
    warm = outcome.get("warmup") or {}
    if warm and not warm.get("complete"):
        problems.append(f"warm-up: the clients saw reports from partitions {warm.get('partitions_seen')} of "
                        f"{warm.get('partitions')} within {WARMUP_S:g} s")
    if producer and not deliveries:
        problems.append("no location_update or stop_arrival reached the clients")
    if totals["malformed"]:
        problems.append(f"{totals['malformed']} frames could not be parsed")
    return {**figures, "rows": rows, "problems": problems}


if __name__ == "__main__":  # pragma: no cover
    sys.exit("fastgw.loadtest.bmtc is used by `fastgw loadtest bmtc`")
