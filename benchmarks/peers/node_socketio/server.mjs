// Node socket.io peer of benchmarks/test_bench_socketio.py: socket.io 4.8 (package.json pins the
// exact version) on Node's own http server, defaults kept (perMessageDeflate off, pingInterval
// 25 s, pingTimeout 20 s, in-memory adapter).
//
// What the benchmark fleet (benchmarks/fleet.py --mode socketio) sees, the same for every Socket.IO server:
//
// * `GET /socket.io/?EIO=4&transport=websocket` upgrades; Engine.IO open packet `0{...}`;
//   the client's `40` gets `40{"sid":...}`;
// * event `subscribe` with `{"channel": C}` and an ack id (`420["subscribe",{...}]`): the socket
//   joins room C, the ack is `430[{"type":"subscribed","channel":C,"subscriberCount":n}]`;
// * `POST /publish` (alias `/api/publish`) takes the gateway's body `{"channel", "message"}`,
//   wraps it in the gateway's envelope `{"type":"channel_message","channel","message",
//   "timestamp","messageId"}` (as benchmarks/peers/_peer.py does) and runs
//   `io.to(channel).emit("channel_message", envelope)` (socket.io encodes the packet and the
//   WebSocket frame once per broadcast); replies `{"messageId","recipients"}` once the emit
//   returned, i.e. once every recipient's frame was handed to its socket;
// * `GET /readyz` answers 200.
//
//     node benchmarks/peers/node_socketio/server.mjs --host 127.0.0.1 --port 8083
//
// The listen backlog is /proc/sys/net/core/somaxconn (thousands of clients connect at once).

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { Server } from "socket.io";

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "0"));
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node server.mjs --port PORT [--host HOST]");
  process.exit(2);
}

function somaxconn() {
  try {
    return Number(readFileSync("/proc/sys/net/core/somaxconn", "utf8").trim()) || 4096;
  } catch {
    return 4096;
  }
}

// The gateway's message ids: a random per-process prefix and a base-36 counter (as _peer.py).
const prefix = randomBytes(4).toString("hex") + "-";
let counter = 0;
const nextMessageId = () => prefix + (++counter).toString(36);

const roomSize = (channel) => io.sockets.adapter.rooms.get(channel)?.size ?? 0;

function reply(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

const httpServer = createServer((req, res) => {
  // (socket.io's own listener answers /socket.io/ and passes every other request here.)
  if (req.method === "GET" && req.url === "/readyz") {
    return reply(res, 200, { ready: true, connections: io.engine.clientsCount });
  }
  if (req.method === "POST" && (req.url === "/publish" || req.url === "/api/publish")) {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch (e) {
        return reply(res, 400, { error: "bad json" });
      }
      const channel = body.channel;
      const envelope = {
        type: "channel_message",
        channel,
        message: body.message,
        timestamp: new Date().toISOString(),
        messageId: nextMessageId(),
      };
      io.to(channel).emit("channel_message", envelope);
      reply(res, 200, { messageId: envelope.messageId, recipients: roomSize(channel) });
    });
    return;
  }
  reply(res, 404, { error: "not found" });
});
// The publisher keeps one HTTP connection alive for the whole benchmark (connect phase included).
httpServer.keepAliveTimeout = 0;

const io = new Server(httpServer, { serveClient: false });

io.on("connection", (socket) => {
  socket.on("subscribe", (data, ack) => {
    const channel = data && typeof data.channel === "string" ? data.channel : null;
    if (channel === null) {
      if (typeof ack === "function") ack({ type: "error", code: "bad_request" });
      return;
    }
    socket.join(channel);
    if (typeof ack === "function") {
      ack({ type: "subscribed", channel, subscriberCount: roomSize(channel) });
    }
  });
});

httpServer.listen({ host, port, backlog: somaxconn() }, () => {
  console.log(`listening on ${host}:${port} pid=${process.pid} node=${process.version} t=${Date.now() / 1000}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    io.close();
    httpServer.close();
    setTimeout(() => process.exit(0), 500).unref();
  });
}
