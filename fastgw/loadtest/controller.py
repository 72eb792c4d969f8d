"""Orchestration of ``fastgw loadtest``: client processes, the publisher, the scenarios.

:func:`run_loadtest` is the Python API (the CLI is a thin wrapper):

1. the scenario builds its subscription plan (``fastgw.loadtest.plan``);
2. the gateway's processes are found (``--server-pid`` or from the port) and sampled;
3. the clients are dealt out to client processes (``python -m fastgw.loadtest.client``,
   at most ~15,000 each: 20,000 open files per process) and, within each process, over
   the source addresses (127.0.0.2, 127.0.0.3, ...; at most 25,000 each: ~28,000
   ephemeral ports per source address towards one server port);
4. every process connects its clients (paced by ``connect_rate``, ``concurrency``
   handshakes in flight, bounded retries, a phase deadline) and the gateway is sampled;
5. the scenario runs (``idle``: hold; ``fanout``: publish at a rate, then wait for the
   deliveries, bounded by ``drain_timeout``);
6. every process reports, and is stopped: ``quit`` on stdin, then SIGTERM and SIGKILL
   by pid if it has not exited (also on errors and Ctrl-C).

Scenarios are classes (:func:`scenario_class`): ``plan()``, ``client_options()`` (extra
settings for the client processes) and ``execute(run)``. ``idle`` and ``fanout`` are here,
``storm`` in :mod:`fastgw.loadtest.storm`, ``bmtc`` in :mod:`fastgw.loadtest.bmtc`. What a
scenario measures beyond the common sections goes in ``outcome["scenario_report"]``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import orjson

from fastgw.loadtest import plan as plans
from fastgw.loadtest import procstats
from fastgw.loadtest.child import ChildProcess
from fastgw.loadtest.histogram import Histogram
from fastgw.messages import iso_from_epoch

__all__ = [
    "LoadtestConfig",
    "Target",
    "run_loadtest",
    "SCENARIO_CLASSES",
    "SCENARIOS",
    "scenario_class",
    "MAX_PER_PROCESS",
    "MAX_PER_SOURCE",
    "ClientProcess",
    "Publisher",
]

#: connections per client process (20,000 open files per process, some kept in reserve)
MAX_PER_PROCESS = 15_000
#: connections per source address (~28,000 ephemeral ports towards one server port)
MAX_PER_SOURCE = 25_000
#: every scenario, in the order the CLI lists them
SCENARIOS = ("idle", "fanout", "bmtc", "storm")
#: seconds between the client processes' progress ticks
TICK_S = 0.25
#: seconds a client process gets to say bye before SIGTERM, then before SIGKILL
STOP_GRACE_S = 5.0


@dataclass
class LoadtestConfig:
    """Everything a load test needs; the CLI flags of ``fastgw loadtest`` map one to one."""

    scenario: str = "fanout"
    url: str = "http://127.0.0.1:8080"
    clients: int = 1000
    protocol: str = "native"  # native | socketio
    processes: int = 0  # 0: auto
    sources: str = "auto"  # auto | none | a count | comma-separated addresses
    jwt_secret: str | None = None
    admin_token: str | None = None
    #: where the fanout publisher POSTs (None: the target's ``/api/publish``); a peer server may
    #: take its publishes on another port (``benchmarks/peers/websockets_broadcast.py``)
    publish_url: str | None = None
    token_ttl: int = 86400
    user_prefix: str = "lt"
    profile_mix: str | None = None
    duration: float = 10.0
    rate: float = 10.0
    channel: str | None = None  # fanout: default the busiest route direction
    channels_per_client: int = 3
    notification_share: float = 0.2
    route_share: float = 0.5
    zipf_s: float = 1.0
    seed: int = 1
    connect_rate: float = 0.0  # 0: as fast as `concurrency` allows
    concurrency: int = 200  # handshakes in flight per client process
    retries: int = 2
    attempt_timeout: float = 20.0
    connect_deadline: float = 600.0
    drain_timeout: float = 15.0
    server_pids: tuple[int, ...] = ()
    # storm: how the clients are dropped, how they come back, what is checked
    trigger: str = "drop"  # drop (the clients cut their connections) | kill | term (signal the gateway)
    reconnect_base: float = 0.5  # first reconnect delay drawn from [0, base]; doubles per failed attempt
    reconnect_cap: float = 8.0  # ceiling of the backoff
    storm_deadline: float = 60.0  # seconds for every client to be back and resubscribed
    outage: float = 2.0  # drop: seconds the network stays down (attempts fail at once meanwhile)
    notifications: int = 1  # per notification user, published while the clients are away
    # bmtc: Kafka and the simulated location reports
    kafka: str | None = None
    kafka_topic: str = "location-updates"
    report_rate: float = 1000.0
    buses: int = 1000
    report_path: str | None = None
    chart_path: str | None = None
    python: str = field(default_factory=lambda: sys.executable)


@dataclass(frozen=True)
class Target:
    host: str  # the address connected to (numeric)
    port: int
    host_header: str
    base_url: str  # http://host:port for the publish API
    loopback: bool


def resolve_target(url: str) -> Target:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "ws"):
        raise ValueError(f"{url!r}: only http:// and ws:// are supported (no TLS yet)")
    name = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        v4 = [i for i in infos if i[0] == socket.AF_INET]
        addr = ipaddress.ip_address((v4 or infos)[0][4][0])
    host = str(addr)
    netloc = f"[{host}]:{port}" if addr.version == 6 else f"{host}:{port}"
    return Target(host, port, f"{name}:{port}", f"http://{netloc}", addr.is_loopback)


def resolve_sources(spec: str, target: Target, clients: int) -> list[str]:
    """Source addresses to bind before connecting (empty: let the kernel choose)."""
    spec = (spec or "auto").strip()
    if spec == "none":
        return []
    if spec == "auto" or spec.isdigit():
        if not target.loopback or ":" in target.host:
            if spec == "auto":
                return []
            raise ValueError("a count of --sources needs an IPv4 loopback target; give addresses instead")
        count = max(1, math.ceil(clients / MAX_PER_SOURCE)) if spec == "auto" else int(spec)
        if not 1 <= count <= 250:
            raise ValueError("--sources: between 1 and 250 loopback addresses")
        addrs = [f"127.0.0.{2 + i}" for i in range(count)]
    else:
        addrs = [a.strip() for a in spec.split(",") if a.strip()]
        for a in addrs:
            ipaddress.ip_address(a)  # ValueError for a bad one
    if clients > len(addrs) * MAX_PER_SOURCE:
        raise ValueError(f"{clients} clients over {len(addrs)} source address(es): more than "
                         f"{MAX_PER_SOURCE:,} per address (ephemeral ports); add --sources")
    return addrs


def max_per_process() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return MAX_PER_PROCESS
    return max(1, min(MAX_PER_PROCESS, hard - 1000))


def choose_processes(requested: int, clients: int) -> int:
    cap = max_per_process()
    if requested > 0:
        if clients > requested * cap:
            raise ValueError(f"{clients} clients over {requested} client process(es): more than {cap:,} "
                             "per process (open files); raise --processes")
        return requested
    auto = math.ceil(clients / cap)
    if clients >= 2000 and (os.cpu_count() or 1) >= 2:
        auto = max(auto, 2)
    return max(1, auto)


# --------------------------------------------------------------------------- client processes


class ClientProcess(ChildProcess):
    """One ``python -m fastgw.loadtest.client`` child: its pipes, ticks and replies."""

    module = "fastgw.loadtest.client"
    label = "client process"
    line_limit = 512 * 1024 * 1024
    stop_grace = (STOP_GRACE_S, STOP_GRACE_S, STOP_GRACE_S)

    def __init__(self, index: int, config: dict[str, Any], python: str) -> None:
        super().__init__(python)
        self.index = index
        self.config = config
        #: the latest running counts (``{"ev":"tick",...}``)
        self.tick: dict[str, Any] = {}

    async def start(self) -> None:
        await self.spawn()
        await self.send(self.config)
        hello = await self.wait("hello", 30.0)
        wanted = len(self.config["clients"]) + 64
        self.config = {}  # the plan slice and the secret are not needed any more
        self.hello = hello
        if 0 < hello.get("nofile", wanted) < wanted:
            raise RuntimeError(f"client process {self.pid}: open-files limit {hello['nofile']} is below the "
                               f"{wanted} its clients need; raise --processes")

    def on_event(self, event: dict[str, Any]) -> bool:
        if event.get("ev") == "tick":
            self.tick = event
            return False
        return True


# --------------------------------------------------------------------------- the publisher


def _message(channel: str, template: dict[str, Any], ch: int, seq: int, sent_ns: int) -> dict[str, Any]:
    """A message for ``channel`` with the load test's fields right after ``type``."""
    msg: dict[str, Any] = {"type": template["type"], "lt_ch": ch, "seq": seq, "sent_ns": sent_ns}
    for key, value in template.items():
        if key != "type":
            msg[key] = value
    if msg["type"] == "location_update":
        msg["vehicle_id"] = f"LT-{ch}-{seq}"  # one vehicle per message: no conflation on cellular/slow
    msg["timestamp"] = iso_from_epoch(sent_ns / 1e9)
    return msg


