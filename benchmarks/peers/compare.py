"""fastgw and its peers side by side: the same ``fastgw loadtest`` scenarios against each server.

    python benchmarks/peers/compare.py [--clients N] [--rate R] [--duration D] [--idle-clients N]
                                       [--idle-duration S] [--servers a,b,...] [--report PATH]

For every server (``--servers``, default all of :data:`SERVERS`) and every scenario
(``fanout``, then ``idle``), in this one invocation:

1. the server is started fresh (RSS per connection is only meaningful on a fresh process),
   on 127.0.0.1 and a free port, pinned to CPU 0 when there are at least 2 CPUs, and
   waited for (``GET /readyz`` 200 on its publish port; bounded);
2. ``python -m fastgw loadtest <scenario> --url ... --server-pid <pid> --report <json>`` runs
   with its client processes on the other CPUs (their affinity is inherited from the
   load test), bounded by a timeout derived from its own deadlines (SIGTERM, then
   SIGKILL of its process group);
3. the server is stopped by pid: SIGTERM, then SIGKILL after a bounded wait.

The servers (``benchmarks/peers/*`` document their protocols):

``fastgw``            ``python -m fastgw serve`` (native protocol on ``/ws``)
``fastgw-socketio``   the same server, clients on Socket.IO (``/socket.io/``)
``naive-aiohttp``     ``naive_aiohttp.py``: ``await ws.send_str`` per subscriber
``websockets``        ``websockets_broadcast.py``: ``websockets.broadcast``; publishes go to port + 1
``python-socketio``   ``python_socketio_server.py``: ``AsyncServer.emit(room=...)`` on aiohttp
``node-socketio``     ``node_socketio/server.mjs``: socket.io 4.8 on Node (``npm ci`` when
                      ``node_modules`` is missing)

Every client gets a token (``--jwt-secret``); the peers ignore it. The idle scenario uses
the loadtest's BMTC plan (``--channels-per-client`` route/stop channels per client, some
user channels): fastgw and the Socket.IO servers keep each subscription, the two
single-channel peers (naive, websockets) answer every subscribe but keep one set.

Prints a table (deliveries/s, latency p50/p99, lost; RSS per connection of the idle run)
and writes a JSON report with every result, every command, the UTC time and the git commit.
A server that cannot keep up is a result: its deliveries stop at the loadtest's drain
timeout and the rest is counted as lost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_DIR = HERE / "node_socketio"
SECRET = "compare-secret-0123456789abcdef0123456789"
HOST = "127.0.0.1"
#: seconds a server gets to become ready, then to exit after SIGTERM (then SIGKILL)
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
SCENARIOS = ("fanout", "idle")


@dataclass(frozen=True)
class Server:
    name: str
    protocol: str  # the loadtest's --protocol
    argv: Callable[[int, "argparse.Namespace"], list[str]]
    ports: int = 1  # consecutive ports it listens on
    publish_port_offset: int = 0  # where POST /api/publish and GET /readyz are
    needs: str = ""  # "node"
    description: str = ""


def _fastgw(port: int, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "fastgw", "serve", "--host", HOST, "--port", str(port), "--no-simulator",
            "--jwt-secret", SECRET, "--connect-rate", "0", "--connect-rate-per-ip", "0",
            "--max-connections", str(max(10_000, 2 * max(args.clients, args.idle_clients))),
            "--log-level", "warning"]


def _peer(script: str) -> Callable[[int, argparse.Namespace], list[str]]:
    return lambda port, args: [sys.executable, str(HERE / script), "--host", HOST, "--port", str(port)]


def _node(port: int, args: argparse.Namespace) -> list[str]:
    return ["node", str(NODE_DIR / "server.mjs"), "--host", HOST, "--port", str(port)]


SERVERS: dict[str, Server] = {s.name: s for s in (
    Server("fastgw", "native", _fastgw, description="python -m fastgw serve, native protocol"),
    Server("fastgw-socketio", "socketio", _fastgw, description="python -m fastgw serve, Socket.IO clients"),
    Server("naive-aiohttp", "native", _peer("naive_aiohttp.py"), description="aiohttp, await ws.send_str each"),
    Server("websockets", "native", _peer("websockets_broadcast.py"), ports=2, publish_port_offset=1,
           description="websockets.broadcast (publish on port + 1)"),
    Server("python-socketio", "socketio", _peer("python_socketio_server.py"),
           description="python-socketio AsyncServer on aiohttp"),
    Server("node-socketio", "socketio", _node, needs="node", description="socket.io 4.8 on Node"),
)}


# --------------------------------------------------------------------------- processes


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load-test CPUs): CPU 0 for the server and the rest for the load test when
    there are at least 2 usable CPUs; (None, None) otherwise (no pinning)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def free_ports(count: int, tries: int = 50) -> int:
    """A port P such that P .. P+count-1 are free on HOST now (bounded tries)."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((HOST, 0))
            base = s.getsockname()[1]
        ok = True
        for extra in range(1, count):
            with socket.socket() as s:
                try:
                    s.bind((HOST, base + extra))
                except OSError:
                    ok = False
                    break
        if ok and base + count - 1 < 65536:
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}


