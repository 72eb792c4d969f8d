"""Socket.IO fan-out (issue 7): one ``channel_message`` to N Socket.IO WebSocket clients.

Five servers, one after the other in the same run, each on a fresh process and
a fresh fleet of the same program (``benchmarks/fleet.py``: raw WebSocket,
no socket.io library; ``--mode socketio`` or ``--mode native``, which differ only
in the setup handshake: the per-frame code is the same):

* ``fastgw-socketio``: the real gateway (``fastgw serve``, as in
  ``test_bench_fanout.py``), clients on ``/socket.io/?EIO=4&transport=websocket``
  sending ``40{"token":"<user JWT>"}`` and ``420["subscribe",{"channel":C}]``;
  messages arrive as ``42["channel_message",{envelope}(,"<offset>")]``;
* ``fastgw-native``: the same gateway, native protocol v1 on ``/ws?token=...``
  (``welcome``, ``subscribe``, ``{"type":"channel_message",...}`` frames);
* ``python-socketio``: ``peers/python_socketio_server.py``,
  ``socketio.AsyncServer(async_mode="aiohttp")`` on aiohttp + uvloop,
  ``await sio.emit("channel_message", envelope, room=C)``;
* ``node-socketio``: ``peers/node_socketio/server.mjs``, socket.io 4.8 (exact
  version in its ``package.json`` / ``package-lock.json``) on Node's http server,
  ``io.to(C).emit("channel_message", envelope)``; ``npm ci`` is run there when
  ``node_modules`` is missing or holds another socket.io version (bounded); the
  test fails, not skips, without node/npm;
* ``floor``: ``peers/floor_writes.py`` (native frames, one pre-built frame, one
  ``transport.write`` per subscriber: the limit for unbatched delivery).

The three Socket.IO servers speak the same protocol to the fleet (subscribe
event with an ack ``430[{"type":"subscribed",...}]``) and send the same envelope
(``type``, ``channel``, ``message``, ``timestamp``, ``messageId``); frame payload
sizes are recorded. The fleet answers Engine.IO pings (``2`` -> ``3``).

A round (as ``test_bench_fanout.py``): the fleet is armed for M more
``channel_message`` frames on every connection; M ``POST /publish`` fired
back-to-back on one keep-alive connection (each waits for its 200, none for the
deliveries); the round ends when the last connection has parsed its M-th frame.
deliveries/s = N*M / (last frame - first POST); median of the measured rounds
(5 after 1 warm-up; one round with ``--benchmark-disable``). Server on one CPU,
fleet and this process on the other (a Node server's threads are all pinned).

A round that does not complete within the harness' round bound
(``15 + N*M/5000`` s) is recorded as *partial* (frames delivered when the
timeout was seen / time since the first POST), the server's remaining rounds
are skipped, and the test waits (bounded) for the backlog before checking
correctness.

``test_socketio_interleaved`` then measures fastgw-socketio, fastgw-native and
floor again (``FASTGW_BENCH_SOCKETIO_INTERLEAVED``: a comma list of the cases
above, empty to skip), all connected at the same time, round 1 of each, round 2
of each, ... (order rotated every round), as ``interleaved.py`` does: on a
shared machine drift between servers measured one after the other is as large
as the gap the 0.9 target is about; interleaving makes it hit both alike.
Its results carry the suffix ``@interleaved``.

Benchmarks measure; no speed is asserted. Asserted (correctness): every
connection of every server received exactly every message published to it,
none lost (no connection dropped, no frame missing or duplicated). The summary
(deliveries/s, CPU per delivery, ratios fastgw-socketio / fastgw-native,
/ python-socketio, / node-socketio, and each / floor) is printed at the end of
the session and written to ``benchmarks/results/socketio-latest.json``
(``FASTGW_BENCH_SOCKETIO_RESULTS``).

Environment (besides ``_harness``'s): ``FASTGW_BENCH_SOCKETIO_RESULTS``;
``FASTGW_BENCH_SOCKETIO_ROUND_TIMEOUT`` (seconds: the round bound, instead of the harness'
``15 + N*M/5000``);
``FASTGW_BENCH_PYSIO_GC_THRESHOLD`` (e.g. ``50000,50,1000``: python-socketio with
``gc.set_threshold`` raised; default CPython's, untouched: see the peer's docstring).

``fastgw-socketio`` is skipped (only it) while ``fastgw serve`` answers 404 on
``/socket.io/``, i.e. before the gateway has a Socket.IO server.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import _harness  # benchmarks/ is on sys.path (conftest.py)
from _harness import (
    BENCH_DIR,
    HOST,
    PEERS_DIR,
    PUBLISH_BODY,
    RESULTS_DIR,
    BenchConfig,
    ConnectCost,
    FleetHandle,
    Meter,
    MeteredRecord,
    Procs,
    Publisher,
    RecordMedians,
    Target,
    Unavailable,
    connect_measured,
    doc_header,
    free_port,
    ksoftirqd_pid,
    loadavg1,
    metered,
    pin,
    publish_or_explain,
    table_rows,
    start_fastgw,
    start_fleet,
    start_peer,
    wait_ready,
)

NODE_DIR = PEERS_DIR / "node_socketio"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
DEFAULT_SOCKETIO_RESULTS = RESULTS_DIR / "socketio-latest.json"
NPM_CI_TIMEOUT = 300.0

#: Suffix of the results of ``test_socketio_interleaved``.
IL = "@interleaved"
#: Issue 7's targets on deliveries/s (reported as met / not met, never asserted).
TARGETS = {
    "fastgw-socketio/fastgw-native": 0.9,
    "fastgw-socketio/python-socketio": 10.0,
    "fastgw-socketio/node-socketio": 1.4,
}


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    mode: str  # fleet.py --mode


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("fastgw-socketio", "fastgw serve, Socket.IO v5 over Engine.IO v4 WebSocket, CONNECT with the JWT",
             "socketio"),
        Case("fastgw-native", "fastgw serve, native protocol v1 on /ws?token=", "native"),
        Case("python-socketio", "peers/python_socketio_server.py: python-socketio AsyncServer on aiohttp + "
                                "uvloop, await sio.emit(..., room=channel)", "socketio"),
        Case("node-socketio", "peers/node_socketio/server.mjs: socket.io 4.8 on Node's http server, "
                              "io.to(channel).emit(...)", "socketio"),
        Case("floor", "peers/floor_writes.py: native frames, one pre-built frame, one transport.write per "
                      "subscriber (the unbatched limit)", "native"),
    )
}


# --------------------------------------------------------------------------- results


@dataclass
class SioRecord(MeteredRecord):
    #: frames delivered in the round (N*M unless the round timed out)
    delivered: int
    complete: bool


@dataclass
class SioResult(ConnectCost, RecordMedians):
    case: str
    messages: int
    records: list[SioRecord] = field(default_factory=list)
    #: head of a channel_message payload as received (``fleet.py``'s ``first_frame``)
    first_frame: str = ""
    engineio_pings: int = 0
    other_frames: int = 0
    #: a round timed out: its partial rate is the last record, later rounds were not run
    partial: str = ""
    info: str = ""

    def as_dict(self) -> dict[str, Any]:
        r3 = lambda x: round(x, 3)  # noqa: E731
        return {
            "case": self.case,
            "about": CASES[base].about if (base := self.case.replace(IL, "")) in CASES else "",
            "info": self.info,
            "connections": self.connections,
            "messages_per_round": self.messages,
            "rounds": len(self.records),
            "partial": self.partial,
            **self.rate_and_cpu(),
            "round_seconds": [r3(r.seconds) for r in self.records],
            **self.medians("server_cpu_share", "server_core_us_per_delivery", "server_core_busy_share",
                           "server_core_other_share", "ksoftirqd_share", "fleet_cpu_share"),
            "publish_call_ms_median": r3(self.med("publish_ms")),
            "connect_seconds": r3(self.connect_seconds),
            "connect_server_cpu_us_per_conn": round(self.connect_server_cpu_us_per_conn, 1),
            "server_rss_kb_idle": self.server_rss_kb_idle,
            "server_rss_kb_connected": self.server_rss_kb_connected,
            "server_rss_bytes_per_connection": self.rss_bytes_per_connection,
            "frame_payload_bytes": self.frame_payload_bytes,
            "first_frame_head": self.first_frame,
            "engineio_pings_answered": self.engineio_pings,
            "other_frames_after_ready": self.other_frames,
            "loadavg_1min_before_after": [self.loadavg_before, self.loadavg_after],
        }


#: Filled by the tests below, printed and written by the session summary.
SIO_RESULTS: dict[str, SioResult] = {}


# --------------------------------------------------------------------------- servers


def _pin_all_threads(pid: int, cpu: int | None) -> None:
    """Pin every thread of ``pid`` (a Node server starts its V8/libuv threads before the harness'
    pin of the main thread lands; threads started later inherit from their creator)."""
    if cpu is None:
        return
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        pin(int(tid), cpu)


def _token_from(ws_path: str) -> str:
    return ws_path.split("token=", 1)[1].split("&", 1)[0]


def _probe_socketio(port: int) -> tuple[int, str]:
    """``GET /socket.io/?EIO=4&transport=polling``: (status, body head). A session it opens is closed
    again with an Engine.IO close packet, so it does not linger through the rounds."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", "/socket.io/?EIO=4&transport=polling")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        if resp.status == 200 and body.startswith("0{"):
            try:
                sid = json.loads(body[1:])["sid"]
                conn.request("POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}", body=b"1",
                             headers={"Content-Type": "text/plain;charset=UTF-8"})
                conn.getresponse().read()
            except (ValueError, KeyError, OSError, http.client.HTTPException):
                pass
        return resp.status, body[:200]
    finally:
        conn.close()


