"""Shared scaffolding of the baseline peers (naive aiohttp, floor writes).

Both peers speak the same protocol as far as the benchmark fleet sees it:

* ``GET /ws`` upgrades (any ``?token=`` is ignored), sends a ``welcome`` text
  frame, answers ``{"type":"subscribe",...}`` with a ``subscribed`` frame and
  keeps every socket in one channel;
* ``POST /publish`` (alias ``/api/publish``) takes the gateway's body
  ``{"channel": ..., "message": {...}}``, wraps it in the gateway's envelope
  ``{"type":"channel_message","channel","message","timestamp","messageId"}``
  (compact JSON, so the bytes on the wire match fastgw's within a few bytes)
  and hands it to the peer's ``deliver`` function; replies ``{"messageId":...}``
  once every subscriber has been written to;
* ``GET /readyz`` answers 200.

The listen backlog is ``/proc/sys/net/core/somaxconn`` (aiohttp's default of
128 loses SYNs when thousands of clients connect at once).

``run_app`` (process set-up and serving) and ``envelope`` also serve peers with
an application of their own (``python_socketio_server.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

from aiohttp import web

SUBS_KEY = web.AppKey("subs", dict)


def somaxconn(default: int = 4096) -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def iso_now() -> str:
    dt = datetime.now(tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_prefix = os.urandom(4).hex() + "-"
_counter = itertools.count(1)


def next_message_id() -> str:
    n = next(_counter)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return _prefix + out


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


Deliver = Callable[[web.Application, str, str], Awaitable[int]]


def envelope(body: dict) -> dict:
    """The gateway's envelope around a ``POST /publish`` body ``{"channel", "message"}``."""
    return {
        "type": "channel_message",
        "channel": body["channel"],
        "message": body["message"],
        "timestamp": iso_now(),
        "messageId": next_message_id(),
    }


def make_app(deliver: Deliver) -> web.Application:
    """``deliver(app, channel, payload_json) -> recipients`` is the only difference between peers."""
    app = web.Application()
    # ws -> transport, in subscription order; one channel for everybody.
    app[SUBS_KEY] = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=True, max_msg_size=64 * 1024)
        await ws.prepare(request)
        subs = app[SUBS_KEY]
        await ws.send_str(dumps({"type": "welcome", "connectionId": next_message_id(), "serverTime": iso_now()}))
        try:
            async for msg in ws:
                if msg.type != web.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if data.get("type") == "subscribe":
                    subs[ws] = request.transport
                    await ws.send_str(
                        dumps(
                            {
                                "type": "subscribed",
                                "id": data.get("id"),
                                "channel": data.get("channel"),
                                "subscriberCount": len(subs),
                            }
                        )
                    )
        finally:
            subs.pop(ws, None)
        return ws

    async def publish(request: web.Request) -> web.Response:
        env = envelope(await request.json())
        recipients = await deliver(app, env["channel"], dumps(env))
        return web.json_response({"messageId": env["messageId"], "recipients": recipients})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "connections": len(app[SUBS_KEY])})

    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/publish", publish)
    app.router.add_post("/api/publish", publish)
    app.router.add_get("/readyz", readyz)
    return app


def run(deliver: Deliver, description: str) -> None:
    run_app(lambda args: make_app(deliver), description)


def run_app(app_factory: Callable[[argparse.Namespace], web.Application], description: str,
            add_arguments: Callable[[argparse.ArgumentParser], None] | None = None, banner: str = "") -> None:
    """Parse ``--host --port --cpu`` (and what ``add_arguments`` adds), pin to the CPU, raise the open-files
    limit, install uvloop, then serve ``app_factory(args)`` (called inside the running loop) with the
    ``somaxconn`` backlog until SIGINT/SIGTERM. ``banner``: more of the "listening on" log line."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:  # one fd per connection: soft open-files limit up to the hard one
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def serve() -> None:
        runner = web.AppRunner(app_factory(args), access_log=None, handle_signals=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=somaxconn())
        await site.start()
        print(f"listening on {args.host}:{args.port} pid={os.getpid()} {banner + ' ' if banner else ''}"
              f"t={time.time():.3f}", flush=True)
        try:
            await asyncio.Event().wait()  # until SIGINT/SIGTERM
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, web.GracefulExit):
        pass