def message_template(channel: str, feed: Any = None) -> dict[str, Any]:
    """A realistic payload for the channel's kind (docs/protocol.md), from the GTFS where it can."""
    kind, _, rest = channel.partition(":")
    ident = rest.rsplit(":", 1)[0] if kind in ("route", "stop", "user") else rest
    if kind == "route" or kind == "system":
        if feed is None:
            from fastgw.transit.gtfs import load_feed

            feed = load_feed()
        route_id, direction = (rest.rsplit(":", 1) + ["UP"])[:2] if kind == "route" else ("500-D", "UP")
        direction = direction if direction in ("UP", "DOWN") else "UP"
        route = feed.routes.get(route_id)
        lat, lon, heading = 12.9716, 77.5946, 90.0
        next_stop_id, next_stop_name = "20919", "Hebbala"
        if route is not None and direction in route.directions:
            pattern = route.directions[direction]
            lat, lon, heading = pattern.shape.point_at(pattern.length_m / 2)
            stop = pattern.next_stop(pattern.length_m / 2) or pattern.stops[-1]
            next_stop_id = stop.stop_id
            next_stop_name = feed.stops[stop.stop_id].name if stop.stop_id in feed.stops else stop.stop_id
        return {"type": "location_update", "vehicle_id": "", "route_id": route_id, "direction": direction,
                "trip_id": f"{route_id}_{direction}_LT", "latitude": round(lat, 6), "longitude": round(lon, 6),
                "speed": 18.4, "heading": round(heading, 1), "accuracy": 8.0, "next_stop_id": next_stop_id,
                "next_stop_name": next_stop_name, "distance_to_next_stop": 412.0, "confidence": 0.93,
                "contributor_count": 4, "data_freshness": "fresh", "timestamp": "",
                "metadata": {"source": "loadtest", "quality_score": 0.88}}
    if kind == "stop":
        return {"type": "stop_arrival", "stop_id": ident, "route_id": "500-D", "route_number": "500-D",
                "vehicle_id": "KA-57-F-0123", "eta_seconds": 240, "estimated_arrival": "", "scheduled_arrival": "",
                "delay_minutes": 2, "confidence": 0.9, "crowding_level": "medium", "timestamp": ""}
    if kind == "user":
        return {"type": "user_notification", "notification_id": "lt", "user_id": ident, "title": "Your bus",
                "body": "Route 500-D is 4 minutes away", "category": "trip", "data": {}, "timestamp": ""}
    if kind == "leaderboard":
        return {"type": "leaderboard_update", "period": "daily", "entries": [], "updated_at": "", "timestamp": ""}
    return {"type": "service_alert", "alert_id": "lt", "severity": "info", "title": "Load test",
            "message": "load test message", "affected_routes": [], "timestamp": ""}


