"""python-socketio peer: ``socketio.AsyncServer(async_mode="aiohttp")`` on aiohttp + uvloop.

What a straightforward Python Socket.IO gateway does: clients join a room, a
publish is ``await sio.emit("channel_message", envelope, room=channel)``
(python-socketio encodes the packet once per emit, then creates one task per
recipient that queues it on the client's Engine.IO socket; each client's writer
task encodes the Engine.IO packet and aiohttp frames and writes it).

What the benchmark fleet (``benchmarks/fleet.py --mode socketio``) sees, the same for every
Socket.IO server of ``test_bench_socketio.py``:

* ``GET /socket.io/?EIO=4&transport=websocket`` upgrades; Engine.IO open packet
  ``0{...}``; the client's ``40`` gets ``40{"sid":...}``;
* event ``subscribe`` with ``{"channel": C}`` and an ack id
  (``420["subscribe",{...}]``): the client joins room C, the ack is
  ``430[{"type":"subscribed","channel":C,"subscriberCount":n}]``;
* ``POST /publish`` (alias ``/api/publish``) takes the gateway's body
  ``{"channel", "message"}``, wraps it in the gateway's envelope (as
  ``_peer.py`` does) and emits it to room C; replies ``{"messageId",
  "recipients"}`` once the emit returned (every recipient's packet queued on its
  socket; the writes themselves happen in the clients' writer tasks);
* ``GET /readyz`` answers 200.

Defaults kept: ping interval 25 s, ping timeout 20 s, no compression on
WebSocket, CPython's garbage-collector thresholds (at 10,000 clients about half
of this server's CPU goes to the cyclic collector, which the many per-recipient
tasks keep triggering; ``--gc-threshold 50000,50,1000`` shows what tuning it
changes). Process set-up and serving (CPU pinning, open-files limit, uvloop, the
``net.core.somaxconn`` listen backlog) are ``_peer.run_app``'s, as for the other peers.

    python benchmarks/peers/python_socketio_server.py --port 8084 [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import socketio  # noqa: E402
from aiohttp import web  # noqa: E402

from _peer import envelope, run_app  # noqa: E402

NAMESPACE = "/"


def make_app(args: argparse.Namespace) -> web.Application:
    if args.gc_threshold:
        import gc

        gc.set_threshold(*(int(x) for x in args.gc_threshold.split(",")))
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    def room_size(channel: str) -> int:
        return len(sio.manager.rooms.get(NAMESPACE, {}).get(channel, ()))

    @sio.on("subscribe")
    async def subscribe(sid, data):
        channel = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(channel, str):
            return {"type": "error", "code": "bad_request"}
        await sio.enter_room(sid, channel)
        return {"type": "subscribed", "channel": channel, "subscriberCount": room_size(channel)}

    async def publish(request: web.Request) -> web.Response:
        env = envelope(await request.json())
        await sio.emit("channel_message", env, room=env["channel"])
        return web.json_response({"messageId": env["messageId"], "recipients": room_size(env["channel"])})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "connections": len(sio.eio.sockets)})

    app.router.add_post("/publish", publish)
    app.router.add_post("/api/publish", publish)
    app.router.add_get("/readyz", readyz)
    return app


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gc-threshold", default="",
                   help="gc.set_threshold(a,b,c) before serving, e.g. 50000,50,1000 (default: CPython's, untouched)")


def main() -> None:
    run_app(make_app, __doc__.splitlines()[0], add_arguments, banner=f"python-socketio={version('python-socketio')}")


if __name__ == "__main__":
    main()
