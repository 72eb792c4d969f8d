"""The conformance application: behaves like the reference server of the official
Engine.IO v4 and Socket.IO v5 protocol test suites, on fastgw's own Engine.IO and
Socket.IO servers (``fastgw socketio-conformance``; port 3000 by default).

* ``/engine.io/``: an Engine.IO server that echoes every message (text or binary).
* ``/socket.io/``: a Socket.IO server with namespaces ``/`` and ``/custom``; on
  connect it emits ``auth`` with the handshake's auth payload (``{}`` if none);
  ``message`` comes back as ``message-back`` with the same arguments;
  ``message-with-ack`` is acknowledged with the same arguments.
* pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1,000,000, connectTimeout
  1,000 ms; connection state recovery off.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from fastgw import core
from fastgw.socketio.engine import EngineOptions, EngineServer, PollingSink, Session
from fastgw.socketio.server import Namespace, Socket, SocketIOServer

__all__ = ["build_app", "serve", "OPTIONS", "CONNECT_TIMEOUT"]

log = logging.getLogger("fastgw.socketio.conformance")

OPTIONS = EngineOptions(ping_interval=0.3, ping_timeout=0.2, max_payload=1_000_000)
CONNECT_TIMEOUT = 1.0


class _Echo:
    """Engine.IO application that sends every message back."""

    def admit(self, request: web.Request) -> None:
        return None

    def on_open(self, session: Session) -> None:
        pass

    async def on_message(self, session: Session, data: str | bytes) -> None:
        session.send(data)

    def on_upgrade(self, session: Session, old_sink: PollingSink) -> None:
        pass

    def on_close(self, session: Session, reason: str) -> None:
        pass


#: Seconds between the CONNECT reply and the ``auth`` event. The official v5 suite waits
#: for each frame with a one-shot listener registered after the previous frame was
#: handled; two frames that reach its WebSocket client in one TCP read are delivered
#: back to back and the second is lost (a known flaw of that suite, which the Node
#: reference server trips over too). A short pause keeps them in separate reads.
AUTH_EMIT_DELAY = 0.02


class _EchoNamespace(Namespace):
    async def on_connected(self, socket: Socket, auth: Any) -> None:
        await asyncio.sleep(AUTH_EMIT_DELAY)
        socket.emit("auth", {} if auth is None else auth)

    async def on_event(self, socket: Socket, event: str, args: list[Any], ack_id: int | None) -> None:
        if event == "message":
            socket.emit("message-back", *args)
        elif event == "message-with-ack" and ack_id is not None:
            socket.ack(ack_id, *args)


def build_app() -> web.Application:
    """The aiohttp application serving both endpoints."""
    app = web.Application(client_max_size=OPTIONS.max_payload + 1024)
    EngineServer(_Echo(), EngineOptions(path="/engine.io/", ping_interval=OPTIONS.ping_interval,
                                         ping_timeout=OPTIONS.ping_timeout, max_payload=OPTIONS.max_payload),
                 core).add_routes(app)
    sio = SocketIOServer([_EchoNamespace("/"), _EchoNamespace("/custom")], OPTIONS, core,
                         connect_timeout=CONNECT_TIMEOUT)
    sio.add_routes(app)
    app["socketio"] = sio
    return app


async def serve(host: str = "localhost", port: int = 3000) -> None:
    """Serve until SIGINT/SIGTERM. ``localhost`` listens on 127.0.0.1 and, where
    available, ::1 (clients may resolve it to either)."""
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    hosts = ["127.0.0.1", "::1"] if host == "localhost" else [host]
    started = 0
    for name in hosts:
        try:
            await web.TCPSite(runner, name, port).start()
            started += 1
        except OSError as exc:
            if name != "::1":
                raise
            log.info("not listening on ::1: %s", exc)
    print(f"fastgw socketio-conformance listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