class Publisher:
    """``POST /api/publish`` with an admin token, one request at a time (per-channel order kept;
    ``concurrency`` > 1 for callers that publish to different channels at once).

    Every message carries ``lt_ch`` (the channel's index in the plan), ``seq`` (1, 2, ...
    per channel) and ``sent_ns`` (``time.time_ns()`` just before the request is sent)."""

    def __init__(self, base_url: str, token: str, channels: tuple[str, ...], url: str | None = None,
                 concurrency: int = 1) -> None:
        self.url = url or base_url + "/api/publish"
        self.concurrency = concurrency
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.channels = channels
        self.templates: dict[int, dict[str, Any]] = {}
        self.seq: dict[int, int] = {}
        self.void: dict[int, int] = {}
        #: (channel, seq) -> sent_ns of every confirmed publish
        self.sent: dict[tuple[int, int], int] = {}
        self.post_us = Histogram()
        self.statuses: dict[str, int] = {}
        self.ok = 0
        self.errors = 0
        self.first_error = ""
        self.max_behind_s = 0.0
        self.session: Any = None

    async def __aenter__(self) -> "Publisher":
        import aiohttp

        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0),
                                             connector=aiohttp.TCPConnector(limit=self.concurrency,
                                                                            force_close=False))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.session is not None:
            await self.session.close()

    async def publish(self, ch: int) -> bool:
        seq = self.seq.get(ch, 0) + 1
        self.seq[ch] = seq
        template = self.templates.get(ch)
        if template is None:
            template = self.templates[ch] = message_template(self.channels[ch])
        sent_ns = time.time_ns()
        body = orjson.dumps({"channel": self.channels[ch], "message": _message(self.channels[ch], template, ch,
                                                                                seq, sent_ns)})
        t0 = time.perf_counter()
        status = "error"
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                await resp.read()
                status = str(resp.status)
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            status = type(exc).__name__
            if not self.first_error:
                self.first_error = repr(exc)[:300]
        self.post_us.add(int((time.perf_counter() - t0) * 1e6))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "200":
            self.ok += 1
            self.sent[(ch, seq)] = sent_ns
            return True
        self.errors += 1
        self.void[ch] = self.void.get(ch, 0) + 1
        return False

    async def run_rate(self, pick: Callable[[int], int], rate: float, duration: float) -> None:
        """``rate`` publishes per second for ``duration`` seconds (message ``i`` on channel ``pick(i)``),
        each sent at its scheduled time or, when the gateway is slower, as soon as the previous
        one is answered; stops at ``duration`` + 30 s whatever happens."""
        total = max(1, round(rate * duration))
        t0 = time.monotonic()
        hard_stop = t0 + duration + 30.0
        for i in range(total):
            due = t0 + i / rate
            now = time.monotonic()
            if now > hard_stop:
                break
            if due > now:
                await asyncio.sleep(due - now)
            else:
                self.max_behind_s = max(self.max_behind_s, now - due)
            await self.publish(pick(i))

    def summary(self) -> dict[str, Any]:
        return {"url": self.url, "published": self.ok, "errors": self.errors, "statuses": self.statuses,
                "first_error": self.first_error, "post_ms": _ms_percentiles(self.post_us),
                "max_behind_schedule_s": round(self.max_behind_s, 3),
                "per_channel": {self.channels[ch]: n for ch, n in sorted(self.seq.items())}}


