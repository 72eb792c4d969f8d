"""pytest plugin: real ``redis-server`` processes (standalone and a 3-master cluster) for the tests.

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.redis_server"]``.

Every server is started by this module on a free loopback port, in its own temporary
directory, with persistence off (``--save "" --appendonly no``), in a new session (so a
Ctrl-C to pytest does not reach it); it never uses a daemon on 6379. All servers started
here are stopped at the end of the session, and by an ``atexit`` hook should the session
die on the way. The binary comes from the Debian package (``scripts/test`` installs it);
when it is missing the tests that need it FAIL — they never skip.

Fixtures
--------
``redis_server`` (session)
    The shared standalone :class:`RedisServer`.

``redis_url`` (function)
    ``"redis://127.0.0.1:PORT/0"`` of the shared server, emptied (``FLUSHALL``) for the
    test; a server left dead by an earlier test is restarted first (same port).

``redis_private`` (function)
    A fresh :class:`RedisServer` of the test's own, for tests that kill or restart Redis::

        redis_private.kill9()     # SIGKILL: clients see the connection refused
        redis_private.restart()   # back on the same port (empty: nothing is persisted)

``redis_cluster`` (session)
    A :class:`RedisCluster`: three masters, no replicas, all 16384 slots covered.

``redis_cluster_url`` (function)
    ``"redis://127.0.0.1:PORT/0"`` of the cluster's first node (a seed for cluster
    clients), every node emptied for the test; dead nodes are restarted first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CLUSTER_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 40
FALLBACK_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")
CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000")
# A cluster node also listens on PORT + 10000 (the cluster bus), which must be a valid port too.
CLUSTER_BUS_OFFSET = 10000
MISSING = "{name} not found: scripts/test installs it (apt-get install redis-server)"


class RedisServerError(RuntimeError):
    """A redis-server (or the cluster made of them) did not start or answer in time."""


def find_binary(name: str = "redis-server") -> str:
    """Path of ``name`` (PATH, then the Debian locations); fails the test when absent."""
    found = shutil.which(name)
    if found:
        return found
    for directory in FALLBACK_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(MISSING.format(name=name), pytrace=False)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A loopback port free right now (and, for a cluster node, its bus port PORT+10000 too)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if not cluster_bus:
            return port
        bus = port + CLUSTER_BUS_OFFSET
        if bus <= 65535 and _port_free(bus):
            return port
    raise RedisServerError("no free loopback port (with a free cluster bus port) found")


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server on host:port answers PING with PONG (raw RESP, no client)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} empty)"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def flushall(url: str) -> None:
    """Empty every database of the Redis server at ``url`` (synchronous FLUSHALL)."""
    with _client(url) as client:
        client.flushall()


_LIVE: dict[int, "RedisServer | RedisCluster"] = {}  # closed at exit if still open


@atexit.register
def _close_all() -> None:
    """Last resort: stop every server this module started and left behind."""
    for item in list(_LIVE.values()):
        try:
            item.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, a free port and its own temporary directory.

    The port is chosen once, at construction: :meth:`restart` (also right after
    :meth:`kill9`) brings the server back on the same port. :meth:`close` stops it and
    removes its directory.
    """

    host = HOST

    def __init__(self, *extra_args: str, name: str = "redis") -> None:
        self.binary = find_binary("redis-server")
        self.extra_args = tuple(extra_args)
        self.cluster = "--cluster-enabled" in self.extra_args
        self.port = free_port(cluster_bus=self.cluster)
        self.dir = Path(tempfile.mkdtemp(prefix=f"fastgw-{name}-"))
        self.logfile = self.dir / "redis.log"
        self.outfile = self.dir / "stdout.log"  # what it prints before its log file is open
        self._proc: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        _LIVE[id(self)] = self

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "stopped"
        return f"<RedisServer {self.host}:{self.port} {state} {self.dir}>"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The process id while it runs; None when stopped (or dead)."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        return [
            self.binary, "--save", "", "--appendonly", "no", "--bind", self.host,
            "--port", str(self.port), "--dir", str(self.dir), "--logfile", str(self.logfile),
            "--daemonize", "no", *self.extra_args,
        ]

    def start(self) -> None:
        """Start it and wait until it answers PING; raises RedisServerError with its log tail."""
        if self.running:
            return
        try:
            self._spawn_and_wait()
        except RedisServerError:
            # Lost the race for a port found free a moment ago: on the first start only, try
            # another one (a restart must keep its port).
            if self._ever_started or "Address already in use" not in self._logs():
                raise
            self.port = free_port(cluster_bus=self.cluster)
            self._spawn_and_wait()
        self._ever_started = True

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it is still there after 5 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def kill9(self) -> None:
        """SIGKILL (a crash: nothing saved, clients cut off) and wait for the exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Stop it (if running) and start it again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop it for good and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.pop(id(self), None)

    def _spawn_and_wait(self) -> None:
        for stale in (self.logfile, self.outfile):
            stale.unlink(missing_ok=True)
        with open(self.outfile, "wb") as out:
            self._proc = subprocess.Popen(
                self.argv(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # signals sent to pytest's process group miss it
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.host, self.port):
            if self._proc.poll() is not None:
                self._fail(f"exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"did not answer PING within {START_TIMEOUT_S:.0f}s")
            time.sleep(0.02)

    def _logs(self) -> str:
        return f"--- {self.logfile}\n{_tail(self.logfile)}\n--- {self.outfile}\n{_tail(self.outfile)}"

    def _fail(self, what: str) -> None:
        logs = self._logs()
        self.kill9()
        raise RedisServerError(f"redis-server on {self.host}:{self.port} {what}:\n{logs}")


class RedisCluster:
    """A local Redis Cluster: ``size`` masters (no replicas) created with ``redis-cli --cluster``."""

    def __init__(self, size: int = 3) -> None:
        self.cli = find_binary("redis-cli")
        self.nodes = [RedisServer(*CLUSTER_ARGS, name=f"redis-cluster{i}") for i in range(size)]
        _LIVE[id(self)] = self

    def __repr__(self) -> str:
        return f"<RedisCluster {[node.port for node in self.nodes]}>"

    @property
    def url(self) -> str:
        """URL of the first node: a seed for cluster clients."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start the nodes, assign all slots across them and wait for ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        addresses = [f"{node.host}:{node.port}" for node in self.nodes]
        argv = [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(f"`{' '.join(argv)}` timed out:\n{exc.stdout}\n{exc.stderr}") from exc
        if proc.returncode != 0:
            raise RedisServerError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n"
                                   f"{proc.stdout}\n{proc.stderr}")
        self.wait_ok()

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT_S) -> None:
        """Wait until CLUSTER INFO on every node says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            states = {node.port: self._state(node) for node in self.nodes}
            if all(state == "ok" for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"cluster not ok after {timeout:.0f}s: {states}\n"
                                       + "\n".join(node._logs() for node in self.nodes))
            time.sleep(0.05)

    def ensure_running(self) -> None:
        """Restart nodes a test left dead (same ports; nodes.conf keeps the slots) and wait ok."""
        dead = [node for node in self.nodes if not node.running]
        for node in dead:
            node.start()
        if dead:
            self.wait_ok()

    def flushall(self) -> None:
        """Empty every node."""
        for node in self.nodes:
            flushall(node.url)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node for good and remove their directories."""
        for node in self.nodes:
            node.close()
        _LIVE.pop(id(self), None)

    @staticmethod
    def _state(node: RedisServer) -> str:
        try:
            with _client(node.url) as client:
                return str(client.cluster("INFO").get("cluster_state", "?"))
        except redis.RedisError as exc:
            return f"error: {exc}"


def _start_or_fail(item: RedisServer | RedisCluster, *, close: bool = True) -> None:
    """Start it; on failure fail the test with the logs (and ``close`` it, removing its dir)."""
    try:
        item.start()
    except RedisServerError as exc:
        if close:
            item.close()
        else:
            item.stop()
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's shared standalone redis-server."""
    server = RedisServer(name="redis-shared")
    _start_or_fail(server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, running (restarted if a test killed it) and empty."""
    if not (redis_server.running and ping(redis_server.host, redis_server.port)):
        redis_server.stop()
        _start_or_fail(redis_server, close=False)  # the next test may try again
    flushall(redis_server.url)
    return redis_server.url


@pytest.fixture
def redis_private() -> Iterator[RedisServer]:
    """A fresh redis-server of this test's own (kill it, restart it); removed at teardown."""
    server = RedisServer(name="redis-private")
    _start_or_fail(server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """The session's 3-master Redis Cluster (no replicas)."""
    cluster = RedisCluster(3)
    _start_or_fail(cluster)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """Seed URL of the cluster (its first node), every node running and empty."""
    try:
        redis_cluster.ensure_running()
    except RedisServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    redis_cluster.flushall()
    return redis_cluster.url
