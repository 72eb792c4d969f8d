"""Load-test child processes spoken to in JSON lines: the client processes and the bmtc producer.

``python -m MODULE`` with pipes: one JSON object per line on its stdin (commands), events
as JSON lines on its stdout, its stderr kept as a short tail for error messages. Stopped
by pid: ``quit``, then SIGTERM, then SIGKILL, each wait bounded. The parent's side is
:class:`ChildProcess`; the child's side is :func:`stdio_channel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Callable

import orjson

__all__ = ["ChildProcess", "next_event", "stdio_channel"]


async def stdio_channel(limit: int, stdin: Any = None) -> tuple[asyncio.StreamReader, Callable[[dict[str, Any]], None]]:
    """The child's side: a reader of the commands on stdin (one JSON object per line), and
    ``emit(event)``, which writes one event line to stdout and flushes it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin or sys.stdin)
    out = sys.stdout.buffer

    def emit(obj: dict[str, Any]) -> None:
        out.write(orjson.dumps(obj) + b"\n")
        out.flush()

    return reader, emit


async def next_event(events: "asyncio.Queue[dict[str, Any]]", timeout: float) -> dict[str, Any]:
    """The next item of ``events`` within ``timeout`` seconds (``TimeoutError`` otherwise).

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives just as
    the item does, and a Ctrl-C then would not stop the run."""
    getting = asyncio.ensure_future(events.get())
    try:
        done, _ = await asyncio.wait((getting,), timeout=timeout)
    finally:
        if not getting.done():
            getting.cancel()
    if not done:
        raise TimeoutError(f"nothing within {timeout:g}s")
    return getting.result()


class ChildProcess:
    """One child: its pipes, its events (a queue) and the tail of its stderr.

    Subclasses name the ``module`` and may take some events out of the queue in
    :meth:`on_event` (running counts, say)."""

    #: what ``python -m`` runs
    module = ""
    #: how the child is named in error messages
    label = "child process"
    #: StreamReader limit of its stdout (one event may be a large report)
    line_limit = 64 * 1024 * 1024
    #: seconds it gets to exit after ``quit``, then after SIGTERM, then after SIGKILL
    stop_grace: tuple[float, float, float] = (5.0, 5.0, 5.0)

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=30)
        self.exited = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.python, "-m", self.module,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=self.line_limit,
        )
        self._tasks = [asyncio.ensure_future(self._read_stdout()), asyncio.ensure_future(self._read_stderr())]

    def on_event(self, event: dict[str, Any]) -> bool:
        """Handle an event as it arrives; False keeps it out of the queue."""
        return True

    async def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
                    continue
                if self.on_event(event):
                    self.events.put_nowait(event)
        finally:
            self.exited.set()
            self.events.put_nowait({"ev": "exited"})

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(orjson.dumps(obj) + b"\n")
        await self.proc.stdin.drain()

    async def wait(self, ev: str, timeout: float) -> dict[str, Any]:
        """The next event named ``ev`` (others are dropped), within ``timeout`` seconds; an
        ``error`` event or the child's exit raise ``RuntimeError``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.label} {self.pid}: no {ev!r} within {timeout:g}s")
            event = await next_event(self.events, remaining)
            if event.get("ev") == ev:
                return event
            if event.get("ev") == "error":
                raise RuntimeError(f"{self.label} {self.pid}: {event.get('message')}")
            if event.get("ev") == "exited":
                tail = "\n".join(self.stderr_tail)
                raise RuntimeError(f"{self.label} {self.pid} exited while waiting for {ev!r}:\n{tail}")

    async def stop(self) -> None:
        """``quit``, then SIGTERM, then SIGKILL, by pid; waits for the exit each time (bounded)."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send({"cmd": "quit"}), 1.0)
            for sig, grace in zip((None, signal.SIGTERM, signal.SIGKILL), self.stop_grace):
                if sig is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, sig)
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                    break
                except asyncio.TimeoutError:
                    continue
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            if proc.stdin:
                proc.stdin.close()
