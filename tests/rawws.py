"""A minimal raw-socket WebSocket client for tests that need control over reading.

Real TCP sockets, no mocks: it performs the HTTP upgrade, can stop reading (slow
consumer), can ignore pings (heartbeat timeout), and returns frames byte-exact.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

import orjson


class RawWebSocket:
    def __init__(
        self,
        port: int,
        path: str = "/ws",
        *,
        rcvbuf: int | None = None,
        host: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # must be set before connect to bound the TCP window
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{extra}\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.response_headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])
        }
        if self.status != 101:
            raise ConnectionError(f"upgrade refused: {head!r}")

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk

    def recv_raw(self, timeout: float = 10.0) -> bytes:
        """Whatever one ``recv`` returns (buffered bytes first): shows how writes were packed."""
        if self.buf:
            data, self.buf = self.buf, b""
            return data
        self.sock.settimeout(timeout)
        return self.sock.recv(1 << 20)

    def push_back(self, data: bytes) -> None:
        self.buf = data + self.buf

    def recv_frame(self, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
        """Returns ``(opcode, payload, raw_frame_bytes)``."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        length = self.buf[1] & 0x7F
        offset = 2
        if length == 126:
            self._fill(4, deadline)
            length = struct.unpack("!H", self.buf[2:4])[0]
            offset = 4
        elif length == 127:
            self._fill(10, deadline)
            length = struct.unpack("!Q", self.buf[2:10])[0]
            offset = 10
        self._fill(offset + length, deadline)
        raw = self.buf[: offset + length]
        self.buf = self.buf[offset + length :]
        return raw[0] & 0x0F, raw[offset:], raw

    def recv_json(self, timeout: float = 10.0) -> dict:
        while True:
            opcode, payload, _ = self.recv_frame(timeout)
            if opcode == 0x1:
                return orjson.loads(payload)
            if opcode == 0x8:
                raise ConnectionError(f"closed: {payload!r}")

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        mask = os.urandom(4)
        header = bytes((0x80 | opcode,))
        n = len(payload)
        if n < 126:
            header += bytes((0x80 | n,))
        elif n < 65536:
            header += bytes((0x80 | 126,)) + struct.pack("!H", n)
        else:
            header += bytes((0x80 | 127,)) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, obj: dict) -> None:
        self.send_frame(orjson.dumps(obj))

    def close(self) -> None:
        self.sock.close()
