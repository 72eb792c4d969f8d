"""Shared fixtures: a real gateway on 127.0.0.1 under uvloop, per hot-path implementation."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from fastgw import _core_py
from fastgw.auth import mint_token
from fastgw.config import Config
from fastgw.server import Gateway

try:
    from fastgw import _core as _core_c
except ImportError as exc:  # the compiled module is part of the build: its absence is a failure
    raise RuntimeError("fastgw._core is not built; run `pip install -e .` first") from exc

pytest_plugins = ["tests.kafka_broker", "tests.redis_server"]  # real Kafka broker and redis-server fixtures

SECRET = "test-secret-0123456789abcdef0123456789"
IMPLEMENTATIONS = {"cython": _core_c, "python": _core_py}


def pytest_asyncio_loop_factories(config, item):
    """Every async test runs on uvloop, as the gateway does in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def hot_path(request):
    """Each test using it runs once with the compiled core and once with the Python twin."""
    return IMPLEMENTATIONS[request.param]


def token(sub: str = "u1", *, admin: bool = False, ttl: int = 600) -> str:
    return mint_token(sub, secret=SECRET, admin=admin, ttl=ttl)


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(hot_path) -> AsyncIterator[StartGateway]:
    """Factory: ``await start_gateway(**config_overrides)`` → a started Gateway on a free port."""
    started: list[Gateway] = []

    async def start(**overrides) -> Gateway:
        options = dict(host="127.0.0.1", port=0, jwt_secret=SECRET, simulator=False, node_id="test")
        options.update(overrides)
        gateway = Gateway(Config(**options), core=hot_path)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        with contextlib.suppress(Exception):
            await gateway.stop()


@pytest.fixture
async def gateway(start_gateway) -> Gateway:
    return await start_gateway()


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def wait_until(check: Callable[[], Any], what: str, timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Call ``check()`` (awaiting what it returns if that is awaitable) until the result is
    truthy, and return it; fail with ``what`` after ``timeout``."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what} (last: {last!r})")
        await asyncio.sleep(interval)