def _ms_percentiles(h: Histogram) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v / 1000.0, 3)

    return {"p50": ms(h.percentile(50)), "p90": ms(h.percentile(90)), "p99": ms(h.percentile(99)),
            "p99.9": ms(h.percentile(99.9)), "max": ms(h.percentile(100)), "mean": ms(h.mean()), "n": h.n}


# --------------------------------------------------------------------------- a run


class NullProgress:
    """The progress interface; does nothing (``--no-progress``, not a TTY, the Python API)."""

    def connecting(self, total: int) -> None: ...
    def connect_update(self, ok: int, failed: int) -> None: ...
    def running(self, label: str, seconds: float) -> None: ...
    def run_update(self, elapsed: float, info: str) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class Run:
    """The client processes of one load test and the gateway processes being watched."""

    def __init__(self, cfg: LoadtestConfig, target: Target, plan: plans.Plan, progress: Any) -> None:
        self.cfg = cfg
        self.target = target
        self.plan = plan
        self.progress = progress
        self.sources = resolve_sources(cfg.sources, target, len(plan.clients))
        self.n_processes = choose_processes(cfg.processes, len(plan.clients))
        self.procs: list[ClientProcess] = []
        self.server_pids: list[int] = list(cfg.server_pids)
        self.pid_source = "--server-pid" if cfg.server_pids else "port"
        self.samples: dict[str, dict[int, procstats.ProcSample]] = {}
        self.timeline: list[list[float]] = []
        self.t_start = time.monotonic()
        self.connect_result: dict[str, Any] = {}
        #: the scenario's extra settings for the client processes (``Scenario.client_options``)
        self.client_options: dict[str, Any] = {}

    # --- gateway processes
    def find_server(self) -> None:
        if not self.server_pids:
            if self.target.loopback:  # (an in-process gateway is this very process: it counts)
                self.server_pids = procstats.pids_listening_on(self.target.port)
            else:
                self.pid_source = "none: the gateway is not on this host (give --server-pid)"

    def sample(self, label: str) -> dict[int, procstats.ProcSample]:
        s = procstats.sample_all(self.server_pids)
        self.samples[label] = s
        return s

    def rss_total(self, label: str) -> int:
        return sum(s.rss_bytes for s in self.samples.get(label, {}).values())

    # --- client processes
    def client_configs(self) -> list[dict[str, Any]]:
        cfg, plan, P, S = self.cfg, self.plan, self.n_processes, len(self.sources)
        slices: list[list[list[Any]]] = [[] for _ in range(P)]
        for spec in plan.clients:
            j = spec.index // P  # the process's own count: spreads each process over all sources
            source = self.sources[j % S] if S else ""
            slices[spec.index % P].append([spec.user_id, spec.profile, source, list(spec.channels)])
        base = {**self.client_options, "protocol": cfg.protocol, "host": self.target.host, "port": self.target.port,
                "host_header": self.target.host_header, "secret": cfg.jwt_secret, "token_ttl": cfg.token_ttl,
                "channels": list(plan.channels), "concurrency": cfg.concurrency,
                "connect_rate": cfg.connect_rate / P if cfg.connect_rate > 0 else 0, "retries": cfg.retries,
                "attempt_timeout": cfg.attempt_timeout, "connect_deadline": cfg.connect_deadline, "tick": TICK_S}
        return [{**base, "clients": s} for s in slices]

    async def start_clients(self) -> None:
        for i, config in enumerate(self.client_configs()):
            proc = ClientProcess(i, config, self.cfg.python)
            self.procs.append(proc)  # before start: stop() must find it whatever happens next
            await proc.start()

    def ticks(self, key: str) -> int:
        return sum(int(p.tick.get(key, 0)) for p in self.procs)

    async def connect(self) -> dict[str, Any]:
        total = len(self.plan.clients)
        self.progress.connecting(total)
        t0 = time.monotonic()
        for p in self.procs:
            await p.send({"cmd": "connect"})
        waits = [asyncio.ensure_future(p.wait("connected", self.cfg.connect_deadline + self.cfg.attempt_timeout
                                                + 30.0)) for p in self.procs]
        next_sample = t0 + 1.0
        try:
            while not all(w.done() for w in waits):
                await asyncio.wait(waits, timeout=TICK_S)
                self.progress.connect_update(self.ticks("connected"), self.ticks("failed"))
                if time.monotonic() >= next_sample:
                    self.timeline_point()
                    next_sample += 1.0
            results = [w.result() for w in waits]
        finally:
            for w in waits:
                w.cancel()
        ok = sum(r["ok"] for r in results)
        failed = sum(r["failed"] for r in results)
        self.progress.connect_update(ok, failed)
        self.connect_result = {"ok": ok, "failed": failed, "seconds": round(time.monotonic() - t0, 3)}
        return self.connect_result

    async def mark(self, t0_ns: int, base: dict[int, int] | None = None) -> None:
        for p in self.procs:
            await p.send({"cmd": "mark", "t0_ns": t0_ns, "base": {str(k): v for k, v in (base or {}).items()}})
        for p in self.procs:
            await p.wait("marked", 30.0)

    async def hold(self, seconds: float, label: str, info: Callable[[], str],
                   until: Callable[[], bool] | None = None, shown: float | None = None) -> float:
        """Sample the gateway and the alive count every second for ``seconds`` (or until ``until()``);
        the progress bar counts to ``shown`` seconds (default ``seconds``)."""
        shown = seconds if shown is None else shown
        self.progress.running(label, shown)
        t0 = time.monotonic()
        next_sample = t0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                self.timeline_point()
                next_sample += 1.0
            elapsed = now - t0
            self.progress.run_update(min(elapsed, shown), info())
            if elapsed >= seconds or (until is not None and until()):
                return elapsed
            await asyncio.sleep(min(TICK_S, max(0.0, t0 + seconds - now)))

    def timeline_point(self) -> None:
        rss = sum(s.rss_bytes for s in procstats.sample_all(self.server_pids).values())
        self.timeline.append([round(time.monotonic() - self.t_start, 3), self.ticks("alive"),
                              self.ticks("deliveries"), rss])

    async def collect(self, last_seq: dict[int, int], void: dict[int, int]) -> list[dict[str, Any]]:
        msg = {"cmd": "report", "last_seq": {str(k): v for k, v in last_seq.items()},
               "void": {str(k): v for k, v in void.items()}}
        for p in self.procs:
            await p.send(msg)
        return [await p.wait("report", 120.0) for p in self.procs]

    async def stop_clients(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)