def start_fastgw_socketio(procs: Procs, cfg: BenchConfig) -> tuple[Target, list[str]]:
    target = start_fastgw(procs, cfg, name="fastgw-socketio")
    status, body = _probe_socketio(target.port)
    if status == 404:
        raise Unavailable("fastgw serves no /socket.io/ yet (GET /socket.io/?EIO=4&transport=polling -> 404)")
    connect = "40" + json.dumps({"token": _token_from(target.ws_path)}, separators=(",", ":"))
    target.ws_path = SIO_PATH
    target.info = " ".join(x for x in (target.info, f"/socket.io/ polling probe: HTTP {status}") if x)
    return target, ["--connect-packet", connect]


def start_fastgw_native(procs: Procs, cfg: BenchConfig) -> tuple[Target, list[str]]:
    return start_fastgw(procs, cfg, name="fastgw-native"), []


def start_python_socketio(procs: Procs, cfg: BenchConfig) -> tuple[Target, list[str]]:
    from importlib.metadata import version

    port = free_port()
    argv = [sys.executable, str(PEERS_DIR / "python_socketio_server.py"), "--host", HOST, "--port", str(port)]
    gc_threshold = os.environ.get("FASTGW_BENCH_PYSIO_GC_THRESHOLD", "").strip()
    if gc_threshold:
        argv += ["--gc-threshold", gc_threshold]
    proc = procs.start("python-socketio", argv, cpu=cfg.server_cpu)
    wait_ready(proc, HOST, port, "/readyz", timeout=30.0)
    info = f"python-socketio {version('python-socketio')}, python-engineio {version('python-engineio')}"
    if gc_threshold:
        info += f", gc.set_threshold({gc_threshold})"
    return Target("python-socketio", proc.pid, port, SIO_PATH, "/publish", {}, info=info), []


