"""``fastgw serve --workers N``: a supervisor process and N gateway workers sharing one port.

The supervisor does not serve. It checks (or, for ``--port 0``, picks) the port, then
starts N children ``python -m fastgw serve <same flags> --port P --workers 1`` with
``FASTGW_WORKER_INDEX=i`` in their environment; each binds with SO_REUSEPORT and the
kernel spreads new connections over them. Redis (``--redis``) makes them one gateway.

- SIGTERM/SIGINT: forwarded to every worker (each drains: closes its clients with 1001
  and exits 0); the supervisor waits, then exits 0 (1 if a worker did not stop cleanly).
  A repeated signal while stopping is logged and ignored.
- A worker that dies unexpectedly is restarted after 1 s, doubling to 30 s for repeated
  deaths (back to 1 s once it has run 30 s).
- A worker that exits within 2 s of starting 5 times in a row (port taken, Redis
  unreachable, bad flags) stops everything: the supervisor exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from fastgw.config import Config

__all__ = ["Supervisor", "run_workers", "serve_argv", "reserve_port", "describe_exit", "WORKER_INDEX_ENV"]

log = logging.getLogger("fastgw.workers")

#: Environment variable telling a ``serve`` process it is worker ``i`` of a supervisor.
WORKER_INDEX_ENV = "FASTGW_WORKER_INDEX"
#: The workers' group (supervisor pid and port) and their number, for the Socket.IO handoff.
WORKER_GROUP_ENV = "FASTGW_WORKER_GROUP"
WORKER_COUNT_ENV = "FASTGW_WORKER_COUNT"

#: Exit codes of a worker that count as a clean stop once the supervisor asked it to stop
#: (a worker still starting up when the signal came has no handler yet and dies of it).
_STOPPED_CLEANLY = {0, -signal.SIGTERM, -signal.SIGINT}


def serve_argv(ctx: Any) -> list[str]:
    """The flags given on the command line to ``serve`` (a ``click.Context``), as argv.

    Rebuilt from the parsed parameters rather than sliced out of ``sys.argv`` so that it
    works however ``serve`` was invoked. ``--port`` and ``--workers`` are left out (the
    supervisor sets them); flags that came from ``FASTGW_*`` variables reach the workers
    through the inherited environment.
    """
    import click
    from click.core import ParameterSource

    argv: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("port", "workers"):
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        opt = max(param.opts, key=len)  # the long form
        if param.is_flag:
            if param.secondary_opts:  # --x/--no-x
                argv.append(opt if value else max(param.secondary_opts, key=len))
            elif value == param.flag_value:
                argv.append(opt)
        elif param.multiple:
            for item in value:
                argv += [opt, str(item)]
        elif value is not None:
            argv += [opt, repr(value) if isinstance(value, float) else str(value)]
    return argv


def reserve_port(host: str, port: int) -> int:
    """Check that ``host:port`` is free (nobody listens on it) and return it; for port 0,
    return a free port picked by the kernel. Raises ``OSError``.

    Bound without SO_REUSEPORT on purpose: another gateway group already listening
    there with SO_REUSEPORT would otherwise be joined silently.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers: TIME_WAIT is fine
        sock.bind((host, port))
        return int(sock.getsockname()[1])


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


