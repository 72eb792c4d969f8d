"""Helpers of the benchmarks: config, ports, managed processes, the fleet handle, results.

Fixtures live in ``conftest.py``; this module is plain code so that test modules
can import it (``benchmarks/`` is put on ``sys.path`` by ``conftest.py``).

Every process started here is stopped by its pid (SIGINT, SIGTERM, then
SIGKILL, each wait bounded), also when a benchmark fails. Every wait is bounded
in time.

Environment:

* ``FASTGW_BENCH_CONNECTIONS`` (default 10000): WebSocket connections per server.
* ``FASTGW_BENCH_MESSAGES`` (default 10): messages published per round.
* ``FASTGW_BENCH_ROUNDS`` (default 5): measured rounds (one warm-up round on top).
* ``FASTGW_BENCH_SERVER_CPU`` / ``FASTGW_BENCH_FLEET_CPU`` (default: the first
  two CPUs of this process's affinity when it has at least two): pinning; ``-1``
  disables it.
* ``FASTGW_BENCH_RESULTS`` (default ``benchmarks/results/fanout-latest.json``).
* Bursty benchmark only (``test_bench_bursty.py``; ``FASTGW_BENCH_MESSAGES`` is the
  burst size): ``FASTGW_BENCH_WINDOW_MS`` (100), ``FASTGW_BENCH_PERIOD_MS`` (= window),
  ``FASTGW_BENCH_SUSTAIN_SECONDS`` (3; 1 with ``--benchmark-disable``),
  ``FASTGW_BENCH_SUSTAIN_ROUNDS`` (3), ``FASTGW_BENCH_FLEETS`` (1),
  ``FASTGW_BENCH_BURSTY_RESULTS`` (``benchmarks/results/bursty-latest.json``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson as _orjson
import pytest

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
FLEET_SCRIPT = BENCH_DIR / "fleet.py"
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_RESULTS = RESULTS_DIR / "fanout-latest.json"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------- payload

CHANNEL = "route:500-D:UP"


def bench_payload() -> dict:
    """The benchmark's ``location_update``: ~330 bytes of JSON, ~460 bytes once enveloped.

    The schema's required fields plus accuracy, confidence and contributor
    count (a trimmed update; the full one with trip, stop name and distance is
    ~460 bytes on its own). Fixed values, so every run frames the same bytes.
    """
    from fastgw.messages import location_update

    return location_update(
        vehicle_id="KA-57-F-1234",
        route_id="500-D",
        direction="UP",
        latitude=12.917612,
        longitude=77.622791,
        speed=23.4,
        heading=87.5,
        timestamp=1767000000.123,
        accuracy=8.5,
        confidence=0.92,
        contributor_count=3,
    )


# --------------------------------------------------------------------------- config


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


@dataclass(frozen=True)
class BenchConfig:
    connections: int
    messages: int
    rounds: int
    warmup_rounds: int
    server_cpu: int | None
    fleet_cpu: int | None
    connect_timeout: float
    round_timeout: float
    results_path: Path


def _pin_defaults() -> tuple[int | None, int | None]:
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    server = _env_int("FASTGW_BENCH_SERVER_CPU", cpus[0] if len(cpus) >= 2 else -1)
    fleet = _env_int("FASTGW_BENCH_FLEET_CPU", cpus[1] if len(cpus) >= 2 else -1)
    return (server if server >= 0 else None), (fleet if fleet >= 0 else None)


def load_config() -> BenchConfig:
    n = _env_int("FASTGW_BENCH_CONNECTIONS", 10_000)
    m = _env_int("FASTGW_BENCH_MESSAGES", 10)
    if not 1 <= n <= 19_000:
        raise pytest.UsageError("FASTGW_BENCH_CONNECTIONS must be 1..19000 (20,000 open files per process)")
    if m < 1:
        raise pytest.UsageError("FASTGW_BENCH_MESSAGES must be >= 1")
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ImportError, ValueError, OSError):
        hard = -1
    if 0 <= hard < n + 200:
        raise pytest.UsageError(f"FASTGW_BENCH_CONNECTIONS={n} needs more open files than the hard limit ({hard})")
    server_cpu, fleet_cpu = _pin_defaults()
    return BenchConfig(
        connections=n,
        messages=m,
        rounds=max(1, _env_int("FASTGW_BENCH_ROUNDS", 5)),
        warmup_rounds=1,
        server_cpu=server_cpu,
        fleet_cpu=fleet_cpu,
        # 10,000 handshakes take a few seconds; leave a wide margin but stay bounded.
        connect_timeout=30.0 + n / 200.0,
        # Rounds deliver ~100k frames/s; a round that takes 20x longer is broken.
        round_timeout=15.0 + n * m / 5_000.0,
        results_path=Path(os.environ.get("FASTGW_BENCH_RESULTS", str(DEFAULT_RESULTS))),
    )


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    """On-CPU time of a process, all threads, in seconds; 0.0 if unavailable.

    Sums ``/proc/<pid>/task/*/schedstat`` (nanoseconds) and falls back to
    utime + stime of ``/proc/<pid>/stat`` (10 ms ticks).
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_busy_seconds(cpu: int | None) -> float:
    """Busy time of one CPU from /proc/stat (user..steal, softirq included), in seconds.

    Loopback delivery runs in softirq on the writer's core and is not charged
    to the writing process, so this is the complete cost of the server's core.
    """
    if cpu is None:
        return 0.0
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:]]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    busy = sum(v[:8]) - idle  # user nice system idle iowait irq softirq steal
                    return busy / CLK_TCK
    except (OSError, ValueError):
        pass
    return 0.0


def proc_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


def http_get_status(host: str, port: int, path: str, timeout: float = 1.0) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class ManagedProcess:
    """A child process with its output in a log file, stopped by pid with bounded waits."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cpu: int | None = None,
                 log_dir: Path, stdin_pipe: bool = False, stdout_pipe: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            env=env,
            cwd=str(REPO_DIR),
        )
        self.pid = self.proc.pid
        pin(self.pid, cpu)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, limit: int = 3000) -> str:
        try:
            self._log.flush()
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (SIGINT for a clean aiohttp exit), wait, then SIGKILL. Only this pid."""
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                try:  # a fleet exits by itself when its control pipe closes
                    self.proc.stdin.close()
                    self.proc.wait(min(timeout, 3.0))
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.proc.poll() is None:
                for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, timeout / 2)):
                    try:
                        self.proc.send_signal(sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            self._log.close()
        return self.proc.returncode


class Procs:
    """Tracks processes started by one test; the fixture stops all of them (each by pid)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], **kw: Any) -> ManagedProcess:
        p = ManagedProcess(name, argv, log_dir=self.log_dir, **kw)
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        errors = []
        for p in reversed(self.started):
            try:
                p.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{p.name}: {exc!r}")
        self.started.clear()
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


def wait_ready(proc: ManagedProcess, host: str, port: int, path: str = "/readyz", timeout: float = 20.0) -> float:
    """Poll ``GET path`` until 200; returns seconds waited. Fails with the process log on timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.log_tail()}")
        try:
            status = http_get_status(host, port, path, timeout=1.0)
            if status == 200:
                return time.monotonic() - t0
            last = f"HTTP {status}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} not ready after {timeout}s ({last}):\n{proc.log_tail()}")


# --------------------------------------------------------------------------- fleet


class FleetHandle:
    """Line protocol to ``benchmarks/fleet.py`` over the child's stdin/stdout, every read bounded."""

    def __init__(self, proc: ManagedProcess) -> None:
        self.proc = proc
        self._buf = b""

    def send(self, line: str) -> None:
        assert self.proc.proc.stdin is not None
        self.proc.proc.stdin.write((line + "\n").encode())
        self.proc.proc.stdin.flush()

    def read_line(self, timeout: float) -> str:
        out = self.proc.proc.stdout
        assert out is not None
        fd = out.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fleet silent for {timeout:.0f}s:\n{self.proc.log_tail()}")
            r, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"fleet exited ({self.proc.proc.poll()}):\n{self.proc.log_tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, line: str, timeout: float) -> str:
        self.send(line)
        return self.read_line(timeout)

    def connect(self, n: int, timeout: float) -> tuple[int, int, float, str]:
        reply = self.command(f"connect {n}", timeout + 10)
        parts = reply.split(maxsplit=4)
        if parts[0] != "ready":
            raise RuntimeError(f"fleet: {reply}")
        return int(parts[1]), int(parts[2]), float(parts[3]), (parts[4] if len(parts) > 4 else "")

    def arm(self, k: int, timeout: float, open_round: bool = False) -> int:
        """``open_round``: the round is closed by :meth:`retarget` (open-ended publish schedule)."""
        self.send(f"expect {k} {timeout}" + (" open" if open_round else ""))
        reply = self.read_line(10.0)
        if not reply.startswith("armed"):
            raise RuntimeError(f"fleet: {reply}")
        return int(reply.split()[1])

    def retarget(self, k: int) -> tuple[int, int]:
        """Set the running round's goal to ``k`` frames per connection; (reached, armed)."""
        reply = self.command(f"retarget {k}", 10.0)
        if not reply.startswith("retargeted"):
            raise RuntimeError(f"fleet: {reply}")
        reached, armed = reply.split()[1].split("/")
        return int(reached), int(armed)

    def wait_done(self, timeout: float) -> tuple[float | None, str]:
        """(t_last monotonic, raw reply); t_last None on a fleet-side timeout."""
        reply = self.read_line(timeout + 10)
        if reply.startswith("done"):
            return float(reply.split()[1]), reply
        return None, reply

    def stats(self) -> dict[str, str]:
        reply = self.command("stats", 10.0)
        return dict(kv.split("=", 1) for kv in reply.split()[1:])

    def counts(self) -> dict[str, int]:
        """Counted frames per live connection: ``alive``, ``min``, ``max``, ``total``."""
        reply = self.command("counts", 10.0)
        if not reply.startswith("counts"):
            raise RuntimeError(f"fleet: {reply}")
        return {k: int(v) for k, v in (kv.split("=", 1) for kv in reply.split()[1:])}

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def quit(self) -> None:
        try:
            self.command("quit", 10.0)
        except Exception:
            pass


def start_fleet(procs: Procs, cfg: BenchConfig, port: int, path: str, name: str = "fleet",
                extra_args: list[str] | None = None) -> FleetHandle:
    """``extra_args``: more ``fleet.py`` options, e.g. ``["--protocol", "fastgw.v1.zstd"]`` or
    ``["--mode", "socketio", "--connect-packet", ...]``."""
    argv = [
        sys.executable,
        str(FLEET_SCRIPT),
        "--port", str(port),
        "--path", path,
        "--connect-timeout", str(cfg.connect_timeout),
        "--round-timeout", str(cfg.round_timeout),
    ]
    if cfg.fleet_cpu is not None:
        argv += ["--cpu", str(cfg.fleet_cpu)]
    argv += extra_args or []
    proc = procs.start(name, argv, stdin_pipe=True, stdout_pipe=True)
    return FleetHandle(proc)


# --------------------------------------------------------------------------- publisher


class Publisher:
    """One keep-alive HTTP connection firing POSTs back-to-back (each awaits only its 200).

    ``port`` is the server's HTTP (publish) port: for most targets the WebSocket port, for
    ``websockets`` another one; :meth:`for_target` picks the right one."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str], timeout: float) -> None:
        self.path = path
        self.headers = {"Content-Type": "application/json", **headers}
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    @classmethod
    def for_target(cls, target: "Target", timeout: float) -> "Publisher":
        """A publisher to ``target``'s publish endpoint (``target.http_port``, path and headers)."""
        return cls(HOST, target.http_port, target.publish_path, target.headers, timeout=timeout)

    def publish(self, body: bytes) -> dict:
        self.conn.request("POST", self.path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"publish -> HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data) if data else {}

    def get_json(self, path: str) -> dict:
        """``GET path`` on the same keep-alive connection (with the publisher's headers)."""
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} -> HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data) if data else {}

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- results + summary


@dataclass(kw_only=True)
class ServerRun:
    """What a benchmark's result records about one server's run around its rounds."""

    connections: int
    connect_seconds: float = 0.0
    #: WebSocket payload of one delivered message (the fleet's last counted frame)
    frame_payload_bytes: int = 0
    loadavg_before: float = 0.0
    loadavg_after: float = 0.0


@dataclass(kw_only=True)
class ConnectCost(ServerRun):
    """... and what the connect phase cost the server (filled by :func:`connect_measured`)."""

    #: Server CPU per connection during the connect phase (upgrade, auth, welcome, subscribe).
    connect_server_cpu_us_per_conn: float = 0.0
    server_rss_kb_idle: int = 0
    server_rss_kb_connected: int = 0

    @property
    def rss_bytes_per_connection(self) -> int | None:
        if not self.server_rss_kb_connected:
            return None
        return round((self.server_rss_kb_connected - self.server_rss_kb_idle) * 1024 / self.connections)


def connect_measured(result: ConnectCost, target: "Target", fleet: "FleetHandle", cfg: BenchConfig,
                     log_tail) -> str:
    """Connect the fleet's N clients to ``target`` and fill ``result``'s connect-phase figures (idle and
    connected RSS, connect time, server CPU per connection). Returns "" or, when not every client got
    ready, what went wrong (with the server's log tail) for the caller to fail with."""
    n = cfg.connections
    result.server_rss_kb_idle = proc_rss_kb(target.pid)
    cpu_before_connect = proc_cpu_seconds(target.pid)
    ok, failed, secs, err = fleet.connect(n, cfg.connect_timeout)
    if failed or ok != n:
        return (f"{target.name}: only {ok}/{n} connections ready after {secs:.1f}s ({failed} failed; first error "
                f"{err})\nserver log tail:\n{log_tail()}")
    result.connect_seconds = secs
    result.connect_server_cpu_us_per_conn = (proc_cpu_seconds(target.pid) - cpu_before_connect) * 1e6 / n
    time.sleep(0.5)  # let the last subscribes settle before measuring memory
    result.server_rss_kb_connected = proc_rss_kb(target.pid)
    return ""


@dataclass
class FanoutResult(ConnectCost):
    server: str
    messages: int
    #: Per measured round: N*M / (last frame parsed - first trigger fired).
    deliveries_per_s: list[float] = field(default_factory=list)
    #: Per round: server process CPU (user+sys, all threads) / deliveries.
    server_cpu_us_per_delivery: list[float] = field(default_factory=list)
    #: Per round: server CPU seconds / round seconds (near 1.0 = the server was the bottleneck).
    server_cpu_share: list[float] = field(default_factory=list)
    #: Per round: busy time of the server's pinned core (softirq included) / round seconds.
    server_core_busy_share: list[float] = field(default_factory=list)
    #: Per round: busy time of the server's pinned core / deliveries.
    server_core_us_per_delivery: list[float] = field(default_factory=list)
    #: Per round: fleet CPU seconds / round seconds (near 1.0 = the fleet may be limiting).
    fleet_cpu_share: list[float] = field(default_factory=list)
    #: Per round: mean wall time of one publish POST (the servers answer after writing to everybody).
    publish_ms: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.deliveries_per_s) if self.deliveries_per_s else 0.0

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.server_cpu_us_per_delivery) if self.server_cpu_us_per_delivery else 0.0

    def as_dict(self) -> dict[str, Any]:
        med = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
        return {
            "server": self.server,
            "connections": self.connections,
            "messages_per_round": self.messages,
            "rounds": len(self.deliveries_per_s),
            "deliveries_per_s_median": round(self.median),
            "deliveries_per_s": [round(x) for x in self.deliveries_per_s],
            "server_cpu_us_per_delivery_median": med(self.server_cpu_us_per_delivery),
            "server_cpu_us_per_delivery": [round(x, 2) for x in self.server_cpu_us_per_delivery],
            "server_cpu_share_median": med(self.server_cpu_share),
            "server_core_us_per_delivery_median": med(self.server_core_us_per_delivery),
            "server_core_busy_share_median": med(self.server_core_busy_share),
            "fleet_cpu_share_median": med(self.fleet_cpu_share),
            "publish_call_ms_median": med(self.publish_ms),
            "connect_seconds": round(self.connect_seconds, 3),
            "connect_server_cpu_us_per_conn": round(self.connect_server_cpu_us_per_conn, 1),
            "server_rss_kb_idle": self.server_rss_kb_idle,
            "server_rss_kb_connected": self.server_rss_kb_connected,
            "server_rss_bytes_per_connection": self.rss_bytes_per_connection,
            "frame_payload_bytes": self.frame_payload_bytes,
            "loadavg_1min_before_after": [self.loadavg_before, self.loadavg_after],
            "note": self.note,
        }


#: Filled by the fan-out benchmarks, printed and written by the terminal-summary hook.
FANOUT_RESULTS: dict[str, FanoutResult] = {}
#: Terminal summaries of other benchmark modules (e.g. ``test_bench_redis.py``), by title: each is
#: called as ``fn(terminalreporter)`` by ``conftest.pytest_terminal_summary`` after the tables above.
#: Registered with :func:`session_summary`.
SESSION_SUMMARIES: dict[str, Any] = {}

TARGETS = {"fastgw/floor": 0.95, "fastgw/naive": 1.10, "fastgw/websockets": 1.20}  # issue 8
#: The fan-out benchmark's servers in table order (``SERVERS``; others, e.g. ``fastgw-py``, follow).
FANOUT_SERVERS = ("fastgw", "naive", "floor", "websockets")
#: Ratios always listed (n/a when a side did not run); extra servers add theirs against these.
FANOUT_PAIRS = (("fastgw", "floor"), ("fastgw", "naive"), ("fastgw", "websockets"),
                ("naive", "floor"), ("websockets", "floor"))


def loadavg1() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def table_rows(results: dict[str, Any], names: list[str] | tuple[str, ...], width: int, row) -> list[str]:
    """A summary table's lines: ``row(name, result, result.as_dict())`` for each of ``names``, or
    ``(not run)`` where ``results`` has none."""
    return [f"{name:<{width}} {'(not run)':>13}" if (r := results.get(name)) is None else row(name, r, r.as_dict())
            for name in names]


def summary(results: dict[str, FanoutResult]) -> tuple[list[str], dict[str, Any]]:
    """Table lines for the terminal and the JSON document for ``fanout-latest.json``."""

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results and results[b].median > 0 and results[a].median > 0:
            return results[a].median / results[b].median
        return None

    def cpu_ratio(a: str, b: str) -> float | None:  # >1 means a spends less CPU per delivery
        if a in results and b in results and results[a].cpu_median > 0 and results[b].cpu_median > 0:
            return results[b].cpu_median / results[a].cpu_median
        return None

    any_r = next(iter(results.values()))
    lines = [
        f"fan-out: {any_r.connections} connections x {any_r.messages} messages per round "
        f"(frame payload {any_r.frame_payload_bytes} B); medians over the measured rounds",
        f"{'server':<10} {'deliveries/s':>13} {'rounds':>6} {'proc us/dlv':>11} {'core us/dlv':>11} "
        f"{'core busy':>9} {'fleet cpu':>9} {'load1 before/after':>19}",
    ]
    extra = tuple(k for k in results if k not in FANOUT_SERVERS)
    names = FANOUT_SERVERS + extra

    def row(name: str, r: FanoutResult, d: dict[str, Any]) -> str:
        return (
            f"{name:<10} {r.median:>13,.0f} {len(r.deliveries_per_s):>6} "
            f"{d['server_cpu_us_per_delivery_median'] or 0:>11.2f} {d['server_core_us_per_delivery_median'] or 0:>11.2f} "
            f"{d['server_core_busy_share_median'] or 0:>9.2f} {d['fleet_cpu_share_median'] or 0:>9.2f} "
            f"{r.loadavg_before:>9.2f}/{r.loadavg_after:<9.2f}"
            + (f"  [{r.note}]" if r.note else "")
        )

    lines += table_rows(results, names, 10, row)
    lines.append(f"{'connect':<10} {'seconds':>13} {'srv CPU us/conn':>16} {'srv RSS B/conn':>15}")
    for name in names:
        r = results.get(name)
        if r is not None:
            d = r.as_dict()
            lines.append(f"{name:<10} {r.connect_seconds:>13.2f} {r.connect_server_cpu_us_per_conn:>16.0f} "
                         f"{d['server_rss_bytes_per_connection'] or 0:>15}")
    pairs = list(FANOUT_PAIRS)
    pairs += [(k, b) for k in extra for b in ("floor", "naive", "websockets", "fastgw")]
    ratios = {f"{a}/{b}": ratio(a, b) for a, b in pairs}
    cpu_ratios = {f"{a}/{b}": cpu_ratio(a, b) for a, b in pairs}
    kw = max(13, *(len(k) for k in ratios))
    lines.append(f"{'ratio':<{kw}} {'deliveries/s':>12} {'proc CPU/dlv, inverse':>22}")
    for k, v in ratios.items():
        c = cpu_ratios[k]
        tgt = ""
        if k in TARGETS and v is not None:
            tgt = f"   target >= {TARGETS[k]:.2f} on deliveries/s: {'met' if v >= TARGETS[k] else 'not met'}"
        lines.append(f"{k:<{kw}} {('%.3f' % v) if v is not None else 'n/a':>12} "
                     f"{('%.3f' % c) if c is not None else 'n/a':>22}{tgt}")
    doc = {
        **doc_header(),
        "results": {k: v.as_dict() for k, v in results.items()},
        "ratios_deliveries_per_s": {k: (round(v, 4) if v is not None else None) for k, v in ratios.items()},
        "ratios_cpu_per_delivery_inverse": {k: (round(v, 4) if v is not None else None)
                                            for k, v in cpu_ratios.items()},
        "targets": TARGETS,
    }
    return lines, doc


def fastgw_command() -> list[str]:
    """The ``fastgw`` console script of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("fastgw")
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("fastgw")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from fastgw.cli import main; sys.exit(main())"]


def fastgw_available() -> tuple[bool, str]:
    try:
        r = subprocess.run(fastgw_command() + ["serve", "--help"], capture_output=True, timeout=30,
                           cwd=str(REPO_DIR))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, repr(exc)
    if r.returncode != 0:
        return False, (r.stderr or r.stdout).decode("utf-8", "replace")[-500:]
    return True, ""


# --------------------------------------------------------------------------- servers under test

HOST = "127.0.0.1"
JWT_SECRET = "bench-secret-not-for-production-0123456789abcdef"


PUBLISH_BODY = _orjson.dumps({"channel": CHANNEL, "message": bench_payload()})


@dataclass
class Target:
    name: str
    pid: int
    #: the WebSocket port (the fleet connects here)
    port: int
    ws_path: str
    publish_path: str
    headers: dict[str, str]
    info: str = ""  # e.g. fastgw's "core=cython" from its start-up log line
    #: the HTTP port of ``POST publish_path`` (and ``/readyz``) when it is not ``port`` (the
    #: ``websockets`` peer: websockets serves only WebSocket handshakes); None: the same port
    publish_port: int | None = None

    @property
    def http_port(self) -> int:
        """Where the publisher POSTs (and GETs ``/api/stats``): ``publish_port`` or ``port``."""
        return self.publish_port if self.publish_port is not None else self.port


def _fastgw_env() -> dict[str, str]:
    env = dict(os.environ)
    env["FASTGW_JWT_SECRET"] = JWT_SECRET
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _fastgw_token(*extra: str) -> str:
    r = subprocess.run(
        fastgw_command() + ["token", *extra],
        capture_output=True,
        timeout=30,
        env=_fastgw_env(),
    )
    if r.returncode != 0:
        raise RuntimeError(f"fastgw token {' '.join(extra)} failed: {r.stderr.decode(errors='replace')[-500:]}")
    return r.stdout.decode().strip().splitlines()[-1].strip()


class Unavailable(Exception):
    """The server under test cannot be started here (e.g. fastgw not installed yet)."""


def start_fastgw(procs: Procs, cfg: BenchConfig, *, name: str = "fastgw", extra_env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None, ws_query: str = "") -> Target:
    """``fastgw serve`` pinned to the server CPU; ``extra_args`` go to ``serve``, ``ws_query``
    (e.g. ``"&profile=cellular"``) is appended to the clients' ``/ws?token=...``."""
    ok, why = fastgw_available()
    if not ok:
        raise Unavailable(f"`fastgw serve --help` does not work yet: {why.strip()[-200:]}")
    admin = _fastgw_token("--sub", "bench", "--admin")
    client = _fastgw_token("--sub", "u1")
    port = free_port()
    argv = fastgw_command() + [
        "serve", "--host", HOST, "--port", str(port), "--jwt-secret", JWT_SECRET,
        "--no-simulator", "--max-connections", "20000",
        # the fleet connects thousands of clients from one address at once: no load shedding
        "--connect-rate", "0", "--connect-rate-per-ip", "0", "--drain-period", "0",
    ] + (extra_args or [])
    proc = procs.start(name, argv, env={**_fastgw_env(), **(extra_env or {})}, cpu=cfg.server_cpu)
    wait_ready(proc, HOST, port, "/readyz", timeout=30.0)
    found = re.search(r"core=(\w+)", proc.log_tail())
    return Target(name, proc.pid, port, f"/ws?token={client}{ws_query}", "/api/publish",
                  {"Authorization": f"Bearer {admin}"}, info=f"core={found.group(1)}" if found else "")


def start_fastgw_pure_python(procs: Procs, cfg: BenchConfig) -> Target:
    """fastgw with ``FASTGW_NO_EXTENSIONS=1``: the pure-Python hot path (``fastgw._core_py``)."""
    return start_fastgw(procs, cfg, name="fastgw-py", extra_env={"FASTGW_NO_EXTENSIONS": "1"})


def _free_port_other_than(*taken: int, tries: int = 20) -> int:
    for _ in range(tries):
        port = free_port()
        if port not in taken:
            return port
    raise RuntimeError(f"no free port other than {taken}")


def start_peer(script: str, name: str, *, publish_port: bool = False, info: str = "", requires: str = ""):
    """A starter of ``peers/<script>`` (pinned to the server CPU). ``publish_port``: the peer takes
    ``--publish-port`` and serves ``POST /publish`` and ``/readyz`` there, WebSockets on ``--port``.
    ``requires``: a module the peer imports; :class:`Unavailable` when it cannot be found."""

    def start(procs: Procs, cfg: BenchConfig) -> Target:
        if requires:
            import importlib.util

            try:
                found = importlib.util.find_spec(requires) is not None
            except ImportError:
                found = False
            if not found:
                raise Unavailable(f"{name}: module {requires} is not installed")
        port = free_port()
        argv = [sys.executable, str(PEERS_DIR / script), "--host", HOST, "--port", str(port)]
        http_port = None
        if publish_port:
            http_port = _free_port_other_than(port)
            argv += ["--publish-port", str(http_port)]
        proc = procs.start(name, argv, cpu=cfg.server_cpu)
        wait_ready(proc, HOST, http_port or port, "/readyz", timeout=30.0)
        return Target(name, proc.pid, port, "/ws", "/publish", {}, info=info, publish_port=http_port)

    return start


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # not installed: its starter raises Unavailable (the test skips)
        return "?"


#: The four servers of the pytest fan-out benchmark.
SERVERS = {
    "fastgw": start_fastgw,
    "naive": start_peer("naive_aiohttp.py", "naive"),
    "floor": start_peer("floor_writes.py", "floor"),
    # websockets.broadcast: WebSockets on --port, the aiohttp publish endpoint on --publish-port
    "websockets": start_peer("websockets_broadcast.py", "websockets", publish_port=True,
                             info=f"websockets {_version('websockets')}", requires="websockets.asyncio.server"),
}
#: Also selectable in ``interleaved.py``.
EXTRA_SERVERS = {"fastgw-py": start_fastgw_pure_python}


# --------------------------------------------------------------------------- one round

@dataclass
class RoundRecord:
    deliveries_per_s: float
    server_cpu_us_per_delivery: float
    server_cpu_share: float
    fleet_cpu_share: float
    publish_ms: float
    server_core_busy_share: float
    server_core_us_per_delivery: float


def run_round(target: "Target", fleet: FleetHandle, publisher: Publisher, cfg: BenchConfig,
              body: bytes = b"", log_tail=lambda: "") -> RoundRecord:
    """Arm the fleet for M frames per connection, fire M POSTs back-to-back, wait for the last frame."""
    n, m = cfg.connections, cfg.messages
    body = body or PUBLISH_BODY
    armed = fleet.arm(m, cfg.round_timeout)
    if armed != n:
        raise RuntimeError(f"{target.name}: only {armed}/{n} connections alive at round start ({fleet.stats()})")
    s0 = proc_cpu_seconds(target.pid)
    f0 = proc_cpu_seconds(fleet.proc.pid)
    c0 = cpu_busy_seconds(cfg.server_cpu)
    t0 = time.monotonic()
    for i in range(m):
        publish_or_explain(target, fleet, publisher, body, f"{i + 1}/{m}", log_tail)
    t_pub = time.monotonic()
    t_last, reply = fleet.wait_done(cfg.round_timeout)
    if t_last is None:
        raise RuntimeError(f"{target.name}: round did not complete: {reply}; fleet {fleet.stats()}\n"
                           f"server log tail:\n{log_tail()}")
    s1 = proc_cpu_seconds(target.pid)
    f1 = proc_cpu_seconds(fleet.proc.pid)
    c1 = cpu_busy_seconds(cfg.server_cpu)
    elapsed = max(t_last - t0, 1e-9)
    d = n * m
    return RoundRecord(d / elapsed, (s1 - s0) * 1e6 / d, (s1 - s0) / elapsed, (f1 - f0) / elapsed,
                       (t_pub - t0) * 1e3 / m, (c1 - c0) / elapsed, (c1 - c0) * 1e6 / d)


def publish_or_explain(target: Target, fleet: "FleetHandle | FleetGroup", publisher: Publisher, body: bytes,
                       what: str, log_tail) -> None:
    """``publisher.publish(body)``; on failure a RuntimeError that says whether the server still runs, the
    fleet's stats and the server's log tail (``what``: which publish, e.g. ``"3/10"``)."""
    try:
        publisher.publish(body)
    except (OSError, http.client.HTTPException, RuntimeError) as exc:
        alive = "alive" if _pid_alive(target.pid) else "NOT RUNNING"
        raise RuntimeError(f"{target.name}: publish {what} failed: {exc!r}; server pid {target.pid} {alive}; "
                           f"fleet {fleet.stats()}\nserver log tail:\n{log_tail()}") from exc


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def fill_result(result: FanoutResult, records: list[RoundRecord], cfg: BenchConfig) -> None:
    result.deliveries_per_s = [r.deliveries_per_s for r in records]
    result.server_cpu_us_per_delivery = [r.server_cpu_us_per_delivery for r in records]
    result.server_cpu_share = [r.server_cpu_share for r in records]
    result.fleet_cpu_share = [r.fleet_cpu_share for r in records]
    result.publish_ms = [r.publish_ms for r in records]
    if cfg.server_cpu is not None:
        result.server_core_busy_share = [r.server_core_busy_share for r in records]
        result.server_core_us_per_delivery = [r.server_core_us_per_delivery for r in records]


# --------------------------------------------------------------------------- metered rounds
#
# What a round costs the server (process CPU, its pinned core, ksoftirqd of that core) and the
# fleet, for the benchmarks that report it per delivery (bursty, Socket.IO).


def ksoftirqd_pid(cpu: int | None) -> int | None:
    """pid of the ``ksoftirqd/<cpu>`` kernel thread (softirq work deferred off the server process)."""
    if cpu is None:
        return None
    want = f"ksoftirqd/{cpu}\n"
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/comm") as f:
                        if f.read() == want:
                            return int(entry)
                except OSError:
                    continue
    except OSError:
        pass
    return None


class Meter:
    """Server process CPU, server core busy, fleet CPU, ksoftirqd of the server core and wall time
    between start() and stop(); ``fleets`` is anything with ``cpu_seconds()``."""

    def __init__(self, target: Target, fleets: "FleetHandle | FleetGroup", cfg: BenchConfig,
                 ksoftirqd: int | None) -> None:
        self.target, self.fleets, self.cfg, self.ksoftirqd = target, fleets, cfg, ksoftirqd

    def _ksoft(self) -> float:
        return proc_cpu_seconds(self.ksoftirqd) if self.ksoftirqd else 0.0

    def start(self) -> float:
        self.s0 = proc_cpu_seconds(self.target.pid)
        self.f0 = self.fleets.cpu_seconds()
        self.c0 = cpu_busy_seconds(self.cfg.server_cpu)
        self.k0 = self._ksoft()
        self.t0 = time.monotonic()
        return self.t0

    def stop(self) -> tuple[float, float, float, float]:
        """(server CPU s, fleet CPU s, server core busy s, ksoftirqd s) since start()."""
        return (proc_cpu_seconds(self.target.pid) - self.s0, self.fleets.cpu_seconds() - self.f0,
                cpu_busy_seconds(self.cfg.server_cpu) - self.c0, self._ksoft() - self.k0)


@dataclass
class MeteredRecord:
    """One round's figures from a :class:`Meter` (fields shared by the per-benchmark records)."""

    seconds: float
    deliveries_per_s: float
    server_cpu_us_per_delivery: float
    server_cpu_share: float
    server_core_us_per_delivery: float
    server_core_busy_share: float
    #: share of the round the server core spent on other work than the server process
    #: (core busy - server process CPU): softirq (loopback delivery), ksoftirqd, other processes
    server_core_other_share: float
    #: share of the round that ksoftirqd/<server cpu> ran (deferred softirq: part of "other")
    ksoftirqd_share: float
    fleet_cpu_share: float
    #: mean wall time of one publish POST
    publish_ms: float


def metered(meas: tuple[float, float, float, float], elapsed: float, deliveries: int,
            server_cpu: int | None) -> dict[str, float]:
    """The :class:`MeteredRecord` fields but ``publish_ms`` from :meth:`Meter.stop`'s figures over a round
    of ``elapsed`` seconds that delivered ``deliveries`` frames."""
    srv, flt, core, ksoft = meas
    d = max(deliveries, 1)
    return dict(
        seconds=elapsed, deliveries_per_s=deliveries / elapsed,
        server_cpu_us_per_delivery=srv * 1e6 / d, server_cpu_share=srv / elapsed,
        server_core_us_per_delivery=core * 1e6 / d, server_core_busy_share=core / elapsed,
        server_core_other_share=(core - srv) / elapsed if server_cpu is not None else 0.0,
        ksoftirqd_share=ksoft / elapsed, fleet_cpu_share=flt / elapsed,
    )


class RecordMedians:
    """Medians over ``self.records`` (round records) for a result dataclass."""

    def med(self, attr: str) -> float:
        xs = [getattr(r, attr) for r in self.records]
        return statistics.median(xs) if xs else 0.0

    @property
    def median(self) -> float:
        return self.med("deliveries_per_s")

    def medians(self, *attrs: str) -> dict[str, float]:
        """``{"<attr>_median": median rounded to 3 places}`` in the order given."""
        return {f"{a}_median": round(self.med(a), 3) for a in attrs}

    def rate_and_cpu(self) -> dict[str, Any]:
        """deliveries/s and server CPU per delivery: the medians and every round's figure."""
        return {
            "deliveries_per_s_median": round(self.median),
            "deliveries_per_s": [round(r.deliveries_per_s) for r in self.records],
            "server_cpu_us_per_delivery_median": round(self.med("server_cpu_us_per_delivery"), 3),
            "server_cpu_us_per_delivery": [round(r.server_cpu_us_per_delivery, 2) for r in self.records],
        }


# =========================================================================== bursty fan-out
#
# ``test_bench_bursty.py``: bursts of M messages (distinct vehicles) to N
# connections, against the floor, fastgw's cellular profile (flush window: one
# write per connection per window), the same with zstd, and the full profile
# (with and without permessage-deflate). Single bursts and a sustained publish
# schedule; several fleet processes if asked (``FASTGW_BENCH_FLEETS``).

DEFAULT_BURSTY_RESULTS = RESULTS_DIR / "bursty-latest.json"
from fastgw.profiles import ZSTD_SUBPROTOCOL  # noqa: E402  (the server's own constant)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


@dataclass(frozen=True)
class BurstyConfig:
    #: messages per burst (``FASTGW_BENCH_MESSAGES``, default 10)
    burst: int
    #: the cellular flush window, ms, passed as ``--window-cellular`` (``FASTGW_BENCH_WINDOW_MS``, 100)
    window_ms: int
    #: seconds between burst starts in the sustained phase (``FASTGW_BENCH_PERIOD_MS``, default: the window)
    period: float
    #: how long the sustained phase publishes (``FASTGW_BENCH_SUSTAIN_SECONDS``; 3.0, 1.0 in smoke mode)
    sustain_seconds: float
    #: measured sustained runs per case (``FASTGW_BENCH_SUSTAIN_ROUNDS``, 3; one warm-up run on top)
    sustain_rounds: int
    #: fleet processes sharing the N connections, all on the fleet CPU (``FASTGW_BENCH_FLEETS``, 1)
    fleets: int
    results_path: Path


def load_bursty_config(cfg: BenchConfig, smoke: bool) -> BurstyConfig:
    window_ms = _env_int("FASTGW_BENCH_WINDOW_MS", 100)
    if window_ms < 1:
        raise pytest.UsageError("FASTGW_BENCH_WINDOW_MS must be >= 1")
    fleets = _env_int("FASTGW_BENCH_FLEETS", 1)
    if not 1 <= fleets <= 8 or fleets > cfg.connections:
        raise pytest.UsageError("FASTGW_BENCH_FLEETS must be 1..8 (and at most the connections)")
    period_ms = _env_float("FASTGW_BENCH_PERIOD_MS", float(window_ms))
    if not 1 <= period_ms <= 10_000:
        raise pytest.UsageError("FASTGW_BENCH_PERIOD_MS must be 1..10000")
    sustain = _env_float("FASTGW_BENCH_SUSTAIN_SECONDS", 1.0 if smoke else 3.0)
    if not 0 < sustain <= 120:
        raise pytest.UsageError("FASTGW_BENCH_SUSTAIN_SECONDS must be in (0, 120]")
    return BurstyConfig(
        burst=cfg.messages,
        window_ms=window_ms,
        period=period_ms / 1000.0,
        sustain_seconds=sustain,
        sustain_rounds=max(1, _env_int("FASTGW_BENCH_SUSTAIN_ROUNDS", 3)),
        fleets=fleets,
        results_path=Path(os.environ.get("FASTGW_BENCH_BURSTY_RESULTS", str(DEFAULT_BURSTY_RESULTS))),
    )


_VEHICLE_IN_BODY = b'"KA-57-F-1234"'


def bursty_body(seq: int) -> bytes:
    """``PUBLISH_BODY`` with a vehicle id unique to ``seq`` (same length: ``KA-000000042``).

    Every message of a run has its own vehicle, so the cellular profile's
    conflation (newer update of the same vehicle replaces the older one inside
    a window) never removes a delivery the fleet is waiting for, even when a
    saturated server's windows span more than one burst.
    """
    return PUBLISH_BODY.replace(_VEHICLE_IN_BODY, b'"KA-%09d"' % (seq % 1_000_000_000))


assert _VEHICLE_IN_BODY in PUBLISH_BODY and len(bursty_body(1)) == len(PUBLISH_BODY)


class FleetGroup:
    """One or more fleet processes sharing the N connections, used like one fleet."""

    def __init__(self, handles: list[FleetHandle]) -> None:
        self.handles = handles

    @property
    def pids(self) -> list[int]:
        return [h.proc.pid for h in self.handles]

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def connect(self, n: int, timeout: float) -> tuple[int, int, float, str]:
        k = len(self.handles)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        for h, share in zip(self.handles, shares):  # all fleets connect at the same time
            h.send(f"connect {share}")
        ok = failed = 0
        secs = 0.0
        err = ""
        for h in self.handles:
            reply = h.read_line(timeout + 10)
            parts = reply.split(maxsplit=4)
            if parts[0] != "ready":
                raise RuntimeError(f"fleet: {reply}")
            ok += int(parts[1])
            failed += int(parts[2])
            secs = max(secs, float(parts[3]))
            err = err or (parts[4] if len(parts) > 4 else "")
        return ok, failed, secs, err

    def arm(self, k: int, timeout: float, open_round: bool = False) -> int:
        for h in self.handles:
            h.send(f"expect {k} {timeout}" + (" open" if open_round else ""))
        armed = 0
        for h in self.handles:
            reply = h.read_line(10.0)
            if not reply.startswith("armed"):
                raise RuntimeError(f"fleet: {reply}")
            armed += int(reply.split()[1])
        return armed

    def retarget(self, k: int) -> int:
        return sum(h.retarget(k)[0] for h in self.handles)

    def wait_done(self, timeout: float) -> tuple[float | None, str]:
        """Max of the fleets' t_last (None if any timed out) and their replies."""
        deadline = time.monotonic() + timeout + 10
        t_last: float | None = 0.0
        replies = []
        for h in self.handles:
            t, reply = h.wait_done(max(0.1, deadline - time.monotonic() - 10))
            replies.append(reply)
            if t is None:
                t_last = None
            elif t_last is not None:
                t_last = max(t_last, t)
        return t_last, " | ".join(replies)

    def stats(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for h in self.handles:
            for key, value in h.stats().items():
                try:
                    total[key] = total.get(key, 0) + float(value)
                except ValueError:
                    pass
        return total

    def quit(self) -> None:
        for h in self.handles:
            h.quit()


def start_fleet_group(procs: Procs, cfg: BenchConfig, k: int, port: int, path: str, name: str,
                      extra_args: list[str] | None = None) -> FleetGroup:
    if k == 1:
        return FleetGroup([start_fleet(procs, cfg, port, path, name=name, extra_args=extra_args)])
    return FleetGroup([start_fleet(procs, cfg, port, path, name=f"{name}-{i + 1}", extra_args=extra_args)
                       for i in range(k)])


@dataclass(frozen=True)
class BurstyCase:
    name: str
    #: what the case stands for (summary and JSON)
    about: str
    #: ``fleet.py`` options (subprotocol / extension offered)
    fleet_args: tuple[str, ...] = ()


BURSTY_CASES: dict[str, BurstyCase] = {
    c.name: c
    for c in (
        BurstyCase("floor", "peers/floor_writes.py: one pre-built frame, one transport.write per subscriber "
                            "per message (the raw unbatched limit)"),
        BurstyCase("fastgw-cellular", "fastgw, ?profile=cellular (flush window), JSON text frames"),
        BurstyCase("fastgw-cellular-zstd", "fastgw, ?profile=cellular + subprotocol fastgw.v1.zstd "
                                           "(binary zstd frames)", ("--protocol", ZSTD_SUBPROTOCOL)),
        BurstyCase("fastgw-full", "fastgw, default profile (no window; = the fan-out benchmark's fastgw)"),
        BurstyCase("fastgw-full-deflate", "fastgw, default profile + permessage-deflate (RSV1 text frames)",
                   ("--extensions", "permessage-deflate")),
    )
}


def start_bursty_server(case: str, procs: Procs, cfg: BenchConfig, bcfg: BurstyConfig) -> Target:
    if case == "floor":
        return start_peer("floor_writes.py", "floor")(procs, cfg)
    window = ["--window-cellular", str(bcfg.window_ms)]
    if case.startswith("fastgw-cellular"):
        return start_fastgw(procs, cfg, name=case, extra_args=window, ws_query="&profile=cellular")
    if case.startswith("fastgw-full"):
        return start_fastgw(procs, cfg, name=case)
    raise ValueError(f"unknown bursty case {case!r}")


@dataclass
class BurstRecord(MeteredRecord):
    deliveries: int
    bursts: int
    #: WebSocket bytes read by the fleet (frame headers + payloads) per delivery
    wire_bytes_per_delivery: float
    #: frames per socket write on batching connections (fastgw: deliveries / batch_writes), else 0
    frames_per_write: float
    #: sustained: how late the last burst started against its schedule, ms
    last_burst_late_ms: float
    #: frames counted by the fleet beyond the expected ones (should be 0)
    extra_frames: int


def _batch_writes(target: Target, publisher: Publisher) -> int | None:
    if not target.name.startswith("fastgw"):
        return None
    try:
        return int(publisher.get_json("/api/stats").get("batch_writes", 0))
    except (OSError, http.client.HTTPException, RuntimeError, ValueError):
        return None


class BurstRunner:
    """Single bursts and sustained schedules against one server and its fleet(s)."""

    def __init__(self, target: Target, fleets: FleetGroup, publisher: Publisher, cfg: BenchConfig,
                 bcfg: BurstyConfig, log_tail=lambda: "") -> None:
        self.target, self.fleets, self.publisher = target, fleets, publisher
        self.cfg, self.bcfg, self.log_tail = cfg, bcfg, log_tail
        self.seq = 0
        self.n = cfg.connections
        self.ksoftirqd = ksoftirqd_pid(cfg.server_cpu)

    def _body(self) -> bytes:
        self.seq += 1
        return bursty_body(self.seq)

    def _record(self, meas: tuple[float, float, float, float], t0: float, t_last: float, deliveries: int,
                bursts: int, publishes: int,
                publish_secs: float, st0: dict, st1: dict, bw0: int | None, bw1: int | None,
                late: float) -> BurstRecord:
        elapsed = max(t_last - t0, 1e-9)
        frames = int(st1.get("frames", 0) - st0.get("frames", 0))
        rx = st1.get("rx_bytes", 0) - st0.get("rx_bytes", 0)
        fpw = 0.0
        if bw0 is not None and bw1 is not None and bw1 > bw0:
            fpw = deliveries / (bw1 - bw0)
        return BurstRecord(
            **metered(meas, elapsed, deliveries, self.cfg.server_cpu), deliveries=deliveries, bursts=bursts,
            wire_bytes_per_delivery=rx / max(frames, 1), publish_ms=publish_secs * 1e3 / max(publishes, 1),
            frames_per_write=fpw, last_burst_late_ms=late * 1e3, extra_frames=frames - deliveries,
        )

    def _wait(self, timeout: float) -> float:
        t_last, reply = self.fleets.wait_done(timeout)
        if t_last is None:
            raise RuntimeError(f"{self.target.name}: round did not complete: {reply}; fleet {self.fleets.stats()}\n"
                               f"server log tail:\n{self.log_tail()}")
        return t_last

    def single_burst(self) -> BurstRecord:
        """M publishes back-to-back; from before the first POST to the last frame (window wait included)."""
        m = self.bcfg.burst
        bodies = [self._body() for _ in range(m)]
        st0 = self.fleets.stats()
        bw0 = _batch_writes(self.target, self.publisher)
        timeout = self.cfg.round_timeout + self.bcfg.period
        armed = self.fleets.arm(m, timeout)
        if armed != self.n:
            raise RuntimeError(f"{self.target.name}: only {armed}/{self.n} connections alive at round start")
        meter = Meter(self.target, self.fleets, self.cfg, self.ksoftirqd)
        t0 = meter.start()
        for i, body in enumerate(bodies):
            publish_or_explain(self.target, self.fleets, self.publisher, body, f"{i + 1}/{m}", self.log_tail)
        t_pub = time.monotonic()
        t_last = self._wait(timeout)
        rec_args = (meter.stop(), t0, t_last, self.n * m, 1, m, t_pub - t0)
        st1 = self.fleets.stats()
        bw1 = _batch_writes(self.target, self.publisher)
        return self._record(*rec_args, st0, st1, bw0, bw1, 0.0)

    def sustained(self) -> BurstRecord:
        """A burst of M every ``period`` for ``sustain_seconds`` (bursts that would start later are not
        sent; a burst is never cut), then wait until the fleet has all of them."""
        m, period, duration = self.bcfg.burst, self.bcfg.period, self.bcfg.sustain_seconds
        max_bursts = max(1, round(duration / period))
        st0 = self.fleets.stats()
        bw0 = _batch_writes(self.target, self.publisher)
        # Bounded: the publish phase, then a drain at >= 20k deliveries/s (10x slower than the slowest case).
        drain = 15.0 + self.n * m * max_bursts / 20_000.0
        armed = self.fleets.arm(1 << 40, duration + 30.0 + drain, open_round=True)
        if armed != self.n:
            raise RuntimeError(f"{self.target.name}: only {armed}/{self.n} connections alive at round start")
        meter = Meter(self.target, self.fleets, self.cfg, self.ksoftirqd)
        t0 = meter.start()
        bursts = 0
        late = 0.0
        publish_secs = 0.0
        for b in range(max_bursts):
            due = t0 + b * period
            now = time.monotonic()
            if now - t0 >= duration:
                break
            if due > now:
                time.sleep(due - now)
            start = time.monotonic()
            late = max(0.0, start - due)
            for i in range(m):
                publish_or_explain(self.target, self.fleets, self.publisher, self._body(),
                                    f"{i + 1}/{m} of burst {b + 1}", self.log_tail)
            publish_secs += time.monotonic() - start
            bursts += 1
        self.fleets.retarget(bursts * m)
        t_last = self._wait(drain)
        rec_args = (meter.stop(), t0, t_last, self.n * m * bursts, bursts, bursts * m, publish_secs)
        st1 = self.fleets.stats()
        bw1 = _batch_writes(self.target, self.publisher)
        return self._record(*rec_args, st0, st1, bw0, bw1, late)


@dataclass
class BurstyResult(ServerRun, RecordMedians):
    case: str
    mode: str  # "single" or "sustained"
    burst: int
    records: list[BurstRecord] = field(default_factory=list)
    fleets: int = 1
    note: str = ""

    @property
    def cpu_median(self) -> float:
        return self.med("server_cpu_us_per_delivery")

    @property
    def core_capacity(self) -> float:
        """Deliveries per second of server-core busy time (1e6 / core us per delivery): what the
        server would deliver with its core fully busy at the same frames per write. Equals
        deliveries/s when the server is saturated; above it when the publish schedule limits."""
        core = self.med("server_core_us_per_delivery")
        return 1e6 / core if core > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        r3 = lambda x: round(x, 3)  # noqa: E731
        return {
            "case": self.case,
            "about": BURSTY_CASES[self.case].about if self.case in BURSTY_CASES else "",
            "mode": self.mode,
            "connections": self.connections,
            "messages_per_burst": self.burst,
            "fleet_processes": self.fleets,
            "rounds": len(self.records),
            **self.rate_and_cpu(),
            "server_core_us_per_delivery_median": r3(self.med("server_core_us_per_delivery")),
            "deliveries_per_core_second": round(self.core_capacity),
            **self.medians("server_cpu_share", "server_core_busy_share", "server_core_other_share",
                           "ksoftirqd_share", "fleet_cpu_share"),
            "wire_bytes_per_delivery_median": round(self.med("wire_bytes_per_delivery"), 1),
            "frames_per_write_median": round(self.med("frames_per_write"), 2),
            "publish_call_ms_median": r3(self.med("publish_ms")),
            "round_seconds": [r3(r.seconds) for r in self.records],
            "bursts": [r.bursts for r in self.records],
            "last_burst_late_ms": [round(r.last_burst_late_ms, 1) for r in self.records],
            "extra_frames": [r.extra_frames for r in self.records],
            "connect_seconds": r3(self.connect_seconds),
            "frame_payload_bytes_last": self.frame_payload_bytes,
            "loadavg_1min_before_after": [self.loadavg_before, self.loadavg_after],
            "note": self.note,
        }


#: Filled by ``test_bench_bursty.py`` (key ``"<mode>:<case>"``), printed/written by the terminal summary.
BURSTY_RESULTS: dict[str, BurstyResult] = {}
#: Sustained deliveries/s against the floor (the issue's target), and CPU per delivery compressed/uncompressed.
BURSTY_TARGETS = {"fastgw-cellular/floor": 4.0, "fastgw-cellular-zstd/floor": 4.0}
BURSTY_CPU_TARGETS = {"fastgw-cellular-zstd/fastgw-cellular": 1.10}


def bursty_summary(results: dict[str, BurstyResult], bcfg: BurstyConfig | None = None
                   ) -> tuple[list[str], dict[str, Any]]:
    any_r = next(iter(results.values()))
    head = (f"bursty fan-out: {any_r.connections} connections, bursts of {any_r.burst} distinct vehicles, "
            f"{any_r.fleets} fleet process(es)")
    if bcfg is not None:
        head += (f"; cellular window {bcfg.window_ms} ms; sustained: a burst every {bcfg.period * 1e3:g} ms "
                 f"for {bcfg.sustain_seconds:g} s")
    lines = [head + "; medians over the measured rounds",
             f"{'mode':<9} {'case':<21} {'deliveries/s':>13} {'rnds':>4} {'proc us/dlv':>11} {'core us/dlv':>11} "
             f"{'dlv/core-s':>10} {'srv cpu':>7} {'other':>5} {'fleet cpu':>9} {'B/dlv':>6} {'frm/write':>9} "
             f"{'POST ms':>7} {'bursts':>6}"]
    order = [f"{mode}:{case}" for mode in ("single", "sustained") for case in BURSTY_CASES]
    order += [k for k in results if k not in order]
    for key in order:
        r = results.get(key)
        if r is None:
            continue
        lines.append(
            f"{r.mode:<9} {r.case:<21} {r.median:>13,.0f} {len(r.records):>4} {r.cpu_median:>11.2f} "
            f"{r.med('server_core_us_per_delivery'):>11.2f} {r.core_capacity:>10,.0f} "
            f"{r.med('server_cpu_share'):>7.2f} "
            f"{r.med('server_core_other_share'):>5.2f} "
            f"{r.med('fleet_cpu_share'):>9.2f} {r.med('wire_bytes_per_delivery'):>6.0f} "
            f"{r.med('frames_per_write'):>9.1f} {r.med('publish_ms'):>7.2f} {r.med('bursts'):>6.0f}"
            + (f"  [{r.note}]" if r.note else "")
        )

    lines.append("columns: proc/core us/dlv = server process CPU / server core busy (softirq included) per "
                 "delivery; dlv/core-s = 1e6 / core us/dlv (capacity at the same batching if the core were "
                 "fully busy); srv cpu = server process CPU share of the round; other = (core busy - server "
                 "process) share; fleet cpu = fleet CPU share (~1.0: the fleet limits); B/dlv = WebSocket "
                 "bytes read per delivery; frm/write = deliveries per batched socket write")

    def get(mode: str, case: str) -> BurstyResult | None:
        r = results.get(f"{mode}:{case}")
        return r if r is not None and r.records else None

    ratios: dict[str, dict[str, float | None]] = {}
    cap_ratios: dict[str, dict[str, float | None]] = {}
    cpu_ratios: dict[str, dict[str, float | None]] = {}
    for mode in ("single", "sustained"):
        ratios[mode] = {}
        cap_ratios[mode] = {}
        for a in ("fastgw-cellular", "fastgw-cellular-zstd", "fastgw-full", "fastgw-full-deflate"):
            ra, rb = get(mode, a), get(mode, "floor")
            ratios[mode][f"{a}/floor"] = ra.median / rb.median if ra and rb and rb.median else None
            cap_ratios[mode][f"{a}/floor"] = (ra.core_capacity / rb.core_capacity
                                              if ra and rb and rb.core_capacity else None)
        cpu_ratios[mode] = {}
        for a, b in (("fastgw-cellular-zstd", "fastgw-cellular"), ("fastgw-full-deflate", "fastgw-full"),
                     ("fastgw-cellular", "floor"), ("fastgw-full", "floor")):
            ra, rb = get(mode, a), get(mode, b)
            cpu_ratios[mode][f"{a}/{b}"] = ra.cpu_median / rb.cpu_median if ra and rb and rb.cpu_median else None
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(f"{'ratio (deliveries/s)':<33} {'single':>8} {'sustained':>10}")
    for k in ratios["sustained"]:
        tgt = ""
        if k in BURSTY_TARGETS and ratios["sustained"][k] is not None:
            t = BURSTY_TARGETS[k]
            tgt = f"   target >= {t:g} (sustained): {'met' if ratios['sustained'][k] >= t else 'not met'}"
            ra = get("sustained", k.split("/")[0])
            if ra is not None and ra.med("server_core_busy_share") < 0.9:
                tgt += (f" (server core busy {ra.med('server_core_busy_share'):.2f}: the publish schedule, "
                        f"not the server, set this figure; a lower bound)")
        lines.append(f"{k:<33} {fmt(ratios['single'][k]):>8} {fmt(ratios['sustained'][k]):>10}{tgt}")
    lines.append(f"{'ratio (deliveries/core-s)':<33} {'single':>8} {'sustained':>10}")
    for k in cap_ratios["sustained"]:
        lines.append(f"{k:<33} {fmt(cap_ratios['single'][k]):>8} {fmt(cap_ratios['sustained'][k]):>10}")
    lines.append(f"{'ratio (server CPU us/delivery)':<33} {'single':>8} {'sustained':>10}")
    for k in cpu_ratios["sustained"]:
        tgt = ""
        if k in BURSTY_CPU_TARGETS and cpu_ratios["sustained"][k] is not None:
            t = BURSTY_CPU_TARGETS[k]
            tgt = f"   target <= {t:g} (sustained): {'met' if cpu_ratios['sustained'][k] <= t else 'not met'}"
        lines.append(f"{k:<33} {fmt(cpu_ratios['single'][k]):>8} {fmt(cpu_ratios['sustained'][k]):>10}{tgt}")
    rnd = lambda d: {k: (round(v, 4) if v is not None else None) for k, v in d.items()}  # noqa: E731
    doc = {
        **doc_header(),
        "config": ({"window_ms": bcfg.window_ms, "period_s": bcfg.period, "sustain_seconds": bcfg.sustain_seconds,
                    "sustain_rounds": bcfg.sustain_rounds, "fleets": bcfg.fleets} if bcfg else {}),
        "results": {k: v.as_dict() for k, v in results.items()},
        "ratios_deliveries_per_s": {m: rnd(v) for m, v in ratios.items()},
        "ratios_deliveries_per_core_second": {m: rnd(v) for m, v in cap_ratios.items()},
        "ratios_cpu_per_delivery": {m: rnd(v) for m, v in cpu_ratios.items()},
        "targets": {"deliveries_per_s_sustained_min": BURSTY_TARGETS,
                    "cpu_per_delivery_sustained_max": BURSTY_CPU_TARGETS},
    }
    return lines, doc


def doc_header() -> dict[str, Any]:
    """The first keys of a results document: when, the command, the ``FASTGW_BENCH_*`` settings, the machine."""
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "env": {k: v for k, v in os.environ.items() if k.startswith("FASTGW_BENCH_")},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform,
                    "kernel": os.uname().release},
    }


def report(terminalreporter, title: str, lines: list[str], doc: dict, path: Path | None) -> None:
    """Print a summary table under ``title`` and write its results document to ``path`` (if any)."""
    terminalreporter.write_sep("=", title)
    for line in lines:
        terminalreporter.write_line(line)
    if path is not None:
        write_results(terminalreporter, path, doc)


def session_summary(title: str, path_env: str, default_path: Path):
    """Decorator: ``fn() -> (lines, doc)``, or None when there is nothing to report, becomes the session
    summary ``title`` (printed by ``conftest.py`` and written to ``$path_env`` or ``default_path``);
    registering the same title again replaces it."""

    def register(fn):
        def print_and_write(terminalreporter) -> None:
            out = fn()
            if out is not None:
                report(terminalreporter, title, *out, Path(os.environ.get(path_env, str(default_path))))

        SESSION_SUMMARIES[title] = print_and_write
        return fn

    return register


def write_results(terminalreporter, path: Path, doc: dict) -> None:
    """Write a results document atomically and say where (or why not) on the terminal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
        terminalreporter.write_line(f"written to {path}")
    except OSError as exc:
        terminalreporter.write_line(f"could not write {path}: {exc}")
