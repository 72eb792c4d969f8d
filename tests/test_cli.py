"""The ``fastgw`` command as a user runs it: a real process, real sockets, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import SECRET

BENGALURU = {"lat": (12.6, 13.4), "lon": (77.3, 77.9)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``python -m fastgw serve`` configured through the environment only (no arguments)."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
        full_env = {**inherited, "FASTGW_HOST": "127.0.0.1", "FASTGW_PORT": str(self.port), **env}
        self.terminated = False
        self.proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve"], env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read().decode(errors="replace")

    def terminate(self) -> None:
        """SIGTERM once: the graceful shutdown starts (a second one would kill it outright)."""
        if not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """Terminate (unless already done) and wait for the exit code."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def serve():
    started: list[ServeProcess] = []

    def start(**env: str) -> ServeProcess:
        p = ServeProcess(**env)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


async def test_fresh_serve_streams_live_buses(serve):
    """The README promise: `fastgw serve` with no arguments streams real location updates."""
    from fastgw.transit.gtfs import load_feed

    gw = serve()
    await gw.wait_ready()
    routes = sorted(load_feed().routes)
    async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        for i, route in enumerate(routes):  # one channel per route: some bus is always running
            await ws.send_json({"type": "subscribe", "id": str(i), "channel": f"route:{route}:all"})
        updates, deadline = [], time.monotonic() + 15
        while len(updates) < 20 and time.monotonic() < deadline:
            msg = await ws.receive_json(timeout=10)
            if msg["type"] == "channel_message":
                updates.append(msg)
    assert len(updates) >= 20
    for env in updates:
        loc = env["message"]
        assert loc["type"] == "location_update" and env["channel"] == f"route:{loc['route_id']}:all"
        assert loc["route_id"] in routes and loc["direction"] in ("UP", "DOWN")
        assert BENGALURU["lat"][0] < loc["latitude"] < BENGALURU["lat"][1]
        assert BENGALURU["lon"][0] < loc["longitude"] < BENGALURU["lon"][1]
    assert gw.stop() == 0


async def test_token_command_and_sigterm_closes_with_1001(serve):
    gw = serve(FASTGW_JWT_SECRET=SECRET, FASTGW_NO_SIMULATOR="1")
    await gw.wait_ready()
    admin = subprocess.run([sys.executable, "-m", "fastgw", "token", "--sub", "ops", "--admin", "--ttl", "60"],
                           env={**os.environ, "FASTGW_JWT_SECRET": SECRET}, capture_output=True, check=True,
                           text=True).stdout.strip()
    base = f"127.0.0.1:{gw.port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{base}/api/stats", headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 200 and (await r.json())["connections"]["active"] == 0
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:  # no token, no anonymous
            await s.ws_connect(f"ws://{base}/ws")
        assert err.value.status == 401
        async with s.ws_connect(f"ws://{base}/ws", headers={"Authorization": f"Bearer {admin}"}) as ws:
            await ws.receive_json(timeout=5)
            gw.terminate()
            told = await ws.receive_json(timeout=5)  # the drain: reconnect advice, then the close
            assert told["type"] == "reconnect" and told["retryAfterMs"] >= 0
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
    assert gw.stop() == 0


async def test_rs256_public_key(serve, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "private.pem"
    public = tmp_path / "public.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    gw = serve(FASTGW_JWT_PUBLIC_KEY=str(public), FASTGW_NO_SIMULATOR="1")
    await gw.wait_ready()
    tok = subprocess.run([sys.executable, "-m", "fastgw", "token", "--sub", "rider1", "--jwt-private-key", str(private)],
                         capture_output=True, check=True, text=True).stdout.strip()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={tok}") as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        # an HS256 token signed with the public key text (algorithm confusion) is refused
        import jwt as pyjwt

        forged = pyjwt.encode({"sub": "rider1", "exp": int(time.time()) + 60}, "x" * 64, algorithm="HS256")
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={forged}")
        assert err.value.status == 401
    assert gw.stop() == 0


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-simulator"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_token_command_requires_a_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
    result = subprocess.run([sys.executable, "-m", "fastgw", "token", "--sub", "u1"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "FASTGW_JWT_SECRET" in result.stderr


def test_low_open_files_limit_is_raised_or_reported():
    """With a soft limit of 1,024, serve raises it to the hard limit (or warns clearly)."""
    code = (
        "import resource, logging, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))\n"
        "from fastgw.system import raise_open_files_limit\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "print(raise_open_files_limit(10_000), hard)\n"
        "print(raise_open_files_limit(10 ** 9), hard)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    lines = result.stdout.split("\n")
    now, hard = map(int, lines[0].split())
    assert now == hard
    assert "does not fit the open-files limit" in result.stderr  # the 10**9 case
