"""pytest plugin: a real single-node Apache Kafka broker (KRaft) for the test session.

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.kafka_broker"]``.

Fixtures
--------
``kafka_bootstrap`` (session)
    ``"127.0.0.1:PORT"`` of a running broker. If ``FASTGW_KAFKA_BOOTSTRAP`` is set (the test
    command started one broker for the whole run with ``scripts/kafka.sh start``) it is used
    as is; if ``scripts/kafka.sh status`` shows a broker already running, that one is used
    and left running; otherwise ``scripts/kafka.sh start`` starts one for the session and
    ``scripts/kafka.sh stop`` removes it at the end. A broker that cannot be started FAILS
    the tests that need it (with the script's message: java/mvn missing, download failed,
    the broker log's last lines) — it never skips.

``kafka_control`` (function)
    Stops and starts that broker mid-test, keeping its ports and data (committed offsets
    and topics survive)::

        await kafka_control.stop()    # scripts/kafka.sh stop --keep-data
        await kafka_control.start()   # scripts/kafka.sh start (same ports, same data)

    ``stop_sync()`` / ``start_sync()`` are the blocking twins for sync tests. A broker left
    stopped by a test is started again at its teardown. It needs a broker run by
    ``scripts/kafka.sh`` (not a foreign ``FASTGW_KAFKA_BOOTSTRAP``): otherwise it fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "kafka.sh"
ENV_BOOTSTRAP = "FASTGW_KAFKA_BOOTSTRAP"
# A cold start includes the one-time jar download (mvn); a warm one takes a few seconds.
START_TIMEOUT_S = float(os.environ.get("FASTGW_KAFKA_FIXTURE_TIMEOUT", "600"))
STOP_TIMEOUT_S = 120.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("FASTGW_KAFKA_PYTHON", sys.executable)
    return env


def _argv(*args: str) -> list[str]:
    return ["bash", str(SCRIPT), *args]


def _bootstrap_from(stdout: str) -> str | None:
    for line in stdout.splitlines():
        if line.startswith("KAFKA_BOOTSTRAP="):
            return line.partition("=")[2].strip()
    return None


def _failure(what: str, returncode: int | None, stdout: str, stderr: str) -> str:
    detail = (stderr.strip() or stdout.strip() or "(no output)")[-4000:]
    return f"Kafka broker: `scripts/kafka.sh {what}` failed (exit {returncode}):\n{detail}"


def _run_raw(*args: str, timeout: float) -> subprocess.CompletedProcess[str] | str:
    """Run scripts/kafka.sh; the completed process, or an error message if it could not run."""
    try:
        return subprocess.run(
            _argv(*args), cwd=REPO, env=_env(), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:  # no bash
        return f"Kafka broker: cannot run {SCRIPT}: {exc}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return _failure(" ".join(args), None, out, err + f"\n(timed out after {timeout:.0f}s)")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    result = _run_raw(*args, timeout=timeout)
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
    return result


def _status() -> str | None:
    """The bootstrap of a broker that scripts/kafka.sh runs now, else None."""
    proc = _run("status", timeout=30)
    return _bootstrap_from(proc.stdout) if proc.returncode == 0 else None


@dataclass
class KafkaBroker:
    bootstrap: str
    managed: bool  # started by this session (so stopped at its end)
    scripted: bool  # run by scripts/kafka.sh (so kafka_control can stop/start it)
    running: bool = field(default=True)


def _start() -> str:
    proc = _run("start", timeout=START_TIMEOUT_S)
    bootstrap = _bootstrap_from(proc.stdout)
    if proc.returncode != 0 or not bootstrap:
        pytest.fail(_failure("start", proc.returncode, proc.stdout, proc.stderr), pytrace=False)
    return bootstrap


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    given = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if given:
        yield KafkaBroker(given, managed=False, scripted=_status() == given)
        return
    running = _status()
    if running:  # e.g. a developer's `scripts/kafka.sh start`: use it, leave it running
        yield KafkaBroker(running, managed=False, scripted=True)
        return
    broker = KafkaBroker(_start(), managed=True, scripted=True)
    try:
        yield broker
    finally:
        proc = _run("stop", timeout=STOP_TIMEOUT_S)
        if proc.returncode != 0:
            sys.stderr.write(_failure("stop", proc.returncode, proc.stdout, proc.stderr) + "\n")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``"127.0.0.1:PORT"`` of the session's Kafka broker."""
    return kafka_broker.bootstrap


class KafkaControl:
    """Stop/start the session broker mid-test; ports and data (offsets, topics) are kept."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap

    @property
    def running(self) -> bool:
        return self._broker.running

    # The async twins run the script in a worker thread (stdlib subprocess), so the event loop
    # and the clients on it keep running while the broker goes down and comes back. (Not
    # asyncio's subprocess API: uvloop leaks descriptors into children.)
    async def stop(self) -> None:
        self._stopped(await asyncio.to_thread(_run_raw, "stop", "--keep-data", timeout=STOP_TIMEOUT_S))

    async def start(self) -> None:
        self._started(await asyncio.to_thread(_run_raw, "start", timeout=START_TIMEOUT_S))

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def stop_sync(self) -> None:
        self._stopped(_run_raw("stop", "--keep-data", timeout=STOP_TIMEOUT_S))

    def start_sync(self) -> None:
        self._started(_run_raw("start", timeout=START_TIMEOUT_S))

    def _stopped(self, result: subprocess.CompletedProcess[str] | str) -> None:
        if isinstance(result, str):
            pytest.fail(result, pytrace=False)
        if result.returncode != 0:
            pytest.fail(_failure("stop --keep-data", result.returncode, result.stdout, result.stderr),
                        pytrace=False)
        self._broker.running = False

    def _started(self, result: subprocess.CompletedProcess[str] | str) -> None:
        if isinstance(result, str):
            pytest.fail(result, pytrace=False)
        bootstrap = _bootstrap_from(result.stdout)
        if result.returncode != 0 or not bootstrap:
            pytest.fail(_failure("start", result.returncode, result.stdout, result.stderr), pytrace=False)
        if bootstrap != self._broker.bootstrap:
            pytest.fail(f"Kafka broker came back on {bootstrap}, not on {self._broker.bootstrap}:\n"
                        f"{result.stderr}", pytrace=False)
        self._broker.running = True


@pytest.fixture
def kafka_control(kafka_broker: KafkaBroker) -> Iterator[KafkaControl]:
    if not kafka_broker.scripted:
        pytest.fail(
            f"kafka_control needs the broker run by scripts/kafka.sh, but {ENV_BOOTSTRAP}="
            f"{kafka_broker.bootstrap} is not the one `scripts/kafka.sh status` reports",
            pytrace=False,
        )
    control = KafkaControl(kafka_broker)
    yield control
    if not kafka_broker.running:  # a test that stopped it and failed: bring it back for the rest
        control.start_sync()