def stop_pid(proc: subprocess.Popen[Any], grace: float = STOP_GRACE_S, group: bool = False) -> str:
    """SIGTERM, then SIGKILL after ``grace`` seconds, by pid (``group``: the process group it leads,
    which it was started as with ``start_new_session``). Returns how it ended."""
    if proc.poll() is not None:
        return f"had exited ({proc.returncode})"
    how = "SIGTERM"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            return how
        except subprocess.TimeoutExpired:
            how = "SIGKILL"
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        return "did not exit after SIGKILL"
    return how


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class RunningServer:
    def __init__(self, server: Server, args: argparse.Namespace, cpus: set[int] | None, logdir: Path,
                 label: str) -> None:
        self.server = server
        self.port = free_ports(server.ports)
        self.publish_port = self.port + server.publish_port_offset
        self.argv = server.argv(self.port, args)
        self.log_path = logdir / f"{label}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_pin(cpus),
                                     start_new_session=True)
        self.stopped = ""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def publish_url(self) -> str | None:
        return f"http://{HOST}:{self.publish_port}/api/publish" if self.server.publish_port_offset else None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited ({self.proc.returncode}) before it was ready; "
                                   f"log: {self.tail()}")
            if port_open(self.port) and http_ok(f"http://{HOST}:{self.publish_port}/readyz"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.server.name} not ready within {timeout:g}s; log: {self.tail()}")

    def tail(self, n: int = 800) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self.stopped = stop_pid(self.proc)
        self.log.close()


# --------------------------------------------------------------------------- one load test


def loadtest_argv(scenario: str, srv: RunningServer, args: argparse.Namespace, report: Path) -> list[str]:
    n = args.clients if scenario == "fanout" else args.idle_clients
    argv = [sys.executable, "-m", "fastgw", "loadtest", scenario, "--url", srv.url, "--protocol",
            srv.server.protocol, "-n", str(n), "--jwt-secret", SECRET, "--server-pid", str(srv.proc.pid),
            "--connect-deadline", str(args.connect_deadline), "--attempt-timeout", str(args.attempt_timeout),
            "--no-progress", "--report", str(report)]
    if scenario == "fanout":
        argv += ["--rate", str(args.rate), "--duration", str(args.duration),
                 "--drain-timeout", str(args.drain_timeout)]
        if srv.publish_url:
            argv += ["--publish-url", srv.publish_url]
    else:
        argv += ["--duration", str(args.idle_duration), "-k", str(args.channels_per_client)]
    return argv


def loadtest_timeout(scenario: str, args: argparse.Namespace) -> float:
    """The load test's own bounds (connect phase, run, drain) plus room for starting the client
    processes and collecting their reports."""
    run = (args.duration + 30.0 + args.drain_timeout) if scenario == "fanout" else args.idle_duration
    return args.connect_deadline + args.attempt_timeout + run + 120.0


