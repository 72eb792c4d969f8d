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
        body = await request.json()
        channel = body["channel"]
        envelope = {
            "type": "channel_message",
            "channel": channel,
            "message": body["message"],
            "timestamp": iso_now(),
            "messageId": next_message_id(),
        }
        recipients = await deliver(app, channel, dumps(envelope))
        return web.json_response({"messageId": envelope["messageId"], "recipients": recipients})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "connections": len(app[SUBS_KEY])})

    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/publish", publish)
    app.router.add_post("/api/publish", publish)
    app.router.add_get("/readyz", readyz)
    return app


def run(deliver: Deliver, description: str) -> None:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
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
        runner = web.AppRunner(make_app(deliver), access_log=None, handle_signals=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=somaxconn())
        await site.start()
        print(f"listening on {args.host}:{args.port} pid={os.getpid()} t={time.time():.3f}", flush=True)
        try:
            await asyncio.Event().wait()  # until SIGINT/SIGTERM
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, web.GracefulExit):
        pass
