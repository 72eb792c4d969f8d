// The official Socket.IO client (socket.io-client, pinned in package.json), driven line by
// line from pytest (tests/test_socketio_clients.py).
//
//   node client.mjs '{"url":"http://127.0.0.1:PORT","token":"<jwt>","transports":["websocket"]}'
//
// Options (one JSON object, argv[2]): url (required); token (sent as auth: {token}; none
// when absent); transports, upgrade, reconnectionDelay, reconnectionDelayMax, timeout
// (passed to io() when present, otherwise the client's defaults); deadlineMs (the whole
// run, default 60000: past it the script prints {"event":"deadline"} and exits 3).
//
// stdout: one JSON object per line, {"event": ..., "t": <ms since start>, ...}:
//   ready                         the socket was created (connection under way)
//   open       {transport}        the Engine.IO session is open (each time: reconnections too)
//   upgrade    {transport, engineTransport}   the Engine.IO session moved to that transport
//   upgradeError {message}
//   connect    {id, recovered, transport, count}   the Socket.IO namespace is connected
//   connect_error {message, type, description, data, active}
//   disconnect {reason, description}
//   reconnect_attempt {attempt}, reconnect {attempt}
//   server     {name, args, transport}   an event the server emitted (every one: onAny)
//   ack        {id, reply}        the reply to an "emit" command
//   ack_timeout {id, message}     no reply in time
//   closed                        after a "close" command; the script then exits 0
// stdin: one JSON command per line:
//   {"cmd":"emit","id":"s1","event":"subscribe","data":{...},"timeoutMs":5000}
//   {"cmd":"close"}
// The end of stdin (pytest gone) closes the socket and exits too.

import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const started = Date.now();
const options = JSON.parse(process.argv[2] ?? "{}");
if (!options.url) {
  process.stderr.write("usage: node client.mjs '{\"url\":\"http://127.0.0.1:PORT\",...}'\n");
  process.exit(2);
}

function out(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now() - started, ...fields }) + "\n");
}

const ioOptions = { forceNew: true };
if (options.token !== undefined && options.token !== null) ioOptions.auth = { token: options.token };
for (const key of ["transports", "upgrade", "reconnectionDelay", "reconnectionDelayMax", "timeout"]) {
  if (options[key] !== undefined) ioOptions[key] = options[key];
}

const socket = io(options.url, ioOptions);
const manager = socket.io;
const transportName = () => manager.engine?.transport?.name ?? null;
let connects = 0;
let finished = false;

function finish(code) {
  if (finished) return;
  finished = true;
  socket.close();
  // Let stdout drain before leaving.
  process.stdout.write("", () => process.exit(code));
}

const deadline = setTimeout(() => {
  out("deadline", { ms: options.deadlineMs ?? 60000 });
  finish(3);
}, options.deadlineMs ?? 60000);
deadline.unref?.();

// Each (re)connection makes a new Engine.IO socket: hook it when it opens.
manager.on("open", () => {
  const engine = manager.engine;
  out("open", { transport: engine.transport?.name ?? null });
  engine.on("upgrade", (transport) => out("upgrade", { transport: transport.name, engineTransport: transportName() }));
  engine.on("upgradeError", (err) => out("upgradeError", { message: String(err?.message ?? err) }));
});
manager.on("reconnect_attempt", (attempt) => out("reconnect_attempt", { attempt }));
manager.on("reconnect", (attempt) => out("reconnect", { attempt }));

socket.on("connect", () => {
  connects += 1;
  out("connect", { id: socket.id, recovered: socket.recovered, transport: transportName(), count: connects });
});
socket.on("connect_error", (err) => {
  out("connect_error", {
    message: err?.message ?? String(err),
    type: err?.type ?? null, // "TransportError" when the transport failed, none for a CONNECT_ERROR packet
    description: err?.description === undefined ? null : String(err.description),
    data: err?.data ?? null,
    active: socket.active, // false: the client will not retry by itself
  });
});
socket.on("disconnect", (reason, details) => {
  out("disconnect", { reason, description: details?.description === undefined ? null : String(details.description) });
});
socket.onAny((name, ...args) => out("server", { name, args, transport: transportName() }));

const commands = createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
  } catch (err) {
    out("bad_command", { line, message: String(err) });
    return;
  }
  if (command.cmd === "emit") {
    try {
      const reply = await socket.timeout(command.timeoutMs ?? 5000).emitWithAck(command.event, command.data);
      out("ack", { id: command.id ?? null, reply });
    } catch (err) {
      out("ack_timeout", { id: command.id ?? null, message: String(err?.message ?? err) });
    }
  } else if (command.cmd === "close") {
    out("closed");
    finish(0);
  } else {
    out("bad_command", { line });
  }
});
commands.on("close", () => finish(0));

out("ready", { transports: ioOptions.transports ?? null });
