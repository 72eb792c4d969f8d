"""A raw Engine.IO / Socket.IO test client over aiohttp (WebSocket or long-polling).

It speaks the wire byte for byte, so tests can check exactly what the gateway sends
(frame-once bytes, ack ids, polling payloads) and send what no library would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


def base(port: int, path: str = "/socket.io/") -> str:
    return f"http://127.0.0.1:{port}{path}?EIO=4"


class RawWS:
    """An Engine.IO session over WebSocket. ``recv`` answers pings unless told not to."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, handshake: dict[str, Any]) -> None:
        self.ws = ws
        self.handshake = handshake
        self.sid = handshake["sid"]

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, port: int, query: str = "") -> "RawWS":
        ws = await http.ws_connect(base(port) + "&transport=websocket" + query)
        first = await ws.receive_str(timeout=5)
        assert first[0] == "0", first
        return cls(ws, json.loads(first[1:]))

    async def send(self, packet: str | bytes) -> None:
        if isinstance(packet, bytes):
            await self.ws.send_bytes(packet)
        else:
            await self.ws.send_str(packet)

    async def recv(self, timeout: float = 5.0, *, pong: bool = True) -> str | bytes:
        """The next text/binary frame other than a ping (answered); raises on close."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                raise ConnectionError(f"closed: {msg.data} {msg.extra}")
            data = msg.data
            if data == "2" and pong:
                await self.ws.send_str("3")
                continue
            return data

    async def connect(self, auth: dict[str, Any] | None = None, namespace: str = "") -> str:
        await self.send("40" + namespace + ("," if namespace else "") + (json.dumps(auth) if auth is not None else ""))
        return await self.recv()

    async def call(self, event: str, data: Any, ack_id: int = 1, timeout: float = 5.0) -> Any:
        """Emit ``event`` with an ack id; returns the ack's first argument (skipping
        events that arrive meanwhile)."""
        await self.send(f"42{ack_id}" + json.dumps([event, data]))
        prefix = f"43{ack_id}["
        while True:
            packet = await self.recv(timeout)
            if isinstance(packet, str) and packet.startswith(prefix):
                return json.loads(packet[len(prefix) - 1:])[0]

    async def event(self, timeout: float = 5.0) -> list[Any]:
        """The next event as ``[name, *args]``."""
        packet = await self.recv(timeout)
        assert isinstance(packet, str) and packet.startswith("42"), packet
        return json.loads(packet[2:])

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closed the connection (frames before that are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            try:
                msg = await self.ws.receive(timeout=left)
            except asyncio.TimeoutError:
                return False
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.ERROR):
                return True


class RawPolling:
    """An Engine.IO session over HTTP long-polling."""

    def __init__(self, http: aiohttp.ClientSession, port: int, handshake: dict[str, Any]) -> None:
        self.http = http
        self.port = port
        self.handshake = handshake
        self.sid = handshake["sid"]
        self.url = base(port) + "&transport=polling&sid=" + self.sid

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, port: int, query: str = "") -> "RawPolling":
        async with http.get(base(port) + "&transport=polling" + query) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            text = await resp.text()
        assert text[0] == "0", text
        return cls(http, port, json.loads(text[1:]))

    async def get(self, timeout: float = 5.0) -> tuple[int, str]:
        async with self.http.get(self.url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()

    async def post(self, body: str | bytes) -> tuple[int, str]:
        async with self.http.post(self.url, data=body) as resp:
            return resp.status, await resp.text()

    async def packets(self, timeout: float = 5.0) -> list[str]:
        """One GET's packets (pings answered with a POST ``3``)."""
        status, text = await self.get(timeout)
        assert status == 200, (status, text)
        packets = text.split("\x1e")
        if "2" in packets:
            assert (await self.post("3"))[0] == 200
        return [p for p in packets if p != "2"]