class Supervisor:
    """Runs and watches N worker processes. ``await run()`` returns the exit code."""

    def __init__(
        self,
        config: Config,
        argv: Sequence[str],
        *,
        command: Sequence[str] | None = None,
        backoff_start: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float | None = None,
        quick_exit: float = 2.0,
        quick_exits_fatal: int = 5,
        stop_timeout: float = 75.0,  # aiohttp waits up to 60 s for in-flight handlers
    ) -> None:
        self.config = config
        self.workers = config.workers
        self.argv = list(argv)
        self._command = list(command) if command is not None else None
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        #: a worker that ran this long restarts after ``backoff_start`` again (default: backoff_max)
        self.stable_after = backoff_max if stable_after is None else stable_after
        self.quick_exit = quick_exit
        self.quick_exits_fatal = quick_exits_fatal
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._started_at: dict[int, float] = {}
        self._stop_codes: dict[int, int] = {}
        self._stopping = False
        self._stop_signal = signal.SIGTERM
        self._stopped: asyncio.Event | None = None
        self._failure: str | None = None

    # --- commands ----------------------------------------------------------

    def command(self, port: int) -> list[str]:
        if self._command is not None:
            return list(self._command)
        # --workers 1 (and FASTGW_WORKERS=1) so that a worker never supervises in turn
        return [sys.executable, "-m", "fastgw", "serve", *self.argv, "--port", str(port), "--workers", "1"]

    def environment(self, index: int, port: int) -> dict[str, str]:
        return {**os.environ, "FASTGW_WORKERS": "1", "FASTGW_PORT": str(port), WORKER_INDEX_ENV: str(index),
                WORKER_GROUP_ENV: f"{os.getpid()}.{port}", WORKER_COUNT_ENV: str(self.config.workers)}

    # --- lifecycle ---------------------------------------------------------

    async def run(self) -> int:
        cfg = self.config
        try:
            self.port = reserve_port(cfg.host, cfg.port)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", cfg.host, cfg.port, exc.strerror or exc)
            return 1
        if cfg.port == 0:
            log.info("--port 0: the workers listen on port %d", self.port)
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            for i in range(self.workers):
                await self._spawn(i)
            if not self._stopping:
                pids = ", ".join(str(p.pid) for _, p in sorted(self.procs.items()))
                log.info("%d workers on %s:%d (pids %s)", self.workers, cfg.host, self.port, pids)
            watchers = [asyncio.create_task(self._watch(i), name=f"fastgw-worker-{i}") for i in range(self.workers)]
            await self._stopped.wait()
            return await self._finish(watchers)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for proc in self.procs.values():  # only after an unexpected error: never leave orphans
                if proc.returncode is None:
                    _signal(proc, signal.SIGKILL)

    async def _finish(self, watchers: list[asyncio.Task[None]]) -> int:
        done, pending = await asyncio.wait(watchers, timeout=self.stop_timeout)
        code = 0
        if pending:
            stuck = sorted(i for i, p in self.procs.items() if p.returncode is None)
            log.error("workers %s did not stop within %g s: killing them", stuck, self.stop_timeout)
            for i in stuck:
                _signal(self.procs[i], signal.SIGKILL)
            await asyncio.wait(pending, timeout=10)
            code = 1
        for task in done:
            if task.exception() is not None:
                log.error("watching a worker failed", exc_info=task.exception())
                code = 1
        for i, rc in sorted(self._stop_codes.items()):
            if rc not in _STOPPED_CLEANLY:
                log.error("worker %d (pid %d) did not stop cleanly: %s", i, self.procs[i].pid, describe_exit(rc))
                code = 1
        if self._failure is not None:
            log.error("exiting: %s", self._failure)
            return 1
        if code == 0:
            log.info("all %d workers stopped", self.workers)
        return code

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:  # a repeated signal must not cut the workers' drain short
            log.info("%s: already stopping", sig.name)
            return
        log.info("%s: stopping %d workers", sig.name, self.workers)
        self._stop(sig)

    def _stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self._stopping = True
        self._stop_signal = sig
        for proc in self.procs.values():
            if proc.returncode is None:
                _signal(proc, sig)
        assert self._stopped is not None
        self._stopped.set()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        assert self.port is not None
        proc = await asyncio.create_subprocess_exec(*self.command(self.port), env=self.environment(index, self.port))
        # same step as the check in _stop(): a worker started while stopping is stopped too
        self.procs[index] = proc
        self._started_at[index] = asyncio.get_running_loop().time()
        if self._stopping:
            _signal(proc, self._stop_signal)
        return proc

    async def _watch(self, index: int) -> None:
        """Wait for worker ``index`` to exit; restart it with backoff unless stopping."""
        try:
            await self._keep(index)
        except Exception as exc:  # e.g. cannot fork: do not wait forever for a signal
            self._failure = f"worker {index}: cannot restart it: {exc!r}"
            log.error("%s; stopping the other workers", self._failure)
            self._stop(signal.SIGTERM)

    async def _keep(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        assert self._stopped is not None
        delay = self.backoff_start
        quick = 0
        while True:
            proc = self.procs[index]
            rc = await proc.wait()
            if self._stopping:
                self._stop_codes[index] = rc
                return
            lived = loop.time() - self._started_at[index]
            quick = quick + 1 if lived < self.quick_exit else 0
            if lived >= self.stable_after:
                delay = self.backoff_start
            if quick >= self.quick_exits_fatal:
                self._failure = (
                    f"worker {index} exited within {self.quick_exit:g} s of starting {quick} times in a row "
                    f"(last: {describe_exit(rc)}); giving up — see its error above "
                    f"(port {self.port} taken? --redis unreachable?)"
                )
                log.error("%s; stopping the other workers", self._failure)
                self._stop(signal.SIGTERM)
                return
            log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %g s",
                        index, proc.pid, describe_exit(rc), lived, delay)
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
                return  # stopping: no restart
            except asyncio.TimeoutError:
                pass
            new = await self._spawn(index)
            self.restarts += 1
            log.info("worker %d restarted (pid %d)", index, new.pid)
            delay = min(delay * 2, self.backoff_max)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:  # exited, not yet reaped
        pass


def run_workers(config: Config, argv: Sequence[str]) -> int:
    """Supervise ``config.workers`` gateway processes until signalled; the exit code."""
    return asyncio.run(Supervisor(config, argv).run())
