"""websockets peer: a ``websockets`` (asyncio) server fanning out with ``websockets.broadcast``.

What a gateway built on the websockets library does: ``broadcast`` frames a message
once and writes it to every connection without awaiting (its docs' recommended way
to fan out). The WebSocket side speaks the peers' protocol (``_peer.py``): ``/ws``
sends ``welcome``, answers ``subscribe`` with ``subscribed``, one channel for all.
websockets serves only WebSocket handshakes (no request bodies), so publishing is an
aiohttp app on ``--publish-port`` (default port + 1) in the same process and loop:
``POST /publish`` (alias ``/api/publish``) with the gateway's body, and ``GET /readyz``.

    python benchmarks/peers/websockets_broadcast.py --port 8083 [--publish-port 8084] [--cpu 0]
"""

from __future__ import annotations

import json
import os
import sys

from aiohttp import web
from websockets.asyncio.server import ServerConnection, broadcast, serve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer import dumps, envelope, iso_now, next_message_id, run_app, somaxconn  # noqa: E402

SUBSCRIBERS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    await ws.send(dumps({"type": "welcome", "connectionId": next_message_id(), "serverTime": iso_now()}))
    try:
        async for message in ws:
            if not isinstance(message, str):
                continue
            try:
                data = json.loads(message)
            except ValueError:
                continue
            if data.get("type") == "subscribe":
                SUBSCRIBERS.add(ws)
                await ws.send(dumps({"type": "subscribed", "id": data.get("id"), "channel": data.get("channel"),
                                     "subscriberCount": len(SUBSCRIBERS)}))
    finally:
        SUBSCRIBERS.discard(ws)


def make_app(args) -> web.Application:
    """The publish side; starting it also starts the websockets server on ``--port``."""
    app = web.Application()

    async def publish(request: web.Request) -> web.Response:
        env = envelope(await request.json())
        broadcast(SUBSCRIBERS, dumps(env))
        return web.json_response({"messageId": env["messageId"], "recipients": len(SUBSCRIBERS)})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "connections": len(SUBSCRIBERS)})

    async def websockets_server(app: web.Application):
        server = await serve(handler, args.host, args.ws_port, ping_interval=None, max_size=64 * 1024,
                             compression=None, backlog=somaxconn())
        yield
        server.close()
        await server.wait_closed()

    app.router.add_post("/publish", publish)
    app.router.add_post("/api/publish", publish)
    app.router.add_get("/readyz", readyz)
    app.cleanup_ctx.append(websockets_server)
    return app


def _arguments(parser) -> None:
    parser.add_argument("--publish-port", type=int, default=None, help="HTTP publish port (default: --port + 1)")


def _factory(args) -> web.Application:
    # run_app serves the returned aiohttp app on --port; here that port is the WebSocket
    # server's, so the aiohttp app moves to --publish-port.
    args.ws_port = args.port
    args.port = args.publish_port or args.port + 1
    return make_app(args)


if __name__ == "__main__":
    run_app(_factory, __doc__.splitlines()[0], _arguments,
            banner="(HTTP publish; the WebSocket server is on --port)")
