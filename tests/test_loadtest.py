"""``fastgw loadtest``: real gateways (in-process and ``python -m fastgw serve``), real client
processes, real sockets on loopback (127.0.0.1 and the sources 127.0.0.2, 127.0.0.3).

Behaviour only: who connected, what was delivered and lost, what was measured and written.
No speed thresholds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter

import aiohttp
import pytest

from fastgw.loadtest import plan as plans
from fastgw.loadtest import procstats
from fastgw.loadtest.client import Engine
from fastgw.loadtest.controller import LoadtestConfig, check_config, message_template, run_loadtest
from fastgw.loadtest.histogram import Histogram, bucket_bounds, bucket_of
from tests.conftest import SECRET

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}


class Serve:
    """``python -m fastgw serve`` on a free loopback port; stopped by pid."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--no-simulator", "--jwt-secret", SECRET, "--connect-rate", "0", "--connect-rate-per-ip", "0",
                *args]
        self.proc = subprocess.Popen(argv, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    async def ready(self, timeout: float = 20.0) -> "Serve":
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "the gateway exited"
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("gateway not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
async def serve():
    started: list[Serve] = []

    async def start(*args: str) -> Serve:
        s = Serve(*args)
        started.append(s)
        return await s.ready()

    yield start
    for s in started:
        s.stop()


def loadtest_cli(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastgw", "loadtest", "--no-progress", *args], env=clean_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def check_percentiles(lat: dict) -> None:
    values = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "max")]
    assert all(v is not None and v >= 0 for v in values), lat
    assert values == sorted(values), lat


def check_clients_stopped(report: dict) -> None:
    pids = [p["pid"] for p in report["client_processes"]["processes"]]
    assert pids and all(not procstats.alive(pid) for pid in pids)


# --------------------------------------------------------------------------- the plan


def test_plan_is_reproducible_for_a_seed():
    a = plans.bmtc_plan(2000, k=3, seed=7, profile_mix={"full": 0.6, "cellular": 0.3, "slow": 0.1})
    b = plans.bmtc_plan(2000, k=3, seed=7, profile_mix={"full": 0.6, "cellular": 0.3, "slow": 0.1})
    c = plans.bmtc_plan(2000, k=3, seed=8, profile_mix={"full": 0.6, "cellular": 0.3, "slow": 0.1})
    assert a == b
    assert a.clients != c.clients


def test_plan_follows_the_bmtc_pattern_with_zipf_popularity():
    p = plans.bmtc_plan(5000, k=3, seed=1, notification_share=0.2, profile_mix={"full": 0.6, "cellular": 0.3,
                                                                                 "slow": 0.1})
    routes, stops = plans.ranked_channels()
    public = set(routes) | set(stops)
    subs = dict(zip(p.channels, p.subscribers()))
    for client in p.clients:
        names = [p.channels[i] for i in client.channels]
        drawn = [n for n in names if not n.startswith("user:")]
        assert len(drawn) == 3 and len(set(drawn)) == 3 and set(drawn) <= public
        assert [n for n in names if n.startswith("user:")] in ([], [f"user:{client.user_id}:notifications"])
    # a share of the users watch their own notifications
    with_notifications = sum(1 for n in p.channels if n.startswith("user:"))
    assert 800 < with_notifications < 1200
    # Zipf-skewed: the busiest route direction and stop are far above the typical one
    route_subs = [subs.get(r, 0) for r in routes]
    stop_subs = [subs.get(s, 0) for s in stops]
    assert route_subs[0] > 5 * statistics.median(route_subs)
    assert route_subs[0] > route_subs[9] > route_subs[-1]
    assert stop_subs[0] > 20 * max(1, statistics.median(stop_subs))
    assert p.channels[0] in (routes[0], stops[0])  # channels are ordered most subscribed first
    # profiles in the exact proportions asked for
    assert Counter(c.profile for c in p.clients) == {"full": 3000, "cellular": 1500, "slow": 500}


def test_anonymous_plan_has_no_user_channels_and_fanout_is_one_channel():
    p = plans.bmtc_plan(500, k=2, seed=3, notification_share=1.0, anonymous=True)
    assert not any(n.startswith("user:") for n in p.channels)
    f = plans.fanout_plan(100, "route:500-D:UP")
    assert f.channels == ("route:500-D:UP",) and all(c.channels == (0,) for c in f.clients)
    assert plans.default_fanout_channel() == plans.ranked_channels()[0][0]
    with pytest.raises(ValueError):
        plans.fanout_plan(10, "no-such:channel")


@pytest.mark.parametrize("bad", ["full=x", "fast=1", "full=-1", "full=0", "full"])
def test_profile_mix_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        plans.parse_profile_mix(bad)


def test_profile_mix_is_normalised():
    assert plans.parse_profile_mix("full=3,slow=1") == {"full": 0.75, "slow": 0.25}
    assert plans.parse_profile_mix(None) == {"full": 1.0}


# --------------------------------------------------------------------------- histogram, /proc


def test_histogram_percentiles_are_within_a_bucket_of_the_exact_values():
    import random

    rng = random.Random(5)
    values = [int(rng.lognormvariate(8, 1.2)) for _ in range(20000)]
    h = Histogram.from_values(values)
    exact = sorted(values)
    for p in (50, 90, 99, 99.9):
        want = exact[min(len(exact) - 1, int(p / 100 * len(exact)))]
        assert abs(h.percentile(p) - want) <= max(2, want * 0.02)
    assert h.percentile(100) == max(values) and h.lo == min(values)
    for v in (0, 1, 127, 128, 129, 1000, 123456789):
        low, high = bucket_bounds(bucket_of(v))
        assert low <= v <= high
    merged = Histogram.from_dict(h.to_dict())
    merged.merge(h)
    assert merged.n == 2 * h.n and merged.percentile(50) == h.percentile(50)


def test_the_processes_listening_on_a_port_are_found():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert procstats.pids_listening_on(port) == [os.getpid()]
    assert procstats.pids_listening_on(port) == []
    sample = procstats.sample(os.getpid())
    assert sample is not None and sample.rss_bytes > 0 and sample.cpu_s > 0


def test_messages_carry_the_load_test_fields_first():
    t = message_template("route:375-D:UP")
    assert t["type"] == "location_update" and t["route_id"] == "375-D"
    assert message_template("stop:20922:arrivals")["type"] == "stop_arrival"
    assert message_template("user:lt1:notifications")["type"] == "user_notification"


# --------------------------------------------------------------------------- against real gateways


async def test_fanout_native_cli_against_a_serve_process(serve, tmp_path):
    """300 clients in 2 processes over 2 source addresses; the CLI writes the report and the chart."""
    gw = await serve("--heartbeat", "1")
    report_path, chart_path = tmp_path / "fanout.json", tmp_path / "fanout.png"
    proc = await asyncio.to_thread(
        loadtest_cli, "fanout", "--url", f"http://127.0.0.1:{gw.port}", "-n", "300", "--processes", "2",
        "--sources", "2", "--jwt-secret", SECRET, "--duration", "2", "--rate", "10",
        "--report", str(report_path), "--chart", str(chart_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deliveries / expected" in proc.stdout and "OK" in proc.stdout  # the rich table
    report = json.loads(report_path.read_text())
    assert chart_path.read_bytes()[:8] == PNG_MAGIC
    assert report["ok"] and report["problems"] == []
    assert report["connect"]["connected"] == 300 and report["connect"]["failed"] == 0
    assert report["connections"]["alive_at_end"] == 300
    assert report["client_processes"]["count"] == 2
    assert report["client_processes"]["sources"] == ["127.0.0.2", "127.0.0.3"]
    d = report["delivery"]
    assert d["published"] == 20
    assert d["deliveries"] == d["expected"] == 20 * 300
    assert d["lost"] == 0 and d["lost_per_channel"] == {} and d["out_of_order"] == 0
    assert d["messages_complete"] == 20
    check_percentiles(d["latency_ms"])
    check_percentiles(d["last_subscriber_ms"])
    assert d["latency_ms"]["max"] <= d["last_subscriber_ms"]["max"] + 0.001
    assert d["bytes_per_delivery"] > 400
    assert "CLOCK_REALTIME" in report["clock"]
    assert report["heartbeats"]["ws_pings_answered"] >= 300  # 1 s heartbeat: every client answered
    server = report["server"]
    assert server["pids"] == [gw.proc.pid] and server["found_by"] == "port"
    assert server["rss_per_connection_bytes"] > 0
    assert "jwt_secret" not in report["config"] and SECRET not in report_path.read_text()
    seconds = [r["t"] for r in report["latency_per_second"]]  # by publish time: 20 messages over ~2 s
    assert seconds[0] == 0 and seconds == list(range(len(seconds))) and len(seconds) >= 2
    assert sum(r["n"] for r in report["latency_per_second"]) == d["deliveries"]
    check_clients_stopped(report)


async def test_fanout_socketio_in_process_gateway_with_profiles(start_gateway, tmp_path):
    """Socket.IO clients with a profile mix, via the Python API; the gateway is this process."""
    gw = await start_gateway(connect_rate=0, connect_rate_per_ip=0, socketio_ping_interval=0.5)
    cfg = LoadtestConfig(scenario="fanout", url=f"http://127.0.0.1:{gw.port}", clients=300, processes=2,
                         sources="2", protocol="socketio", jwt_secret=SECRET, duration=2, rate=10,
                         profile_mix="full=0.6,cellular=0.3,slow=0.1", report_path=str(tmp_path / "r.json"),
                         chart_path=str(tmp_path / "r.png"))
    report = await run_loadtest(cfg)
    assert report["ok"], report["problems"]
    d = report["delivery"]
    assert d["deliveries"] == d["expected"] == 20 * 300 and d["lost"] == 0
    assert set(d["latency_ms_by_profile"]) == {"full", "cellular", "slow"}
    assert d["latency_ms_by_profile"]["full"]["n"] == 20 * 180
    check_percentiles(d["latency_ms"])
    assert report["heartbeats"]["engineio_pings_answered"] >= 300
    assert report["server"]["pids"] == [os.getpid()]
    assert json.loads((tmp_path / "r.json").read_text())["delivery"]["deliveries"] == 6000
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    assert gw.stats.snapshot() is not None
    check_clients_stopped(report)


async def test_idle_native_holds_everyone_with_heartbeats(serve, tmp_path):
    gw = await serve("--heartbeat", "1")
    cfg = LoadtestConfig(scenario="idle", url=f"http://127.0.0.1:{gw.port}", clients=300, processes=2,
                         sources="2", jwt_secret=SECRET, duration=3, channels_per_client=3,
                         notification_share=0.5, chart_path=str(tmp_path / "idle.png"))
    report = await run_loadtest(cfg)
    assert report["ok"], report["problems"]
    assert report["connections"] == {"connected": 300, "alive_at_end": 300, "dropped": 0, "dropped_by_reason": {}}
    assert report["heartbeats"]["ws_pings_answered"] >= 2 * 300
    assert report["delivery"] is None and report["idle"]["held_s"] >= 3
    assert report["plan"]["channels_by_kind"]["user"] > 0
    assert report["server"]["pids"] == [gw.proc.pid] and report["server"]["rss_per_connection_bytes"] > 0
    assert (tmp_path / "idle.png").read_bytes()[:8] == PNG_MAGIC
    # the gateway agrees: every client and every subscription is there
    async with aiohttp.ClientSession() as s:
        from fastgw.auth import mint_token

        headers = {"Authorization": "Bearer " + mint_token("ops", secret=SECRET, admin=True)}
        async with s.get(f"http://127.0.0.1:{gw.port}/api/stats", headers=headers) as r:
            stats = await r.json()
    assert stats["connections"]["opened"] >= 300


async def test_idle_socketio_anonymous_clients(start_gateway):
    gw = await start_gateway(connect_rate=0, connect_rate_per_ip=0, allow_anonymous=True,
                             socketio_ping_interval=0.5)
    cfg = LoadtestConfig(scenario="idle", url=f"ws://127.0.0.1:{gw.port}", clients=200, processes=2, sources="2",
                         protocol="socketio", duration=1.5, channels_per_client=2, notification_share=1.0,
                         server_pids=(os.getpid(),))
    report = await run_loadtest(cfg)
    assert report["ok"], report["problems"]
    assert report["server"]["pids"] == [os.getpid()] and report["server"]["found_by"] == "--server-pid"
    assert report["config"]["auth"] == "anonymous"
    assert "user" not in report["plan"]["channels_by_kind"]
    assert report["connections"]["alive_at_end"] == 200
    assert report["heartbeats"]["engineio_pings_answered"] >= 200


async def test_refused_clients_are_counted_by_reason(start_gateway):
    """A gateway full at 100: 150 clients, no retries → 50 failures, all HTTP 503."""
    gw = await start_gateway(connect_rate=0, connect_rate_per_ip=0, max_connections=100)
    cfg = LoadtestConfig(scenario="idle", url=f"http://127.0.0.1:{gw.port}", clients=150, processes=1,
                         sources="none", jwt_secret=SECRET, duration=0.2, channels_per_client=1, retries=0)
    report = await run_loadtest(cfg)
    assert not report["ok"]
    assert report["connect"]["connected"] == 100 and report["connect"]["failed"] == 50
    assert report["connect"]["failures_by_reason"] == {"http_503": 50}
    assert "503" in report["connect"]["failure_examples"]["http_503"]
    assert report["problems"] == ["50 of 150 clients failed to connect"]


async def test_a_bad_token_is_a_401_not_retried(start_gateway):
    gw = await start_gateway(connect_rate=0, connect_rate_per_ip=0)
    cfg = LoadtestConfig(scenario="idle", url=f"http://127.0.0.1:{gw.port}", clients=20, processes=1,
                         jwt_secret="another-secret-0123456789abcdef0123", duration=0, retries=3)
    report = await run_loadtest(cfg)
    assert report["connect"]["failures_by_reason"] == {"http_401": 20}
    assert report["connect"]["attempts"] == 20


# --------------------------------------------------------------------------- loss accounting


async def test_gaps_and_missing_messages_are_counted_per_channel():
    """A hand-written WebSocket server on loopback skips seq 3 and never sends 5: the client
    engine counts one gap, and at the report two messages missing for that connection."""
    frames = []
    t = time.time_ns()
    for seq in (1, 2, 4):
        body = (b'{"type":"channel_message","channel":"route:500-D:UP","message":{"type":"location_update",'
                b'"lt_ch":0,"seq":%d,"sent_ns":%d,"vehicle_id":"x"}}' % (seq, t))
        frames.append(bytes((0x81, 126)) + len(body).to_bytes(2, "big") + body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        welcome = b'{"type":"welcome"}'
        writer.write(bytes((0x81, len(welcome))) + welcome)
        await reader.read(1024)  # the subscribe
        sub = b'{"type":"subscribed","id":"0","channel":"route:500-D:UP"}'
        writer.write(bytes((0x81, len(sub))) + sub)
        await asyncio.sleep(0.3)  # the engine is marked by then
        writer.write(b"".join(frames))  # three deliveries in one read
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    events: list[dict] = []
    eng = Engine({"protocol": "native", "host": "127.0.0.1", "port": port, "host_header": f"127.0.0.1:{port}",
                  "channels": ["route:500-D:UP"], "clients": [["u0", "full", "", [0]]], "retries": 0,
                  "attempt_timeout": 5, "connect_deadline": 10}, events.append)
    try:
        await eng.connect_all()
        assert events[-1]["ok"] == 1
        eng.mark(t - 1, {})
        for _ in range(100):
            if eng.deliveries >= 3:
                break
            await asyncio.sleep(0.02)
        report = eng.report({"0": 5}, {})
    finally:
        eng.close_all()
        server.close()
    assert report["deliveries"] == 3 and report["malformed"] == 0
    # [subscribers, received, gaps, out of order, missing (alive), missing (dropped)]
    assert report["channels"]["0"] == [1, 3, 1, 0, 2, 0]
    assert [m[:3] for m in sorted(report["messages"])] == [[0, 1, 1], [0, 2, 1], [0, 4, 1]]


# --------------------------------------------------------------------------- the command line


def test_cli_refuses_what_it_cannot_do():
    proc = loadtest_cli("rush", "--url", "http://127.0.0.1:9")  # no such scenario
    assert proc.returncode == 2 and "'idle', 'fanout', 'bmtc', 'storm'" in proc.stderr
    proc = loadtest_cli("storm", "--url", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "--jwt-secret" in proc.stderr
    proc = loadtest_cli("fanout", "--url", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "--jwt-secret" in proc.stderr
    proc = loadtest_cli("idle", "--url", "http://127.0.0.1:9", "-n", "60000", "--sources", "2")
    assert proc.returncode == 2 and "per address" in proc.stderr
    proc = loadtest_cli("idle", "--url", "http://127.0.0.1:9", "-n", "40000", "--processes", "2")
    assert proc.returncode == 2 and "per process" in proc.stderr
    proc = loadtest_cli("fanout", "--jwt-secret", SECRET, "--channel", "user:lt0:notifications")
    assert proc.returncode == 2 and "public channel" in proc.stderr
    proc = loadtest_cli("idle", "--scenario", "fanout")
    assert proc.returncode == 2 and "disagree" in proc.stderr
    with pytest.raises(ValueError):
        check_config(LoadtestConfig(scenario="idle", url="https://127.0.0.1:1"))


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_an_interrupted_run_stops_its_client_processes(serve, tmp_path, sig):
    gw = await serve()
    report_path = tmp_path / "never.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgw", "loadtest", "idle", "--url", f"http://127.0.0.1:{gw.port}", "-n", "200",
         "--processes", "2", "--jwt-secret", SECRET, "--duration", "120", "--no-progress",
         "--report", str(report_path)],
        env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # the signal goes to the controller alone, not to its process group
    try:
        deadline = time.monotonic() + 30
        kids: list[int] = []
        while time.monotonic() < deadline and len(kids) < 2:
            await asyncio.sleep(0.2)
            kids = children_of(proc.pid)
        assert len(kids) == 2
        await asyncio.sleep(1.5)  # connecting or holding
        os.kill(proc.pid, sig)
        try:
            out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        except subprocess.TimeoutExpired:  # say where it hung (the CLI dumps its stacks on SIGUSR1)
            os.kill(proc.pid, signal.SIGUSR1)
            await asyncio.sleep(0.5)
            os.kill(proc.pid, signal.SIGKILL)
            out, err = await asyncio.to_thread(proc.communicate, timeout=10)
            raise AssertionError(f"the controller did not stop within 30 s of the signal:\n{err[-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 130 and "interrupted" in err
    assert not any(procstats.alive(k) for k in kids)
    assert not report_path.exists()


def test_cli_help_lists_the_scenarios_and_options():
    proc = loadtest_cli("--help")
    assert proc.returncode == 0
    for word in ("idle", "fanout", "bmtc", "storm", "--trigger", "--outage", "--kafka", "--profile-mix", "--server-pid", "--chart", "--report", "--sources"):
        assert word in proc.stdout