def _installed_socketio_version() -> str:
    try:
        return json.loads((NODE_DIR / "node_modules" / "socket.io" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return ""


def ensure_node_peer() -> tuple[str, str]:
    """node and npm on PATH, ``npm ci`` when node_modules lacks the pinned socket.io. (node path, socket.io
    version); fails the test (does not skip) when something is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail(f"node-socketio needs node and npm on PATH (node: {node}, npm: {npm})", pytrace=False)
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["socket.io"]
    if _installed_socketio_version() != pinned:
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=str(NODE_DIR),
                               capture_output=True, timeout=NPM_CI_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {NODE_DIR} took more than {NPM_CI_TIMEOUT:.0f}s", pytrace=False)
        if r.returncode != 0:
            out = (r.stdout + r.stderr).decode("utf-8", "replace")[-2000:]
            pytest.fail(f"`npm ci` in {NODE_DIR} failed ({r.returncode}):\n{out}", pytrace=False)
    installed = _installed_socketio_version()
    if installed != pinned:
        pytest.fail(f"socket.io {pinned} expected in {NODE_DIR}/node_modules, found {installed or 'none'}",
                    pytrace=False)
    return node, installed


def start_node_socketio(procs: Procs, cfg: BenchConfig) -> tuple[Target, list[str]]:
    node, version = ensure_node_peer()
    port = free_port()
    argv = [node, str(NODE_DIR / "server.mjs"), "--host", HOST, "--port", str(port)]
    proc = procs.start("node-socketio", argv, cpu=cfg.server_cpu)
    wait_ready(proc, HOST, port, "/readyz", timeout=30.0)
    _pin_all_threads(proc.pid, cfg.server_cpu)
    node_version = subprocess.run([node, "--version"], capture_output=True, timeout=30).stdout.decode().strip()
    info = f"socket.io {version}, node {node_version}, threads {len(os.listdir(f'/proc/{proc.pid}/task'))}"
    return Target("node-socketio", proc.pid, port, SIO_PATH, "/publish", {}, info=info), []


def start_floor(procs: Procs, cfg: BenchConfig) -> tuple[Target, list[str]]:
    return start_peer("floor_writes.py", "floor")(procs, cfg), []


STARTERS = {
    "fastgw-socketio": start_fastgw_socketio,
    "fastgw-native": start_fastgw_native,
    "python-socketio": start_python_socketio,
    "node-socketio": start_node_socketio,
    "floor": start_floor,
}
assert list(STARTERS) == list(CASES)


# --------------------------------------------------------------------------- one round


def sio_round(target: Target, fleet: FleetHandle, publisher: Publisher, cfg: BenchConfig,
              log_tail) -> SioRecord:
    """Arm for M frames per connection, fire M POSTs back-to-back, wait (bounded) for the last frame.

    On the fleet's timeout the record is partial: frames delivered within the bound / the time
    from the first POST to the timeout."""
    n, m = cfg.connections, cfg.messages
    before = int(fleet.stats().get("frames", 0))
    armed = fleet.arm(m, cfg.round_timeout)
    if armed != n:
        raise RuntimeError(f"{target.name}: only {armed}/{n} connections alive at round start ({fleet.stats()})")
    meter = Meter(target, fleet, cfg, ksoftirqd_pid(cfg.server_cpu))
    t0 = meter.start()
    for i in range(m):
        publish_or_explain(target, fleet, publisher, PUBLISH_BODY, f"{i + 1}/{m}", log_tail)
    t_pub = time.monotonic()
    t_last, reply = fleet.wait_done(cfg.round_timeout)
    complete = t_last is not None
    if not complete:
        if not reply.startswith("timeout"):
            raise RuntimeError(f"{target.name}: round failed: {reply}\nserver log tail:\n{log_tail()}")
        # The fleet gave up at its bound (or the POSTs alone outlasted it): what arrived until now.
        delivered = int(fleet.stats().get("frames", 0)) - before
        t_last = time.monotonic()
    else:
        delivered = n * m
    return SioRecord(**metered(meter.stop(), max(t_last - t0, 1e-9), delivered, cfg.server_cpu),
                     publish_ms=(t_pub - t0) * 1e3 / m, delivered=delivered, complete=complete)


# --------------------------------------------------------------------------- the benchmark


def _cfg(bench_config: BenchConfig) -> BenchConfig:
    bound = os.environ.get("FASTGW_BENCH_SOCKETIO_ROUND_TIMEOUT", "").strip()
    return dataclasses.replace(bench_config, round_timeout=float(bound)) if bound else bench_config


@dataclass
class Setup:
    """One server under test with its connected fleet and its publisher."""

    target: Target
    fleet: FleetHandle
    publisher: Publisher
    server_proc: Any
    result: SioResult
    records: list[SioRecord] = field(default_factory=list)

    def round(self, cfg: BenchConfig) -> SioRecord | None:
        """One round; None (nothing run) once a round of this server has timed out."""
        if self.records and not self.records[-1].complete:
            return None
        rec = sio_round(self.target, self.fleet, self.publisher, cfg, self.server_proc.log_tail)
        self.records.append(rec)
        return rec


def setup_server(server: str, procs: Procs, cfg: BenchConfig) -> Setup:
    """Start ``server`` (pinned) and a fleet, connect and subscribe N clients; skips only when fastgw has
    no Socket.IO endpoint yet, fails when not every connection gets ready."""
    n, m = cfg.connections, cfg.messages
    try:
        target, fleet_args = STARTERS[server](procs, cfg)
    except Unavailable as exc:
        pytest.skip(str(exc))
    server_proc = next(p for p in procs.started if p.pid == target.pid)
    result = SioResult(case=server, connections=n, messages=m, loadavg_before=loadavg1(), info=target.info)
    fleet = start_fleet(procs, cfg, target.port, target.ws_path, name=f"fleet-{server}",
                        extra_args=["--mode", CASES[server].mode, *fleet_args])
    failure = connect_measured(result, target, fleet, cfg, server_proc.log_tail)
    if failure:
        pytest.fail(failure)
    publisher = Publisher(HOST, target.port, target.publish_path, target.headers,
                          timeout=max(cfg.round_timeout, 30.0))
    return Setup(target, fleet, publisher, server_proc, result)


def finish_server(setup: Setup, cfg: BenchConfig, measured: list[SioRecord]) -> tuple[dict, dict]:
    """Close the publisher, wait (bounded) for a timed-out round's backlog, fill the result; returns the
    fleet's stats and per-connection counts for the correctness checks (:func:`check_delivery`)."""
    n, m = cfg.connections, cfg.messages
    setup.publisher.close()
    result, fleet, records = setup.result, setup.fleet, setup.records
    if records and not records[-1].complete:
        r = records[-1]
        result.partial = (f"round {len(records)} not complete within its {cfg.round_timeout:g}s bound: "
                          f"{r.delivered:,}/{n * m:,} deliveries {r.seconds:.1f}s after the first POST; later "
                          f"rounds not run; that partial rate is the figure")
        measured = records[-1:]
        deadline = time.monotonic() + cfg.round_timeout  # bounded wait for the backlog
        while time.monotonic() < deadline and fleet.counts()["min"] < len(records) * m:
            time.sleep(0.5)
    result.records = measured
    result.loadavg_after = loadavg1()
    stats = fleet.stats()
    counts = fleet.counts()
    result.frame_payload_bytes = int(stats.get("payload_len", 0))
    result.first_frame = stats.get("first_frame", "")
    result.engineio_pings = int(stats.get("pings", 0))
    result.other_frames = int(stats.get("other", 0))
    return stats, counts


def check_delivery(setup: Setup, cfg: BenchConfig, stats: dict, counts: dict) -> None:
    """Correctness (not speed): every connection got every message it was sent, exactly once, none lost."""
    name, n = setup.target.name, cfg.connections
    published = len(setup.records) * cfg.messages  # messages published to every connection
    assert int(stats["lost"]) == 0 and counts["alive"] == n, (
        f"{name}: {stats['lost']} connections lost, {counts['alive']}/{n} alive")
    assert counts["min"] == counts["max"] == published, (
        f"{name}: frames per connection min {counts['min']} max {counts['max']}, expected {published} "
        f"({len(setup.records)} rounds x {cfg.messages}); {setup.result.partial}")
    assert int(stats["frames"]) == n * published, (
        f"{name}: {stats['frames']} channel_message frames, expected {n * published}")


@pytest.mark.parametrize("server", list(CASES))
def test_socketio_fanout(benchmark, server, bench_config: BenchConfig, procs: Procs, pinned_controller):
    cfg = _cfg(bench_config)
    n, m = cfg.connections, cfg.messages
    benchmark.group = f"socketio-fanout-{n}x{m}"
    setup = setup_server(server, procs, cfg)

    def one_round() -> None:
        if setup.round(cfg) is not None:
            time.sleep(0.1)  # let ACKs drain between rounds

    try:
        benchmark.pedantic(one_round, rounds=cfg.rounds, warmup_rounds=cfg.warmup_rounds, iterations=1)
    finally:
        setup.publisher.close()
    # With --benchmark-disable pedantic runs the target once, without warm-up.
    records = setup.records
    measured = records if benchmark.disabled else records[cfg.warmup_rounds : cfg.warmup_rounds + cfg.rounds]
    stats, counts = finish_server(setup, cfg, measured)
    result = setup.result
    SIO_RESULTS[server] = result
    setup.fleet.quit()
    benchmark.extra_info.update({
        "connections": n,
        "messages_per_round": m,
        "deliveries_per_s_median": round(result.median),
        "deliveries_per_s": [round(r.deliveries_per_s) for r in result.records],
        "server_cpu_us_per_delivery_median": round(result.med("server_cpu_us_per_delivery"), 3),
        "fleet_cpu_share_median": round(result.med("fleet_cpu_share"), 3),
        "frame_payload_bytes": result.frame_payload_bytes,
        "connect_seconds": round(result.connect_seconds, 3),
        "partial": result.partial,
    })
    check_delivery(setup, cfg, stats, counts)


def _interleaved_cases() -> list[str]:
    raw = os.environ.get("FASTGW_BENCH_SOCKETIO_INTERLEAVED", "fastgw-socketio,fastgw-native,floor").strip()
    if raw in ("", "0", "none"):
        return []
    names = [x.strip() for x in raw.split(",") if x.strip()]
    unknown = [x for x in names if x not in CASES]
    if unknown:
        raise pytest.UsageError(f"FASTGW_BENCH_SOCKETIO_INTERLEAVED: unknown {unknown}; choose from {list(CASES)}")
    return names


def test_socketio_interleaved(request, bench_config: BenchConfig, procs: Procs, pinned_controller):
    """The servers of ``FASTGW_BENCH_SOCKETIO_INTERLEAVED`` (default fastgw-socketio, fastgw-native, floor)
    connected at the same time, round 1 of each, round 2 of each, ... (order rotated every round; 1 warm-up
    + the measured rounds; one round with --benchmark-disable): drift on a shared machine hits all alike,
    which matters for fastgw-socketio / fastgw-native, a ratio near 1 with a 0.9 target."""
    cases = _interleaved_cases()
    if not cases:
        pytest.skip("FASTGW_BENCH_SOCKETIO_INTERLEAVED is empty")
    cfg = _cfg(bench_config)
    smoke = bool(request.config.getoption("benchmark_disable", default=False))
    warmup, rounds = (0, 1) if smoke else (cfg.warmup_rounds, cfg.rounds)
    setups = {name: setup_server(name, procs, cfg) for name in cases}
    names = list(setups)
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if setups[name].round(cfg) is not None:
                time.sleep(0.1)
    for name, setup in setups.items():
        stats, counts = finish_server(setup, cfg, setup.records[warmup:])
        setup.result.case = name + IL
        SIO_RESULTS[setup.result.case] = setup.result
        setup.fleet.quit()
        check_delivery(setup, cfg, stats, counts)


# --------------------------------------------------------------------------- summary


def _source_state() -> dict[str, Any]:
    """The commit measured, and whether fastgw/ had uncommitted changes (figures of a work in progress)."""
    def git(*args: str) -> str:
        try:
            r = subprocess.run(["git", *args], capture_output=True, timeout=10, cwd=str(BENCH_DIR.parent))
            return r.stdout.decode("utf-8", "replace").strip() if r.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "fastgw").splitlines()]
    return {"commit": git("rev-parse", "--short=12", "HEAD"), "fastgw_uncommitted_files": changed}


