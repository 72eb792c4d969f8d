"""Logs: ``fastgw serve --log-format json`` as a real process, every stderr line parsed."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest

from fastgw.logs import JsonFormatter, TextFormatter, configure
from tests.conftest import SECRET, token
from tests.test_cli import free_port

EVERY_LINE = ("time", "level", "logger", "msg", "instance", "pid")


class Serve:
    """``python -m fastgw serve ARGS`` on a free port, stderr kept apart from stdout."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--jwt-secret", SECRET, "--no-simulator", "--drain-period", "0", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.proc.stderr.read().decode(errors="replace")
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("gateway not ready")

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture
def serve():
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        started.append(Serve(*args))
        return started[-1]

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.communicate()


async def exercise(port: int) -> str:
    """A rider connects, subscribes and leaves; a bad token is refused. Returns the session id."""
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"ws://127.0.0.1:{port}/ws?token={token('rider42')}&device=android") as ws:
            welcome = await ws.receive_json(timeout=5)
            await ws.send_json({"type": "subscribe", "id": "1", "channel": "route:500-D:UP"})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await s.ws_connect(f"ws://127.0.0.1:{port}/ws?token=garbage")
        async with s.get(f"http://127.0.0.1:{port}/metrics") as r:  # closes are counted when seen
            assert r.status == 200
    return welcome["sessionId"]


async def test_json_logs_one_object_per_line_with_ids(serve):
    gw = serve("--log-format", "json", "--log-level", "debug")
    await gw.wait_ready()
    session_id = await exercise(gw.port)
    await asyncio.sleep(0.3)  # the server's handler finishes after the client's close
    code, out, err = gw.stop()
    assert code == 0, err
    lines = err.splitlines()
    assert lines, "no log lines"
    entries = []
    for line in lines:
        entry = orjson.loads(line)  # every stderr line is one JSON object
        assert isinstance(entry, dict), line
        for key in EVERY_LINE:
            assert key in entry, (key, line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry["time"]
        entries.append(entry)
    instances = {e["instance"] for e in entries}
    assert len(instances) == 1 and all(isinstance(i, str) and i for i in instances)
    assert {e["pid"] for e in entries} == {gw.proc.pid}
    assert any(e["msg"].startswith("fastgw listening on") and e["level"] == "INFO" for e in entries)
    opened = [e for e in entries if e["msg"].startswith("connection opened")]
    closed = [e for e in entries if e["msg"].startswith("connection closed")]
    assert len(opened) == 1 and len(closed) == 1, err
    for event in (opened[0], closed[0]):
        assert event["session_id"] == session_id and event["user_id"] == "rider42"
        assert event["device"] == "android" and event["profile"] == "full"
        assert event["level"] == "DEBUG" and event["logger"] == "fastgw.server"
    assert closed[0]["reason"] == "normal" and closed[0]["duration_s"] >= 0
    refused = [e for e in entries if e["msg"].startswith("upgrade refused")]
    assert len(refused) == 1 and refused[0]["reason"] == "auth"
    assert out == ""  # nothing on stdout either


async def test_log_level_info_hides_routine_connection_lines(serve):
    gw = serve("--log-format", "json", "--log-level", "info")
    await gw.wait_ready()
    await exercise(gw.port)
    code, _, err = gw.stop()
    assert code == 0, err
    entries = [orjson.loads(line) for line in err.splitlines()]
    assert entries and all(e["level"] in ("INFO", "WARNING", "ERROR") for e in entries)
    assert not [e for e in entries if e["msg"].startswith("connection ")]


async def test_text_logs_stay_text(serve):
    gw = serve("--log-level", "debug")
    await gw.wait_ready()
    await exercise(gw.port)
    code, _, err = gw.stop()
    assert code == 0, err
    lines = err.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ", line) for line in lines)
    closed = [line for line in lines if " connection closed " in line]
    assert len(closed) == 1 and "user_id=rider42" in closed[0] and "reason=normal" in closed[0]


def test_abnormal_closes_are_info_routine_ones_debug(caplog):
    from types import SimpleNamespace

    from fastgw.channels import Principal
    from fastgw.logs import connection_closed
    from fastgw.profiles import FULL

    conn = SimpleNamespace(session_id="s1", principal=Principal("u1"), device="ios", encoding=FULL)
    logger = logging.getLogger("fastgw.test")
    with caplog.at_level(logging.DEBUG, logger="fastgw.test"):
        for reason in ("normal", "shutdown", "drain", "slow_consumer", "heartbeat_timeout", "protocol_error",
                       "flood"):
            connection_closed(logger, conn, reason, 1.5)
    levels = {r.reason: r.levelname for r in caplog.records}
    assert levels == {"normal": "DEBUG", "shutdown": "DEBUG", "drain": "DEBUG", "slow_consumer": "INFO",
                      "heartbeat_timeout": "INFO", "protocol_error": "INFO", "flood": "INFO"}
    assert all(r.session_id == "s1" and r.user_id == "u1" for r in caplog.records)


def test_json_formatter_keeps_a_traceback_on_one_line():
    formatter = JsonFormatter("node-1")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",),
                                                   sys.exc_info(), extra={"session_id": "s9", "n": 3})
    line = formatter.format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["msg"] == "failed here" and entry["instance"] == "node-1" and entry["session_id"] == "s9"
    assert entry["n"] == 3 and "ValueError: bad" in entry["exc"]
    text = TextFormatter().format(record)
    assert text.splitlines()[0].endswith("failed here [session_id=s9 n=3]") and "Traceback" in text


def test_configure_replaces_handlers_and_routes_warnings(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure("warning", "json", "n")
        configure("warning", "json", "n")  # twice: still one handler, one line per event
        assert len(root.handlers) == 1
        import warnings

        warnings.warn("old flag", UserWarning, stacklevel=1)
        logging.getLogger("fastgw.z").info("hidden at warning level")
        logging.getLogger("fastgw.z").warning("shown")
        err = capsys.readouterr().err.splitlines()
        entries = [orjson.loads(line) for line in err]
        assert [e["msg"] for e in entries][-1] == "shown"
        assert any("old flag" in e["msg"] and e["logger"] == "py.warnings" for e in entries)
        assert not any("hidden" in e["msg"] for e in entries)
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