# --------------------------------------------------------------------------- scenarios


class Scenario:
    """A scenario: its plan, and what it does once every client is connected."""

    name = ""
    publishes = False

    def __init__(self, cfg: LoadtestConfig) -> None:
        self.cfg = cfg

    def plan(self) -> plans.Plan:
        raise NotImplementedError

    def client_options(self) -> dict[str, Any]:
        """Extra settings sent to every client process (``fastgw.loadtest.client.Engine``)."""
        return {}

    def check(self) -> None:
        """Refuse a bad configuration of this scenario (``ValueError``) before anything starts."""

    def finish(self, run: Run, outcome: dict[str, Any], children: list[dict[str, Any]]) -> None:
        """After the client processes reported: put the scenario's own figures, summary rows
        and problems in ``outcome["scenario_report"]`` (``children``: the processes' reports)."""

    async def execute(self, run: Run) -> dict[str, Any]:
        raise NotImplementedError


class IdleScenario(Scenario):
    """N clients subscribed (BMTC plan, ``--channels-per-client`` each, 0 for none) and idle:
    only heartbeats, for ``--duration`` seconds. Reports RSS per connection and who stayed."""

    name = "idle"

    def plan(self) -> plans.Plan:
        c = self.cfg
        return plans.bmtc_plan(c.clients, k=c.channels_per_client, seed=c.seed, zipf_s=c.zipf_s,
                               route_share=c.route_share, notification_share=c.notification_share,
                               anonymous=not c.jwt_secret, user_prefix=c.user_prefix,
                               profile_mix=plans.parse_profile_mix(c.profile_mix))

    async def execute(self, run: Run) -> dict[str, Any]:
        await run.mark(time.time_ns())
        held = await run.hold(self.cfg.duration, "holding idle",
                              lambda: f"alive {run.ticks('alive'):,}  pings {run.ticks('pings'):,}")
        return {"held_s": round(held, 3), "last_seq": {}, "void": {}, "publisher": None}