def summarise(scenario: str, rep: dict[str, Any]) -> dict[str, Any]:
    conn = rep.get("connections") or {}
    connect = rep.get("connect") or {}
    server = rep.get("server") or {}
    out: dict[str, Any] = {
        "ok": rep.get("ok"), "problems": rep.get("problems"),
        "clients": connect.get("clients"), "connected": connect.get("connected"),
        "failed": connect.get("failed"), "dropped": conn.get("dropped"),
        "connect_s": connect.get("seconds"),
        "rss_per_connection_bytes": server.get("rss_per_connection_bytes"),
        "cpu_per_connection_us": server.get("cpu_per_connection_us"),
    }
    if scenario == "fanout":
        d = rep.get("delivery") or {}
        lat = d.get("latency_ms") or {}
        out.update({
            "published": d.get("published"), "expected": d.get("expected"), "deliveries": d.get("deliveries"),
            "deliveries_per_s": d.get("deliveries_per_s"), "offered_deliveries_per_s": d.get("offered_deliveries_per_s"),
            "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "max_ms": lat.get("max"),
            "lost": d.get("lost"), "drain_s": d.get("drain_s"),
            "planned": max(1, round((rep.get("config") or {}).get("rate", 0) * (rep.get("config") or {}).get("duration", 0))),
            "publish_s": d.get("publish_s"),
            "publisher_behind_s": (d.get("publisher") or {}).get("max_behind_schedule_s"),
            "publish_errors": (d.get("publisher") or {}).get("errors"),
            "post_p99_ms": ((d.get("publisher") or {}).get("post_ms") or {}).get("p99"),
            "cpu_per_delivery_us": server.get("cpu_per_delivery_us"),
        })
    return out


