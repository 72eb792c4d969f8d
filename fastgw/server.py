"""The gateway process: aiohttp routes, WebSocket upgrade, auth, lifecycle. Kept thin.

Protocol decoding lives in ``protocol.native``, fan-out in ``hub``, the bytes
hot path in ``core``; this module wires them to sockets.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from types import ModuleType
from typing import Any, Callable

import orjson
from aiohttp import web

from fastgw import admin, influx, logs, metrics, native_ws, security
from fastgw import core as default_core
from fastgw.auth import AuthError, Authenticator, token_from_request_parts
from fastgw.channels import Access, Channel, InvalidChannel, Principal, can_subscribe, parse_channel
from fastgw.config import Config
from fastgw.connection import Connection
from fastgw.engines import build_engine
from fastgw.engines.base import Engine, notification_owner
from fastgw.hub import Hub
from fastgw.messages import MESSAGE_TYPES, MessageIds, iso_now
from fastgw.profiles import (
    ZSTD_SUBPROTOCOL,
    Compression,
    Encoding,
    UnknownProfile,
    get_profile,
    profile_for_connection_type,
)
from fastgw.protocol import native
from fastgw.ratelimit import ConnectionLimiter
from fastgw.recovery import Recovery
from fastgw.responses import NoResponse
from fastgw.stats import CloseReason, Stats

__all__ = ["Gateway", "CLOSE_SLOW_CONSUMER"]

log = logging.getLogger("fastgw.server")

#: Seconds a drain waits for the Kafka consumers to commit their last batch.
KAFKA_STOP_TIMEOUT = 10.0

#: Accepted values of the ``device`` query parameter (anything else counts as unknown).
DEVICES = frozenset({"android", "ios", "web", "unknown"})

#: Private-use close code: the client did not read fast enough.
CLOSE_SLOW_CONSUMER = 4008
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_POLICY_VIOLATION = 1008


class Gateway:
    """One gateway instance. ``await start()``, then ``await stop()``."""

    def __init__(self, config: Config, *, core: ModuleType = default_core, engine: Engine | None = None) -> None:
        self.config = config
        self.core = core
        self.stats = Stats()
        #: Memory (one node) or Redis (many nodes acting as one): broker, offline
        #: queue, history, sessions, presence.
        self.port: int | None = None
        self.engine: Engine = engine or build_engine(config, port=lambda: self.port)
        self.broker = self.engine.broker
        self.offline = self.engine.offline
        self.hub = Hub(
            self.broker,
            stats=self.stats,
            core=core,
            ids=MessageIds(config.node_id),
            on_overflow=self._drop_slow_consumer,
            outbound_limit=config.outbound_limit,
            on_count_change=self.engine.presence.count_changed,
        )
        self.recovery = Recovery(self.hub, self.engine, max_subscriptions=config.max_subscriptions)
        #: Sessions of connections closed by the server, taken before unsubscribing them.
        self._closing_snapshots: dict[Connection, Any] = {}
        self.auth = Authenticator(
            secret=config.jwt_secret,
            public_key=config.jwt_public_key,
            allow_anonymous=config.anonymous_enabled,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
        )
        self.connections: set[Connection] = set()
        #: Native WebSocket clients, from the upgrade until unregistered (``fastgw.native_ws``).
        self._native: set[native_ws.NativeWebSocket] = set()
        self.limiter = ConnectionLimiter(config.connect_rate_per_ip, config.connect_burst_per_ip,
                                         config.connect_rate, config.connect_burst)
        self.draining = False
        self._upgrading = 0  # upgrades in flight count toward the connection limit
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.kafka: Any = None  # KafkaSource when --kafka is set
        #: Background coroutines that must finish before the engine closes (session saves).
        self._background: set[asyncio.Task[Any]] = set()
        self.socketio = self._build_socketio()
        self.app = self._build_app()

    # --- lifecycle ---------------------------------------------------------

    def _build_socketio(self) -> Any:
        from fastgw.socketio.engine import EngineOptions
        from fastgw.socketio.gateway import GatewayNamespace
        from fastgw.socketio.server import SocketIOServer

        cfg = self.config
        options = EngineOptions(
            path="/socket.io/", ping_interval=cfg.socketio_ping_interval, ping_timeout=cfg.socketio_ping_timeout,
            max_payload=cfg.socketio_max_payload, allowed_origins=cfg.allowed_origins,
        )
        return SocketIOServer([GatewayNamespace(self)], options, self.core,
                              connect_timeout=cfg.socketio_connect_timeout, admit=self._admit)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background; ``stop`` waits for it before the engine closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=max(1024 * 1024, self.config.socketio_max_payload + 1024))
        app.add_routes(
            [
                web.get("/ws", self._handle_ws),
                web.post("/api/publish", self._handle_publish),
                web.get("/api/stats", self._handle_stats),
                web.get("/healthz", self._handle_healthz),
                web.get("/readyz", self._handle_readyz),
                web.get("/dict/{dict_id}", self._handle_dictionary),
                web.get("/api/instances", self._handle_instances),
                web.get("/api/presence/{user_id}", self._handle_presence),
            ]
        )
        self.socketio.add_routes(app)  # /socket.io/: Socket.IO v5 clients on the same hub
        metrics.add_routes(app, self)
        admin.add_routes(app, self)
        return app

    async def start(self) -> int:
        """Bind, listen with the configured backlog, start the simulator. Returns the port."""
        cfg = self.config
        tls = security.ssl_context(cfg.tls_cert, cfg.tls_key)  # bad files fail before anything starts
        sock = _listening_socket(cfg.host, cfg.port, reuse_port=cfg.reuse_port)
        self.port = sock.getsockname()[1]
        try:  # the engine first: the instance registers with its port before clients arrive
            await self.engine.start(self.hub.channels, lambda: list(self.connections))
        except BaseException:
            sock.close()
            raise
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, backlog=cfg.backlog, ssl_context=tls)
        await site.start()
        await self._start_handoff()
        self._tasks.append(asyncio.create_task(admin.stats_stream(self), name="fastgw-stats-stream"))
        self._tasks.append(asyncio.create_task(self._heartbeat_forever(), name="fastgw-heartbeat"))
        if cfg.influx_url:
            self._tasks.append(asyncio.create_task(influx.push_forever(self), name="fastgw-influx"))
        if cfg.simulator:
            self._start_simulator()
        if cfg.kafka:
            self._start_kafka()
        log.info(
            "fastgw listening on %s:%s (core=%s, engine=%s, anonymous=%s, simulator=%s)",
            cfg.host, self.port, _implementation_name(self.core), self.engine.status()["engine"],
            cfg.anonymous_enabled, cfg.simulator,
        )
        return self.port

    async def _start_handoff(self) -> None:
        """``--workers``: Socket.IO long-polling requests that reach the wrong worker are
        handed, connection and all, to the worker that owns the session."""
        cfg = self.config
        if cfg.worker_group is None or cfg.worker_index is None or cfg.worker_count < 2 or cfg.tls_cert:
            return
        from fastgw.socketio.handoff import Handoff, sid_prefix

        handoff = Handoff(cfg.worker_group, cfg.worker_index, cfg.worker_count)
        await handoff.start(self._accept_handed_over)
        self.socketio.engine.handoff = handoff
        self.socketio.engine.sid_prefix = sid_prefix(cfg.worker_index)

    def _accept_handed_over(self, sock: socket.socket, request: bytes) -> None:
        """Serve a connection another worker accepted, starting with its request."""

        async def serve() -> None:
            assert self._runner is not None and self._runner.server is not None
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            _, protocol = await loop.connect_accepted_socket(self._runner.server, sock)
            protocol.data_received(request)

        self.spawn(serve())

    def _start_simulator(self) -> None:
        from fastgw.sources.simulator import Simulator

        sim = Simulator(self.hub.publish, max_buses=self.config.simulator_buses, interval=self.config.simulator_interval)
        self._tasks.append(asyncio.create_task(sim.run(), name="fastgw-simulator"))

    def _start_kafka(self) -> None:
        from fastgw.processing.pipeline import build_processors
        from fastgw.sources.kafka import DEFAULT_TOPICS, KafkaSettings, KafkaSource

        cfg = self.config
        settings = KafkaSettings(
            bootstrap=cfg.kafka or "",
            topics={**DEFAULT_TOPICS, **dict(cfg.kafka_topics)},
            group_prefix=cfg.kafka_group_prefix,
            dlq_topic=cfg.kafka_dlq_topic,
        )
        self.kafka = KafkaSource(settings, self.hub.publish, build_processors(), settle=self.broker.flush)
        self._tasks.append(asyncio.create_task(self.kafka.run(), name="fastgw-kafka"))

    async def stop(self, drain_period: float = 0.0) -> None:
        """Drain and stop: ``/readyz`` 503 and new upgrades refused at once; every client
        told to reconnect, spread over ``drain_period`` (``fastgw.drain``), and closed
        with 1001 (its session saved for resume elsewhere); then the sources stop, what
        was published reaches the engine, and the port is released."""
        self.draining = True
        from fastgw.drain import drain

        await drain(self, drain_period)
        if self.kafka is not None:  # finish and commit the batch in hand, then stop
            self.kafka.stop()
            kafka_task = next((t for t in self._tasks if t.get_name() == "fastgw-kafka"), None)
            if kafka_task is not None:
                await asyncio.wait({kafka_task}, timeout=KAFKA_STOP_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.socketio.engine.handoff is not None:
            await self.socketio.engine.handoff.close()
        for conn in list(self.connections):
            if conn.close_reason is None:
                conn.close_reason = CloseReason.SHUTDOWN
            self._close_now(conn, CLOSE_GOING_AWAY, "server shutting down")
        self.socketio.close_all()  # Engine.IO sessions that never joined a namespace
        if self._runner is not None:
            await self._runner.cleanup()  # handlers finish: sessions saved for resume elsewhere
            self._runner = None
        # native WebSockets end when their transports close (at the latest after the grace)
        await self._wait_native_closed(self.config.slow_close_grace + KAFKA_STOP_TIMEOUT)
        if self._background:
            await asyncio.wait(set(self._background), timeout=KAFKA_STOP_TIMEOUT)
        await self.engine.close()

    # --- WebSocket ---------------------------------------------------------

    def _admit(self, request: web.Request) -> web.Response | None:
        """None if a new client may connect now, else the refusal: draining or full
        (503), too many new connections (per source IP 429, instance 503), origin (403)."""
        cfg = self.config
        if self.draining:
            return self._refuse("draining", "instance is draining")
        if len(self.connections) + self._upgrading + len(self.socketio.unjoined) >= cfg.max_connections:
            return self._refuse("limit", "connection limit reached")
        reason, retry_after = self.limiter.admit(request.remote)
        if reason is not None:  # per source IP: 429; the instance as a whole: 503
            self.stats.rejected[reason] += 1
            return _json({"error": "rate_limited", "message": "too many new connections"},
                         status=429 if reason == "rate_ip" else 503, headers={"Retry-After": str(retry_after)})
        if not security.origin_allowed(request.headers.get("Origin"), cfg.allowed_origins):
            self.stats.rejected["origin"] += 1
            return _json({"error": "forbidden", "message": "origin not allowed"}, status=403)
        return None

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        """The upgrade to a native WebSocket. Once accepted, the connection leaves aiohttp:
        the ``101`` is written here and a ``native_ws.NativeWebSocket`` takes the
        transport (``fastgw.native_ws``: nothing of aiohttp is kept per client)."""
        cfg = self.config
        refusal = self._admit(request)
        if refusal is not None:
            return refusal
        try:
            principal = self.auth.authenticate(token_from_request_parts(request.headers, request.query))
        except AuthError as exc:
            self.stats.rejected["auth"] += 1
            log.debug("upgrade refused: %s", exc.reason, extra={"reason": "auth", "detail": exc.reason})
            raise _unauthorized(exc.reason) from None
        try:
            profile = get_profile(request.query.get("profile", "full"))
        except UnknownProfile as exc:
            return _bad_request(str(exc))
        # the subprotocol (zstd); permessage-deflate if the client offers it: the gateway
        # compresses each message on its own (no context takeover), so one frame still
        # serves many
        handshake = native_ws.negotiate(request, (ZSTD_SUBPROTOCOL,))
        detached = native_ws.detach(request)
        if detached is None:  # the client left during the handshake: nothing to log
            return NoResponse()
        transport, tail, paused = detached
        transport.write(handshake.response)
        encoding = Encoding(profile, _negotiated_compression(handshake))
        conn = self.new_connection(principal, transport, encoding, request.query.get("device"))
        protocol = native_ws.NativeWebSocket(self, conn, transport, compress=bool(handshake.compress),
                                             max_size=cfg.max_frame_size)
        transport.set_protocol(protocol)
        self._native.add(protocol)
        protocol.opened_at = self.register(conn)
        conn.send(self._welcome(conn))
        if paused:
            transport.resume_reading()
        if tail:  # frames the client sent right behind its request
            protocol.data_received(tail)
        return NoResponse()

    def native_closed(self, protocol: native_ws.NativeWebSocket) -> None:
        """A native WebSocket is over (transport closed, no command running): count it
        out, and save its session for a resume elsewhere."""
        if protocol not in self._native:
            return
        self._native.discard(protocol)
        conn = protocol.conn
        session = self.unregister(conn, protocol.opened_at)
        if session is not None:
            self.spawn(self.recovery.save(conn.session_id, session))

    async def _heartbeat_forever(self) -> None:
        """Ping silent native clients, close those that do not answer (``native_ws.sweep``)."""
        heartbeat = self.config.heartbeat
        interval = native_ws.sweep_interval(heartbeat)
        while True:
            await asyncio.sleep(interval)
            if self._native:
                native_ws.sweep(self._native, time.monotonic(), heartbeat)

    async def _wait_native_closed(self, timeout: float) -> None:
        """Stop: wait until every native WebSocket is over (its session saved), then
        give up on the commands still running."""
        deadline = time.monotonic() + timeout
        while self._native and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for protocol in list(self._native):
            protocol.abandon()
        await asyncio.sleep(0)
        for protocol in list(self._native):  # still there: its transport never reported the close
            protocol.transport.abort()
            self.native_closed(protocol)

    def new_connection(self, principal: Principal, transport: Any, encoding: Encoding, device: str | None,
                       session_id: str | None = None) -> Connection:
        """A hub connection with this instance's limits and the profile's flush window
        (``device``: the client's ``?device=``; unknown values count as ``unknown``)."""
        return Connection(
            session_id or secrets.token_urlsafe(12),
            principal,
            transport,
            outbound_limit=self.config.outbound_limit,
            core=self.core,
            on_overflow=self._drop_slow_consumer,
            encoding=encoding,
            window=self.config.window_for(encoding.profile.name),
            device=device if device in DEVICES else "unknown",
        )

    def register(self, conn: Connection) -> float:
        """Count a new connection in (presence, stats, logs); returns its opening time."""
        self.connections.add(conn)
        self.engine.presence.connected(conn.session_id, conn.principal.user_id, conn.device)
        self.stats.connections_opened += 1
        self.stats.connections_active = len(self.connections)
        logs.connection_opened(log, conn)
        return asyncio.get_running_loop().time()

    def unregister(self, conn: Connection, opened_at: float) -> Any:
        """Count a closed connection out: unsubscribed everywhere, presence, stats, logs.
        Returns its session record (to save for a resume elsewhere), or None."""
        session = self._closing_snapshots.pop(conn, None) or self.recovery.snapshot(conn)
        self.hub.remove(conn)
        self.connections.discard(conn)
        self.engine.presence.disconnected(conn.session_id, conn.principal.user_id)
        self.stats.connections_active = len(self.connections)
        reason = (conn.close_reason or CloseReason.NORMAL).value
        self.stats.connections_closed[reason] += 1
        logs.connection_closed(log, conn, reason, asyncio.get_running_loop().time() - opened_at)
        return session

    def _welcome(self, conn: Connection) -> bytes:
        compression: dict[str, Any] | None = None
        if conn.encoding.compression is Compression.ZSTD:
            codec = self.hub.codecs.zstd()
            compression = {"algorithm": "zstd", "dictId": codec.dict_id, "dictUrl": f"/dict/{codec.dict_id}"}
        elif conn.encoding.compression is Compression.DEFLATE:
            compression = {"algorithm": "permessage-deflate"}
        return native.welcome(
            conn.session_id, iso_now(), self.config.heartbeat,
            conn.encoding.profile.name, round(conn.window * 1000), compression,
        )

    def _binary_command(self, conn: Connection, data: bytes) -> tuple[str | None, int, str]:
        """A binary client frame: a zstd-compressed command on zstd connections, else refused.

        Returns ``(text, 0, "")``, or ``(None, close_code, reason)``.
        """
        if conn.encoding.compression is not Compression.ZSTD:
            return None, CLOSE_UNSUPPORTED_DATA, "binary frames are not accepted"
        from fastgw.compression import CompressionError, PayloadTooLarge

        try:
            raw = self.hub.codecs.zstd().decompress(data, self.config.max_frame_size)
            return raw.decode("utf-8"), 0, ""
        except PayloadTooLarge:
            return None, CLOSE_MESSAGE_TOO_BIG, "decompressed frame too large"
        except (CompressionError, UnicodeDecodeError):
            return None, CLOSE_INVALID_PAYLOAD, "invalid compressed frame"

    async def _handle_command(self, conn: Connection, text: str) -> None:
        """One client request. Awaited by the read loop: a client's requests run in order."""
        try:
            cmd = native.parse_command(text)
        except native.ProtocolError as exc:
            conn.send(native.error(exc.request_id, exc.code, exc.message))
            return
        await self.run_command(conn, cmd, conn.send)

    async def run_command(self, conn: Connection, cmd: native.Command, reply: Callable[[bytes], Any]) -> None:
        """Carry out one parsed request of ``conn``; ``reply`` sends the answer (native:
        a frame of its own; Socket.IO: the event's ack). Whatever follows the answer
        (held live messages, the offline queue) is sent after it."""
        if isinstance(cmd, native.Subscribe):
            answer, channel = await self._subscribe(conn, cmd)
            reply(answer)
            if channel is not None:
                self.recovery.go_live(conn, channel.name)  # what arrived while joining
            if channel is not None and channel.access is Access.OWNER:
                await self.recovery.replay_offline(conn)  # the user's own notifications, kept offline
        elif isinstance(cmd, native.Ack):
            await self.recovery.ack(conn, cmd.up_to)
        elif isinstance(cmd, native.Resume):
            await self.recovery.resume(conn, cmd, reply)
        elif isinstance(cmd, native.Unsubscribe):
            self.hub.unsubscribe(conn, cmd.channel)
            reply(native.unsubscribed(cmd.id, cmd.channel))
        elif isinstance(cmd, native.Hello):
            reply(self._hello(conn, cmd))
        else:
            reply(native.pong(cmd.id, iso_now()))

    async def _subscribe(self, conn: Connection, cmd: native.Subscribe) -> tuple[bytes, Channel | None]:
        """The reply to a subscribe request, and the channel if the subscription was made.

        The cluster-wide count and the history offset are fetched first. Then the
        connection joins with live messages held, until the broker confirms that
        messages published from now on reach this node; then the reply, the held
        messages and live ones follow in order: nothing published after ``subscribed``
        is missed, and nothing overtakes it.
        """
        try:
            channel = parse_channel(cmd.channel)
        except InvalidChannel as exc:
            return native.error(cmd.id, "invalid_channel", str(exc)), None
        if not can_subscribe(channel, conn.principal):
            return native.error(cmd.id, "forbidden", f"not allowed to subscribe to {channel.name}"), None
        limit = self.config.max_subscriptions
        if channel.name not in conn.subscriptions and len(conn.subscriptions) >= limit:
            self.stats.limited["subscriptions"] += 1
            return native.error(cmd.id, "limit", f"at most {limit} subscriptions per connection"), None
        name = channel.name
        local = self.hub.subscriber_count(name) + (name not in conn.subscriptions)
        count, offset = local, None
        try:
            count = await self.engine.presence.subscriber_count(name, local)
            if notification_owner(name) is None:
                offset = self.hub.position(name) or await self.engine.history.position(name)
        except Exception as exc:  # engine unreachable: this node's count, no offset
            log.debug("subscribe %s without cluster info: %s", name, exc)
        if conn.transport is None or conn.transport.is_closing():
            return native.error(cmd.id, "closed", "connection closed"), None
        self.hub.subscribe_recovering(conn, name, cmd.types)
        await self.broker.ready(name)
        if offset is not None:  # the resume point: held messages (sent next) come after it
            self.hub.set_position(name, offset)
        return native.subscribed(cmd.id, name, count, offset), channel

    def _hello(self, conn: Connection, cmd: native.Hello) -> bytes:
        try:
            if cmd.profile is not None:
                profile = get_profile(cmd.profile)
            else:
                profile = profile_for_connection_type(cmd.connection_type)
        except UnknownProfile as exc:
            return native.error(cmd.id, "bad_request", str(exc))
        window = self.config.window_for(profile.name)
        if profile != conn.encoding.profile or window != conn.window:
            self.hub.change_encoding(conn, Encoding(profile, conn.encoding.compression), window)
        return native.profile(cmd.id, profile.name, round(window * 1000))

    # --- closing -----------------------------------------------------------

    def _drop_slow_consumer(self, conn: Connection) -> None:
        if conn.close_reason is not None:
            return
        conn.close_reason = CloseReason.SLOW_CONSUMER
        log.info("slow consumer %s: over %d buffered bytes, closing", conn.session_id, conn.outbound_limit,
                 extra={**logs.connection_fields(conn), "reason": CloseReason.SLOW_CONSUMER.value})
        self._close_now(conn, CLOSE_SLOW_CONSUMER, "slow consumer")

    def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` now with ``code`` (its close reason set by the caller)."""
        self._close_now(conn, code, reason)

    def _close_now(self, conn: Connection, code: int, reason: str) -> None:
        """Queue a close frame behind what is buffered, close, and abort after a grace period.

        Not ``ws.close()``: that waits for the client's close reply, and a slow
        consumer is exactly the client that will not answer in time.
        """
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        snapshot = self.recovery.snapshot(conn)
        if snapshot is not None:
            self._closing_snapshots[conn] = snapshot  # saved when its handler ends
        self.hub.remove(conn)  # nothing more is written to it, queued batches dropped
        if conn.closer is not None:  # Socket.IO: its Engine.IO session closes
            conn.closer(code, reason)
            return
        transport.write(self.core.build_close_frame(code, reason))
        transport.close()
        asyncio.get_running_loop().call_later(self.config.slow_close_grace, transport.abort)

    # --- HTTP API ----------------------------------------------------------

    def _admin(self, request: web.Request) -> Principal:
        token = token_from_request_parts(request.headers, request.query)
        if not token:
            raise _unauthorized("missing token")
        try:
            principal = self.auth.authenticate(token)
        except AuthError as exc:
            raise _unauthorized(exc.reason) from None
        if not principal.admin:
            raise web.HTTPForbidden(text='{"error":"forbidden","message":"admin token required"}',
                                    content_type="application/json")
        return principal

    async def _handle_publish(self, request: web.Request) -> web.Response:
        self._admin(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _bad_request("body must be JSON")
        if not isinstance(body, dict):
            return _bad_request("body must be a JSON object")
        try:
            channel = parse_channel(body.get("channel"))
        except InvalidChannel as exc:
            return _bad_request(str(exc))
        message = body.get("message")
        if not isinstance(message, dict) or message.get("type") not in MESSAGE_TYPES:
            return _bad_request(f"message must be an object whose type is one of {sorted(MESSAGE_TYPES)}")
        message_id = self.hub.publish(channel.name, message)
        return _json({"messageId": message_id, "channel": channel.name})

    async def _handle_stats(self, request: web.Request) -> web.Response:
        self._admin(request)
        snapshot = self.stats.snapshot()
        snapshot["channels"] = self.hub.channels()
        if self.kafka is not None:
            k = self.kafka.stats
            snapshot["kafka"] = {
                "records": dict(k.records), "published": dict(k.published), "rejected": dict(k.rejected),
                "dead_lettered": k.dead_lettered, "commits": k.commits, "reconnects": k.reconnects,
            }
        snapshot["node"] = self.config.node_id
        snapshot["engine"] = self.engine.status()
        snapshot["recovery"] = {"offline_replayed": self.recovery.replayed, "resumes": self.recovery.resumes}
        snapshot["socketio"] = self.socketio.status()
        return _json(snapshot)

    async def _handle_instances(self, request: web.Request) -> web.Response:
        """Live gateway instances (one without Redis) and their connection counts."""
        self._admin(request)
        try:
            instances = await self.engine.presence.instances()
        except Exception as exc:
            return _json({"error": "unavailable", "message": str(exc)}, status=503)
        return _json({"instances": instances})

    async def _handle_presence(self, request: web.Request) -> web.Response:
        """Is a user online (any instance), and on how many devices."""
        self._admin(request)
        user_id = request.match_info["user_id"]
        try:
            presence = await self.engine.presence.user_presence(user_id)
        except Exception as exc:
            return _json({"error": "unavailable", "message": str(exc)}, status=503)
        return _json({"user": user_id, **presence})

    async def _handle_dictionary(self, request: web.Request) -> web.Response:
        """The zstd dictionary announced in ``welcome``: immutable, cacheable forever."""
        codec = self.hub.codecs.zstd()
        if request.match_info["dict_id"] != str(codec.dict_id):
            return _json({"error": "not_found", "message": "unknown dictionary id"}, status=404)
        return web.Response(
            body=codec.dictionary,
            content_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "node": self.config.node_id})

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        """503 while draining or full; 200 otherwise, ``degraded`` while the engine
        (Redis) is unreachable: the instance still serves its own subscribers."""
        if self.draining:
            return _json({"status": "draining"}, status=503)
        if len(self.connections) >= self.config.max_connections:
            return _json({"status": "full", "connections": len(self.connections)}, status=503)
        if len(self.connections) >= self.config.ready_high_water * self.config.max_connections:
            # still accepting, but the load balancer should send new clients elsewhere
            return _json({"status": "high_water", "connections": len(self.connections)}, status=503)
        engine = self.engine.status()
        status = "ready" if engine["ok"] else "degraded"
        return _json({"status": status, "connections": len(self.connections), "engine": engine})

    def _refuse(self, reason: str, message: str) -> web.Response:
        self.stats.rejected[reason] += 1
        return _json(
            {"error": reason, "message": message},
            status=503,
            headers={"Retry-After": str(self.config.retry_after)},
        )


def _negotiated_compression(handshake: native_ws.Handshake) -> Compression:
    if handshake.protocol == ZSTD_SUBPROTOCOL:
        return Compression.ZSTD
    if handshake.compress:
        return Compression.DEFLATE
    return Compression.NONE


def _implementation_name(core: ModuleType) -> str:
    name = getattr(core, "IMPLEMENTATION", None)  # the fastgw.core selector knows
    return name or ("python" if core.__name__.endswith("_py") else "cython")


def _listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # --workers: the kernel spreads new connections over the workers' sockets
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _json(obj: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json")


def _bad_request(message: str) -> web.Response:
    return _json({"error": "bad_request", "message": message}, status=400)


def _unauthorized(reason: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=orjson.dumps({"error": "unauthorized", "message": reason}).decode(),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