class FanoutScenario(Scenario):
    """One channel, every client on it; one publisher at ``--rate`` messages/s for ``--duration`` s."""

    name = "fanout"
    publishes = True

    def plan(self) -> plans.Plan:
        c = self.cfg
        channel = c.channel or plans.default_fanout_channel()
        return plans.fanout_plan(c.clients, channel, seed=c.seed, user_prefix=c.user_prefix,
                                 profile_mix=plans.parse_profile_mix(c.profile_mix))

    async def execute(self, run: Run) -> dict[str, Any]:
        c = self.cfg
        token = admin_token(c)
        subscribers = run.ticks("alive")
        async with Publisher(run.target.base_url, token, run.plan.channels, url=publish_url(c)) as pub:
            t0_ns = time.time_ns()
            await run.mark(t0_ns)
            t_pub = time.monotonic()

            def info() -> str:
                got = run.ticks("deliveries")
                rate = got / max(1e-3, time.monotonic() - t_pub)
                return f"published {pub.ok:,}  deliveries {got:,} ({rate:,.0f}/s)"

            publishing = asyncio.ensure_future(pub.run_rate(lambda i: 0, c.rate, c.duration))
            try:
                await run.hold(c.duration + 30.0, "publishing", info, until=publishing.done, shown=c.duration)
                await publishing
            finally:
                publishing.cancel()
            published_s = time.monotonic() - t_pub
            expected = pub.ok * run.ticks("alive")
            drained = await run.hold(c.drain_timeout, "waiting for deliveries", info,
                                     until=lambda: run.ticks("deliveries") >= expected)
        return {"t0_ns": t0_ns, "subscribers_at_start": subscribers, "publish_s": round(published_s, 3),
                "drain_s": round(drained, 3), "last_seq": dict(pub.seq), "void": dict(pub.void),
                "sent": pub.sent, "publisher": pub.summary(), "rate": c.rate, "duration": c.duration}


SCENARIO_CLASSES: dict[str, type[Scenario]] = {"idle": IdleScenario, "fanout": FanoutScenario}


def scenario_class(name: str) -> type[Scenario]:
    """The class of scenario ``name`` (``storm`` and ``bmtc`` live in their own modules)."""
    if name == "storm":
        from fastgw.loadtest.storm import StormScenario

        return StormScenario
    if name == "bmtc":
        from fastgw.loadtest.bmtc import BmtcScenario

        return BmtcScenario
    if name in SCENARIO_CLASSES:
        return SCENARIO_CLASSES[name]
    raise ValueError(f"unknown scenario {name!r}; available: {', '.join(SCENARIOS)}")