def run_one(server: Server, scenario: str, args: argparse.Namespace, cpus: tuple[set[int] | None, set[int] | None],
            workdir: Path) -> dict[str, Any]:
    label = f"{server.name}-{scenario}"
    report = workdir / f"{label}.json"
    entry: dict[str, Any] = {"server": server.name, "scenario": scenario, "protocol": server.protocol}
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
    srv = None
    try:
        srv = RunningServer(server, args, cpus[0], workdir, label)
        entry["server_command"] = srv.argv
        entry["server_pid"] = srv.proc.pid
        srv.wait_ready()
        argv = loadtest_argv(scenario, srv, args, report)
        entry["loadtest_command"] = argv
        timeout = loadtest_timeout(scenario, args)
        t0 = time.monotonic()
        lt = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, preexec_fn=_pin(cpus[1]), start_new_session=True)
        try:
            out, _ = lt.communicate(timeout=timeout)
            entry["loadtest_exit"] = lt.returncode
        except BaseException as exc:  # over time, or Ctrl-C: the load test and its clients go too
            if not isinstance(exc, subprocess.TimeoutExpired):
                stop_pid(lt, group=True)
                raise
            entry["loadtest_exit"] = None
            entry["error"] = f"the load test ran over {timeout:g}s; stopped ({stop_pid(lt, group=True)})"
            out = b""
            try:
                out = lt.communicate(timeout=5.0)[0] or b""
            except subprocess.TimeoutExpired:
                pass
        entry["loadtest_s"] = round(time.monotonic() - t0, 1)
        entry["loadtest_output_tail"] = out.decode("utf-8", "replace")[-3000:]
        if srv.proc.poll() is not None:
            entry.setdefault("error", f"the server exited ({srv.proc.returncode}) during the run")
        if report.exists():
            rep = json.loads(report.read_text())
            entry["result"] = summarise(scenario, rep)
            entry["report"] = rep
        else:
            entry.setdefault("error", "no report written: " + entry["loadtest_output_tail"][-500:])
    except Exception as exc:  # noqa: BLE001 - a server that fails is a row, the others still run
        entry["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if srv is not None:
            srv.stop()
            entry["server_stopped_by"] = srv.stopped
            entry["server_log_tail"] = srv.tail(1500)
    res = entry.get("result") or {}
    if scenario == "fanout":
        brief = (f"deliveries/s {res.get('deliveries_per_s')}  p99 {res.get('p99_ms')} ms  lost {res.get('lost')}"
                 if res else "")
    else:
        brief = f"connected {res.get('connected')}  RSS/conn {res.get('rss_per_connection_bytes')} B" if res else ""
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {brief} {entry.get('error', '')}".rstrip(), flush=True)
    return entry


# --------------------------------------------------------------------------- the whole comparison


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def ensure_node(timeout: float = 300.0) -> str | None:
    """None when the Node peer can run, else why not (``npm ci`` when ``node_modules`` is missing)."""
    if subprocess.run(["sh", "-c", "command -v node"], capture_output=True).returncode != 0:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        try:
            r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                               text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"npm ci failed: {exc}"
        if r.returncode != 0:
            return "npm ci failed: " + r.stderr[-500:]
    return None


def rows(results: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per server: its fanout and idle results side by side."""
    out = []
    for name in names:
        by = {e["scenario"]: e for e in results if e["server"] == name}
        f = (by.get("fanout") or {}).get("result") or {}
        i = (by.get("idle") or {}).get("result") or {}
        errors = "; ".join(f"{s}: {e['error']}" for s, e in by.items() if e.get("error"))
        problems = "; ".join(f"{s}: {', '.join(e['result']['problems'])}" for s, e in by.items()
                             if (e.get("result") or {}).get("problems"))
        out.append({
            "server": name, "protocol": SERVERS[name].protocol,
            "deliveries_per_s": f.get("deliveries_per_s"), "offered_deliveries_per_s": f.get("offered_deliveries_per_s"),
            "deliveries": f.get("deliveries"), "expected": f.get("expected"),
            "published": f.get("published"), "planned": f.get("planned"), "publish_s": f.get("publish_s"),
            "publisher_behind_s": f.get("publisher_behind_s"), "post_p99_ms": f.get("post_p99_ms"),
            "p50_ms": f.get("p50_ms"), "p99_ms": f.get("p99_ms"), "lost": f.get("lost"),
            "idle_connected": i.get("connected"), "idle_clients": i.get("clients"),
            "rss_per_connection_bytes": i.get("rss_per_connection_bytes"),
            "fanout_cpu_per_delivery_us": f.get("cpu_per_delivery_us"),
            "notes": "; ".join(x for x in (errors, problems) if x),
        })
    return out


def print_table(table: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(v: Any, fmt: str = ",.0f") -> str:
        return "—" if v is None else format(v, fmt)

    a = meta["args"]
    t = Table(title=f"fastgw and peers: fanout {a['clients']:,} clients × {a['rate']:g} msg/s × {a['duration']:g} s; "
                    f"idle {a['idle_clients']:,} clients × {a['idle_duration']:g} s  ({meta['started_utc']})")
    t.add_column("server", no_wrap=True)
    t.add_column("protocol")
    t.add_column("deliveries/s", justify="right")
    t.add_column("offered/s", justify="right")
    t.add_column("published\nin s", justify="right")
    t.add_column("p50 ms", justify="right")
    t.add_column("p99 ms", justify="right")
    t.add_column("lost", justify="right")
    t.add_column("idle RSS/conn", justify="right")
    t.add_column("CPU/delivery", justify="right")
    t.add_column("notes", overflow="fold", max_width=50)
    for r in table:
        t.add_row(r["server"], r["protocol"],
                  num(r["deliveries_per_s"]), num(r["offered_deliveries_per_s"]),
                  "—" if r.get("published") is None else
                  f"{r['published']:,}/{r['planned']:,}\n{num(r.get('publish_s'), '.1f')} s",
                  num(r["p50_ms"], ",.2f"), num(r["p99_ms"], ",.2f"), num(r["lost"]),
                  "—" if r["rss_per_connection_bytes"] is None else f"{r['rss_per_connection_bytes'] / 1024:,.1f} KiB",
                  "—" if r["fanout_cpu_per_delivery_us"] is None else f"{r['fanout_cpu_per_delivery_us']:.2f} µs",
                  r["notes"] or "")
    console = Console(width=max(150, Console().width))
    console.print(t)
    console.print(f"published: messages of the planned {a['rate']:g}/s × {a['duration']:g} s, and the seconds "
                  "they took. The publisher sends one POST at a time and every server answers it once the fan-out "
                  "is written, so a server slower than the offered rate is offered less (and stops at the "
                  "loadtest's hard stop, duration + 30 s); lost counts what was published and never arrived "
                  "within the drain timeout. CPU/delivery: server CPU (user+sys) during the fanout run / "
                  "deliveries. idle RSS/conn: (RSS after connecting - before) / clients on a fresh server.",
                  width=min(150, console.width))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clients", type=int, default=1000, help="fanout: subscribers")
    p.add_argument("--rate", type=float, default=10.0, help="fanout: messages per second")
    p.add_argument("--duration", type=float, default=5.0, help="fanout: seconds of publishing")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="fanout: seconds to wait for the last deliveries (then the rest is lost)")
    p.add_argument("--idle-clients", type=int, default=None, help="idle: clients [default: --clients]")
    p.add_argument("--idle-duration", type=float, default=None, help="idle: seconds held [default: --duration]")
    p.add_argument("--channels-per-client", type=int, default=3, help="idle: route/stop channels per client")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from: " + ", ".join(SERVERS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: fanout, idle")
    p.add_argument("--connect-deadline", type=float, default=120.0, help="loadtest: seconds for the connect phase")
    p.add_argument("--attempt-timeout", type=float, default=20.0, help="loadtest: seconds per connection attempt")
    p.add_argument("--report", default=None,
                   help="JSON report [default: benchmarks/results/peers-compare-<UTC time>.json]")
    p.add_argument("--show", default=None, metavar="PATH",
                   help="print the table of a report this script wrote, and run nothing")
    p.add_argument("--workdir", default=None, help="per-run reports and server logs [default: a temporary directory]")
    args = p.parse_args(argv)
    args.idle_clients = args.clients if args.idle_clients is None else args.idle_clients
    args.idle_duration = args.duration if args.idle_duration is None else args.idle_duration
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in names if s not in SERVERS]
    if unknown or not names:
        p.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    args.server_names = names
    scen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scen or any(s not in SCENARIOS for s in scen):
        p.error("--scenarios: fanout, idle")
    args.scenario_names = scen
    if args.clients < 1 or args.idle_clients < 1 or args.rate <= 0 or args.duration < 0 or args.idle_duration < 0:
        p.error("--clients/--idle-clients >= 1, --rate > 0, durations >= 0")
    return args


def show(path: str) -> int:
    data = json.loads(Path(path).read_text())
    for run in data["runs"]:  # from the loadtest's own report: also for reports of an older version of this script
        if run.get("report"):
            run["result"] = summarise(run["scenario"], run["report"])
    print_table(rows(data["runs"], list(data["servers"])), data)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.show)
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    report_path = Path(args.report or ROOT / "benchmarks" / "results" / f"peers-compare-{stamp}.json")
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fastgw-compare-")
        workdir = Path(tmp.name)
    cpus = cpu_plan()
    skipped: dict[str, str] = {}
    if "node-socketio" in args.server_names:
        why = ensure_node()
        if why:
            skipped["node-socketio"] = why
    results: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": [sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv],
        "git_commit": git_commit(),
        "args": {k: v for k, v in vars(args).items() if k not in ("server_names", "scenario_names")},
        "host": {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "pinning": {"server_cpus": sorted(cpus[0]) if cpus[0] else None,
                    "loadtest_cpus": sorted(cpus[1]) if cpus[1] else None},
        "servers": {n: SERVERS[n].description for n in args.server_names},
        "skipped": skipped,
    }
    try:
        for name in args.server_names:
            if name in skipped:
                for scenario in args.scenario_names:
                    results.append({"server": name, "scenario": scenario, "protocol": SERVERS[name].protocol,
                                    "error": "skipped: " + skipped[name]})
                continue
            for scenario in args.scenario_names:
                results.append(run_one(SERVERS[name], scenario, args, cpus, workdir))
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("interrupted: writing what was measured", file=sys.stderr)
    meta["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    table = rows(results, args.server_names)
    print_table(table, meta)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({**meta, "table": table, "runs": results}, indent=1, default=str) + "\n")
    print(f"report: {report_path}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(not e.get("error") for e in results) else 1


if __name__ == "__main__":
    sys.exit(main())
