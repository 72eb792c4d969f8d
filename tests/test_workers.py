"""``fastgw serve --workers N``: a supervisor and N worker processes sharing one port.

Real processes, real sockets on 127.0.0.1, a real redis-server (the ``redis_url`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fastgw.config import Config
from fastgw.workers import Supervisor, describe_exit, serve_argv
from tests.conftest import SECRET, wait_until

CHANNEL = "route:335E:UP"
LISTENING = "fastgw listening on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}, **extra}


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has already closed its sockets: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def until(predicate, timeout: float, what: str, interval: float = 0.05):
    return await wait_until(predicate, what, timeout, interval)


class Workers:
    """``python -m fastgw serve --workers N ...`` in a session of its own, output to a file."""

    def __init__(self, log: Path, *args: str, workers: int = 2, **env: str) -> None:
        self.port = free_port()
        self.workers = workers
        self.log = log
        argv = [sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(workers), *args]
        with open(log, "wb") as out:
            # own session: the test can send a terminal-style SIGINT to the whole group
            self.proc = subprocess.Popen(argv, env=clean_env(**env), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.seen_children: set[int] = set()

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> set[int]:
        pids: set[int] = set()
        try:
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{task}/children") as f:
                    pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # the supervisor is gone
            pass
        live = {pid for pid in pids if alive(pid)}
        self.seen_children |= live
        return live

    def node_of(self, pid: int) -> str:
        match = re.search(rf"worker \d+ \(pid {pid}, node (\w+)\)", self.output())
        assert match, f"no start line of worker pid {pid}:\n{self.output()}"
        return match.group(1)

    async def wait_serving(self, listening: int | None = None, timeout: float = 30.0) -> None:
        """Until N workers run and ``listening`` "fastgw listening" lines were logged (N by default)."""
        wanted = self.workers if listening is None else listening

        def ready() -> bool:
            assert self.proc.poll() is None, f"supervisor exited {self.proc.returncode}:\n{self.output()}"
            return len(self.children()) == self.workers and self.output().count(LISTENING) >= wanted

        try:
            await until(ready, timeout, f"{self.workers} workers serving")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.output()}") from None

    async def nodes(self, requests: int = 40) -> list[str]:
        """Node ids answering ``requests`` fresh connections to /healthz (each must succeed)."""
        seen = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(requests):
                async with s.get(f"http://{self.base}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    body = await r.json()
                    assert r.status == 200 and body["status"] == "ok", body
                    seen.append(body["node"])
        return seen

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s:\n{self.output()}") from None

    def kill_all(self) -> None:
        """Teardown: whatever is left of the supervisor and its workers, SIGKILL."""
        leftovers = self.children() | {pid for pid in self.seen_children if alive(pid)}
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def start_workers(tmp_path):
    started: list[Workers] = []

    def start(*args: str, **kwargs) -> Workers:
        w = Workers(tmp_path / f"workers{len(started)}.log", *args, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill_all()


async def welcome(ws: ClientConnection) -> dict:
    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert frame["type"] == "welcome", frame
    return frame


async def close_code(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read until the server closes the connection; its close code."""
    async def drain() -> None:
        while True:
            await ws.recv()

    try:
        await asyncio.wait_for(drain(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    raise AssertionError("unreachable")


def admin_token() -> str:
    return subprocess.run(
        [sys.executable, "-m", "fastgw", "token", "--sub", "admin", "--admin", "--jwt-secret", SECRET],
        env=clean_env(), capture_output=True, check=True, text=True, timeout=30,
    ).stdout.strip()


# --- end to end -------------------------------------------------------------


async def test_two_workers_share_the_port(start_workers, redis_url):
    gw = start_workers("--redis", redis_url, "--no-simulator")
    await gw.wait_serving()
    out = gw.output()
    assert re.search(rf"2 workers on 127\.0\.0\.1:{gw.port} \(pids \d+, \d+\)", out), out
    assert len(set(await gw.nodes(40))) == 2  # SO_REUSEPORT spreads connections over both
    clients = [await connect(f"ws://{gw.base}/ws", open_timeout=5) for _ in range(10)]
    try:
        for ws in clients:
            await welcome(ws)
    finally:
        for ws in clients:
            await ws.close()
    gw.signal(signal.SIGTERM)
    assert gw.wait(20) == 0


async def test_sigterm_drains_every_worker(start_workers, redis_url):
    gw = start_workers("--redis", redis_url, "--no-simulator")
    await gw.wait_serving()
    workers = gw.children()
    clients = [await connect(f"ws://{gw.base}/ws", open_timeout=5) for _ in range(20)]  # on both, surely
    for ws in clients:
        await welcome(ws)
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    gw.signal(signal.SIGINT)  # a second signal while stopping: logged, ignored
    codes = await asyncio.gather(*(close_code(ws) for ws in clients))
    assert codes == [1001] * len(clients)
    assert gw.wait(20) == 0, gw.output()
    assert time.monotonic() - started < 20
    assert not any(alive(pid) for pid in workers)
    out = gw.output()
    assert "SIGTERM: stopping 2 workers" in out and "SIGINT: already stopping" in out, out
    assert "all 2 workers stopped" in out


async def test_ctrl_c_reaches_the_whole_group(start_workers, redis_url):
    """A terminal sends SIGINT to every process of the foreground group: each worker drains once."""
    gw = start_workers("--redis", redis_url, "--no-simulator")
    await gw.wait_serving()
    workers = gw.children()
    ws = await connect(f"ws://{gw.base}/ws", open_timeout=5)
    await welcome(ws)
    os.killpg(gw.proc.pid, signal.SIGINT)
    assert await close_code(ws) == 1001
    assert gw.wait(20) == 0, gw.output()
    assert not any(alive(pid) for pid in workers)
    assert "Traceback" not in gw.output()


async def test_a_killed_worker_is_restarted(start_workers, redis_url):
    gw = start_workers("--redis", redis_url, "--no-simulator")
    await gw.wait_serving()
    before = gw.children()
    victim = min(before)
    victim_node = gw.node_of(victim)
    os.kill(victim, signal.SIGKILL)
    await until(lambda: not alive(victim), 5, "the killed worker to die")
    assert set(await gw.nodes(20)) - {victim_node}, "the port went on serving"
    assert victim_node not in await gw.nodes(20)
    await gw.wait_serving(listening=3, timeout=15)  # restarted after 1 s, listening again
    (replacement,) = gw.children() - before
    out = gw.output()
    assert f"worker 0 (pid {victim}) killed by SIGKILL" in out or f"worker 1 (pid {victim}) killed by SIGKILL" in out, out
    assert re.search(rf"worker \d restarted \(pid {replacement}\)", out), out
    nodes = set(await gw.nodes(40))
    assert len(nodes) == 2 and victim_node not in nodes and gw.node_of(replacement) in nodes
    gw.signal(signal.SIGTERM)
    assert gw.wait(20) == 0, gw.output()
    assert not any(alive(pid) for pid in gw.seen_children)


async def test_every_subscriber_gets_a_publish_whichever_worker_holds_it(start_workers, redis_url):
    """Clients on both workers subscribe; one POST /api/publish (landing on one worker) reaches all."""
    gw = start_workers("--redis", redis_url, "--no-simulator", "--jwt-secret", SECRET, "--allow-anonymous")
    await gw.wait_serving()
    admin = {"Authorization": f"Bearer {admin_token()}"}
    clients: list[ClientConnection] = []

    async def add_subscribers(n: int) -> None:
        for _ in range(n):
            ws = await connect(f"ws://{gw.base}/ws", open_timeout=5)  # anonymous: public channels
            clients.append(ws)
            await welcome(ws)
            await ws.send(json.dumps({"type": "subscribe", "id": "1", "channel": CHANNEL}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "subscribed" and reply["channel"] == CHANNEL, reply

    async def subscribers_per_node() -> dict[str, int]:
        per_node: dict[str, int] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(40):
                async with s.get(f"http://{gw.base}/api/stats", headers=admin) as r:
                    assert r.status == 200, await r.text()
                    stats = await r.json()
                per_node[stats["node"]] = stats["channels"].get(CHANNEL, 0)
                if len(per_node) == 2:
                    break
        return per_node

    try:
        await add_subscribers(10)
        per_node = await subscribers_per_node()
        while not (len(per_node) == 2 and all(per_node.values())) and len(clients) < 40:
            await add_subscribers(10)  # all on one worker so far (unlikely): more
            per_node = await subscribers_per_node()
        assert len(per_node) == 2 and all(per_node.values()), per_node
        assert sum(per_node.values()) == len(clients)

        alert = {
            "type": "service_alert", "alert_id": "workers-1", "severity": "warning", "title": "Diversion",
            "message": "335E diverted via Old Madras Road", "affected_routes": ["335E"],
            "start_time": "2026-11-29T08:00:00Z", "end_time": "2026-11-29T10:00:00Z",
        }
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://{gw.base}/api/publish", headers=admin,
                              json={"channel": CHANNEL, "message": alert}) as r:
                assert r.status == 200, await r.text()

        async def receives(ws: ClientConnection) -> bool:
            try:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if frame["type"] == "channel_message" and frame["message"].get("alert_id") == "workers-1":
                        return frame["channel"] == CHANNEL
            except (asyncio.TimeoutError, ConnectionClosed):
                return False

        got = await asyncio.gather(*(receives(ws) for ws in clients))
        missing = got.count(False)
        assert missing == 0, (f"{missing} of {len(clients)} subscribers did not receive the alert "
                              f"(subscribers per worker: {per_node})")
    finally:
        for ws in clients:
            await ws.close()
        gw.signal(signal.SIGTERM)
        gw.wait(20)


# --- usage and start-up errors ----------------------------------------------


def test_workers_without_redis_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--workers", "2", "--no-simulator"],
                            env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--redis" in result.stderr, result.stderr


def test_port_in_use_fails_at_once(redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "2", "--redis", redis_url, "--no-simulator"],
                                env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert time.monotonic() - started < 10 and "workers on" not in result.stderr


def test_worker_index_outside_a_supervisor_is_refused():
    result = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--port", "0", "--no-simulator"],
                            env=clean_env(FASTGW_WORKER_INDEX="x"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "FASTGW_WORKER_INDEX" in result.stderr, result.stderr


def test_worker_index_is_not_a_documented_flag():
    result = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--help"], env=clean_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--workers" in result.stdout and "WORKER_INDEX" not in result.stdout


# --- the supervisor in-process, with a stand-in worker command ----------------


def workers_config(n: int = 2) -> Config:
    return Config(host="127.0.0.1", port=0, workers=n, redis="redis://127.0.0.1:1/0", simulator=False)


async def test_workers_that_keep_failing_at_start_stop_the_supervisor(caplog):
    caplog.set_level(logging.INFO, logger="fastgw.workers")
    sup = Supervisor(workers_config(), [], command=[sys.executable, "-c", "raise SystemExit(3)"],
                     backoff_start=0.01, backoff_max=0.05)
    assert await asyncio.wait_for(sup.run(), 60) == 1
    assert "exited within 2 s of starting 5 times in a row (last: exit code 3)" in caplog.text
    assert all(p.returncode is not None for p in sup.procs.values())


async def test_restart_backoff_doubles_up_to_its_maximum(caplog):
    caplog.set_level(logging.INFO, logger="fastgw.workers")
    sup = Supervisor(workers_config(1), [], command=[sys.executable, "-c", "pass"],
                     backoff_start=0.01, backoff_max=0.04, stable_after=60, quick_exits_fatal=1000)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.restarts >= 5, 30, "5 restarts")
    finally:
        sup._stop(signal.SIGTERM)  # what SIGTERM to the supervisor does
        code = await asyncio.wait_for(task, 20)
    delays = [float(d) for d in re.findall(r"restarting it in ([\d.]+) s", caplog.text)]
    assert delays[:5] == [0.01, 0.02, 0.04, 0.04, 0.04], caplog.text
    assert "exit code 0 after" in caplog.text  # even a clean exit is unexpected: restarted
    assert code == 0 and all(p.returncode is not None for p in sup.procs.values())


async def test_a_worker_that_ran_a_while_resets_the_quick_exit_count_and_backoff(caplog):
    caplog.set_level(logging.INFO, logger="fastgw.workers")
    sup = Supervisor(workers_config(2), [], command=[sys.executable, "-c", "import time; time.sleep(0.3)"],
                     backoff_start=0.01, backoff_max=0.04, stable_after=0.25, quick_exit=0.2, quick_exits_fatal=2)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.restarts >= 8, 30, "8 restarts")
        assert not task.done()  # never "5 quick exits in a row": each ran longer than quick_exit
    finally:
        sup._stop(signal.SIGTERM)
        code = await asyncio.wait_for(task, 20)
    delays = set(re.findall(r"restarting it in ([\d.]+) s", caplog.text))
    assert delays == {"0.01"}, caplog.text  # each ran longer than stable_after: back to the start
    assert code == 0, caplog.text  # the stand-ins die of the forwarded SIGTERM (no handler yet): clean
    assert all(p.returncode is not None for p in sup.procs.values())


def test_serve_argv_round_trips_the_command_line(monkeypatch):
    from fastgw.cli import serve

    for name in [k for k in os.environ if k.startswith("FASTGW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FASTGW_MAX_SUBSCRIPTIONS", "7")  # from the environment: inherited, not in argv
    args = ["--host", "127.0.0.1", "--port", "0", "--workers", "3", "--redis", "redis://r:6379/2",
            "--allow-anonymous", "--no-simulator", "--kafka-topic", "location=a", "--kafka-topic", "alerts=b",
            "--heartbeat", "12.5", "--log-level", "debug", "--jwt-secret", "s e c r e t"]
    ctx = serve.make_context("serve", list(args))
    argv = serve_argv(ctx)
    assert "--port" not in argv and "--workers" not in argv and "--max-subscriptions" not in argv
    again = serve.make_context("serve", argv + ["--port", "9", "--workers", "1"])
    expected = {**ctx.params, "port": 9, "workers": 1}
    assert again.params == expected


def test_describe_exit():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"