def _summary() -> tuple[list[str], dict[str, Any]]:
    cfg = _harness.load_config()
    res = SIO_RESULTS
    any_r = next(iter(res.values()))
    sequential = [k for k in CASES] + [k for k in res if k not in CASES and IL not in k]
    interleaved = [k for k in res if IL in k]
    w = max(16, *(len(k) for k in res))
    lines = [
        f"Socket.IO fan-out: {any_r.connections} connections x {any_r.messages} messages per round; medians over "
        f"the measured rounds; server on CPU {cfg.server_cpu}, fleet (fleet.py) + publisher on CPU "
        f"{cfg.fleet_cpu}; servers one after the other, then '{IL}' = connected at once, rounds interleaved",
        f"{'server':<{w}} {'deliveries/s':>13} {'rnds':>4} {'proc us/dlv':>11} {'core us/dlv':>11} {'core busy':>9} "
        f"{'other':>5} {'ksoft':>5} {'fleet cpu':>9} {'POST ms':>7} {'frame B':>7} {'connect s':>9} {'us/conn':>7} "
        f"{'RSS B/conn':>10}",
    ]

    def row(name: str, r: SioResult, d: dict[str, Any]) -> str:
        return (
            f"{name:<{w}} {r.median:>13,.0f} {len(r.records):>4} {d['server_cpu_us_per_delivery_median']:>11.2f} "
            f"{d['server_core_us_per_delivery_median']:>11.2f} {d['server_core_busy_share_median']:>9.2f} "
            f"{d['server_core_other_share_median']:>5.2f} {d['ksoftirqd_share_median']:>5.2f} "
            f"{d['fleet_cpu_share_median']:>9.2f} "
            f"{d['publish_call_ms_median']:>7.2f} {r.frame_payload_bytes:>7} "
            f"{r.connect_seconds:>9.2f} {r.connect_server_cpu_us_per_conn:>7.0f} "
            f"{d['server_rss_bytes_per_connection'] or 0:>10}"
            + (f"  [PARTIAL: {r.partial}]" if r.partial else "")
            + (f"  [{r.info}]" if r.info else "")
        )

    lines += table_rows(res, sequential + interleaved, w, row)
    lines.append("columns: proc/core us/dlv = server process CPU (all threads) / server core busy (softirq "
                 "included) per delivery; core busy ~1.0: the server limits; other = core busy - server process "
                 "(other load on the server's core), of which ksoft = ksoftirqd of that core (deferred loopback "
                 "softirq, not foreign load); fleet cpu ~1.0: the fleet may limit; POST ms = mean publish "
                 "call (fastgw, node-socketio and floor answer once every socket was written to, python-socketio "
                 "once every client's writer task has the packet queued); frame B = WebSocket payload of one "
                 "message; us/conn, RSS B/conn = server CPU and memory per connection of the connect phase")

    def ratio(a: str, b: str) -> float | None:
        ra, rb = res.get(a), res.get(b)
        if ra and rb and ra.median > 0 and rb.median > 0:
            return ra.median / rb.median
        return None

    def cpu_ratio(a: str, b: str) -> float | None:  # > 1: a spends less server CPU per delivery
        ra, rb = res.get(a), res.get(b)
        if ra and rb and ra.med("server_cpu_us_per_delivery") > 0 and rb.med("server_cpu_us_per_delivery") > 0:
            return rb.med("server_cpu_us_per_delivery") / ra.med("server_cpu_us_per_delivery")
        return None

    pairs = [("fastgw-socketio", "fastgw-native"), ("fastgw-socketio", "python-socketio"),
             ("fastgw-socketio", "node-socketio")]
    pairs += [(a, "floor") for a in CASES if a != "floor"]
    pairs += [("node-socketio", "python-socketio")]
    il_pairs = [(a + IL, b + IL) for a, b in pairs if a + IL in res and b + IL in res]
    ratios = {f"{a}/{b}": ratio(a, b) for a, b in pairs + il_pairs}
    cpu_ratios = {f"{a}/{b}": cpu_ratio(a, b) for a, b in pairs + il_pairs}
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    kw = max(len(k) for k in ratios)
    lines.append(f"{'ratio':<{kw}} {'deliveries/s':>12} {'proc CPU/dlv, inverse':>22}")
    for key, v in ratios.items():
        tgt = ""
        target = TARGETS.get(key.replace(IL, ""))
        if target is not None and v is not None:
            tgt = f"   target >= {target:g}: {'met' if v >= target else 'not met'}"
            partial = [x for x in key.split("/") if res.get(x) is not None and res[x].partial]
            if partial:
                tgt += f" ({', '.join(partial)}: partial round, see above)"
        lines.append(f"{key:<{kw}} {fmt(v):>12} {fmt(cpu_ratios[key]):>22}{tgt}")
    rnd = lambda d: {k: (round(v, 4) if v is not None else None) for k, v in d.items()}  # noqa: E731
    doc = {
        **doc_header(),
        "pinning": {"server_cpu": cfg.server_cpu, "fleet_and_pytest_cpu": cfg.fleet_cpu},
        "source": _source_state(),
        "results": {k: v.as_dict() for k, v in res.items()},
        "ratios_deliveries_per_s": rnd(ratios),
        "ratios_cpu_per_delivery_inverse": rnd(cpu_ratios),
        "targets_deliveries_per_s_min": TARGETS,
    }
    return lines, doc


@_harness.session_summary("socket.io fan-out summary", "FASTGW_BENCH_SOCKETIO_RESULTS", DEFAULT_SOCKETIO_RESULTS)
def _report() -> tuple[list[str], dict[str, Any]] | None:
    return _summary() if SIO_RESULTS else None