def admin_token(cfg: LoadtestConfig) -> str:
    if cfg.admin_token:
        return cfg.admin_token
    if cfg.jwt_secret:
        from fastgw.auth import mint_token

        return mint_token("loadtest-publisher", secret=cfg.jwt_secret, admin=True, ttl=cfg.token_ttl)
    raise ValueError("the fanout scenario publishes through /api/publish: give --jwt-secret or --admin-token")


def publish_url(cfg: LoadtestConfig) -> str | None:
    """The full URL of ``--publish-url`` (``http://`` added when missing; a bare ``host:port`` gets
    ``/api/publish``), or None for the target's own ``/api/publish``."""
    if not cfg.publish_url:
        return None
    url = cfg.publish_url if "://" in cfg.publish_url else "http://" + cfg.publish_url
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--publish-url {cfg.publish_url!r}: an http:// URL (no TLS yet)")
    return url if parts.path not in ("", "/") else url.rstrip("/") + "/api/publish"


def check_config(cfg: LoadtestConfig) -> None:
    """Everything that can be refused before anything starts (``ValueError``)."""
    scenario_class(cfg.scenario)(cfg).check()  # ValueError for an unknown scenario or a bad setting
    if cfg.protocol not in ("native", "socketio"):
        raise ValueError("protocol must be native or socketio")
    if cfg.clients < 1:
        raise ValueError("--clients must be at least 1")
    if cfg.duration < 0 or cfg.drain_timeout < 0:
        raise ValueError("--duration and --drain-timeout must be >= 0")
    if cfg.scenario == "fanout":
        if cfg.channel:
            plans.fanout_plan(min(cfg.clients, 2), cfg.channel)  # ValueError for a bad or a user channel
        if cfg.rate <= 0:
            raise ValueError("--rate must be positive")
        if not cfg.admin_token and not cfg.jwt_secret:
            raise ValueError("fanout publishes through /api/publish: give --jwt-secret or --admin-token")
        publish_url(cfg)  # ValueError for a bad one
    if cfg.channels_per_client < 0 or not 0 <= cfg.notification_share <= 1 or not 0 <= cfg.route_share <= 1:
        raise ValueError("--channels-per-client >= 0; --notification-share and --route-share between 0 and 1")
    if cfg.concurrency < 1 or cfg.retries < 0 or cfg.attempt_timeout <= 0 or cfg.connect_deadline <= 0:
        raise ValueError("--concurrency >= 1, --retries >= 0, timeouts > 0")
    plans.parse_profile_mix(cfg.profile_mix)
    target = resolve_target(cfg.url)
    resolve_sources(cfg.sources, target, cfg.clients)
    choose_processes(cfg.processes, cfg.clients)


async def run_loadtest(cfg: LoadtestConfig, progress: Any = None) -> dict[str, Any]:
    """Run one load test; returns the report (``fastgw.loadtest.report.build_report``), and writes
    the JSON report and the chart when ``cfg.report_path`` / ``cfg.chart_path`` are set."""
    from fastgw.loadtest import report as reports

    check_config(cfg)
    progress = progress or NullProgress()
    scenario = scenario_class(cfg.scenario)(cfg)
    target = resolve_target(cfg.url)
    plan = scenario.plan()
    run = Run(cfg, target, plan, progress)
    run.client_options = scenario.client_options()
    started_utc = time.time()
    run.find_server()
    run.sample("before")
    run.timeline_point()
    outcome: dict[str, Any] = {}
    children: list[dict[str, Any]] = []
    try:
        await run.start_clients()
        await run.connect()
        run.sample("after_connect")
        run.timeline_point()
        outcome = await scenario.execute(run)
        run.sample("end")
        children = await run.collect(outcome.get("last_seq", {}), outcome.get("void", {}))
        scenario.finish(run, outcome, children)
    finally:
        progress.close()
        await run.stop_clients()
    result = reports.build_report(cfg=asdict(cfg), plan=plan, run=run, outcome=outcome, children=children,
                                  started_utc=started_utc, finished_utc=time.time())
    if cfg.report_path:
        reports.write_json(result, cfg.report_path)
    if cfg.chart_path:
        reports.write_chart(result, cfg.chart_path)
    return result
