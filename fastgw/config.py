"""Gateway configuration: one frozen value built from CLI flags and ``FASTGW_*`` env vars."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["Config", "system_somaxconn"]


def system_somaxconn(default: int = 4096) -> int:
    """The kernel's listen-backlog ceiling (``net.core.somaxconn``).

    aiohttp's default backlog of 128 drops SYNs when hundreds of clients
    reconnect at once, and each dropped client then waits a full second.
    """
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


@dataclass(frozen=True)
class Config:
    """Everything a gateway instance needs to know; see ``docs/operations.md``."""

    host: str = "0.0.0.0"
    port: int = 8080
    #: Beyond this many open WebSockets the upgrade is refused with 503 + Retry-After.
    max_connections: int = 10_000
    #: HS256 shared secret. Mutually exclusive with ``jwt_public_key``.
    jwt_secret: str | None = None
    #: RS256 public key (PEM text).
    jwt_public_key: str | None = None
    #: Let clients without a token subscribe to public channels.
    allow_anonymous: bool = False
    #: Run the built-in BMTC bus simulator (embedded single-node mode).
    simulator: bool = True
    simulator_buses: int = 200
    simulator_interval: float = 1.0
    #: Seconds between WebSocket pings; a pong must arrive within half of it.
    heartbeat: float = 30.0
    max_subscriptions: int = 64
    #: Largest client frame accepted; larger ones close the connection with 1009.
    max_frame_size: int = 64 * 1024
    #: Bytes a connection may have queued in its socket buffer before it is
    #: disconnected as a slow consumer (close 4008).
    outbound_limit: int = 1024 * 1024
    #: Seconds a slow consumer's socket may take to flush its close frame.
    slow_close_grace: float = 2.0
    #: Client requests per second (token bucket) and burst size.
    client_rate: float = 20.0
    client_burst: int = 40
    #: Requests over the rate, answered with errors, before the close with 1008.
    client_strikes: int = 10
    #: Listen backlog; defaults to the system maximum.
    backlog: int = field(default_factory=system_somaxconn)
    #: Flush windows per wire profile, milliseconds (0 = every message is written at once).
    window_full_ms: int = 0
    window_cellular_ms: int = 100
    window_slow_ms: int = 500
    #: Kafka bootstrap servers (``HOST:PORT[,HOST:PORT]``); None = no Kafka source.
    kafka: str | None = None
    #: role → topic overrides (roles: location, alerts, notifications, user_events).
    kafka_topics: tuple[tuple[str, str], ...] = ()
    kafka_group_prefix: str = "fastgw"
    kafka_dlq_topic: str = "fastgw.dlq"
    #: Seconds advertised in Retry-After when the instance refuses a connection.
    retry_after: int = 5
    node_id: str = field(default_factory=lambda: os.urandom(4).hex())
    #: Redis URL (``redis://HOST:PORT/DB``): broker, presence, offline queues, history and
    #: sessions live in Redis and many gateway processes act as one. None = in memory.
    redis: str | None = None
    #: ``redis`` names a seed node of a Redis Cluster; sharded pub/sub (Redis >= 7).
    redis_cluster: bool = False
    #: Prefix of every Redis key and pub/sub channel this gateway uses.
    redis_prefix: str = "fastgw"
    #: Messages kept for publishing while Redis is unreachable (beyond: counted as lost).
    redis_outage_buffer: int = 10_000
    #: Worker processes sharing the port (SO_REUSEPORT); more than one needs ``redis``.
    workers: int = 1
    #: Set in worker processes of ``--workers N``: bind with SO_REUSEPORT; index 0..N-1.
    reuse_port: bool = False
    worker_index: int | None = None
    #: Set in worker processes too: the supervisor's group name and the number of workers
    #: (Socket.IO long-polling connections are handed to the worker owning the session).
    worker_group: str | None = None
    worker_count: int = 1
    #: Offline queue per user: newest messages kept, and for how long (seconds).
    offline_max_messages: int = 100
    offline_retention: float = 24 * 3600.0
    #: Session resume: how long a disconnected session can be resumed (seconds), and the
    #: per-channel history it recovers from (entries, seconds).
    resume_grace: float = 120.0
    history_size: int = 1000
    history_ttl: float = 150.0
    #: Seconds between instance-registry refreshes (the entry lives three times as long).
    instance_refresh: float = 5.0
    #: New WebSocket connections per second (token bucket rate, burst) per source IP and
    #: for the whole instance; over them upgrades get 429 (per IP) or 503 (instance).
    connect_rate_per_ip: float = 50.0
    connect_burst_per_ip: int = 500
    connect_rate: float = 1000.0
    connect_burst: int = 2000
    #: ``/readyz`` turns 503 above this fraction of ``max_connections`` (load balancers
    #: stop sending new clients before the instance is full).
    ready_high_water: float = 0.9
    #: SIGTERM: seconds over which clients are told to reconnect (jittered) and closed.
    drain_period: float = 30.0
    #: Serve wss:// and https:// directly (PEM files).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Accepted ``Origin`` headers on upgrades (empty: any, including none).
    allowed_origins: tuple[str, ...] = ()
    #: Required JWT ``iss`` / ``aud`` (None: not checked).
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: ``text`` or ``json`` (one JSON object per line, with instance/session/user ids).
    log_format: str = "text"
    #: InfluxDB v2 write URL (``http://HOST:8086/api/v2/write?org=O&bucket=B``): the
    #: metrics are pushed there in line protocol every ``influx_interval`` seconds.
    influx_url: str | None = None
    influx_token: str | None = None
    influx_interval: float = 10.0
    #: Socket.IO (``/socket.io/``): Engine.IO heartbeat (the server pings every
    #: interval; no pong within the timeout closes), largest message or polling body,
    #: seconds a new session has to join a namespace, connection state recovery.
    socketio_ping_interval: float = 25.0
    socketio_ping_timeout: float = 20.0
    socketio_max_payload: int = 1_000_000
    socketio_connect_timeout: float = 45.0
    socketio_recovery: bool = True

    def __post_init__(self) -> None:
        if self.jwt_secret and self.jwt_public_key:
            raise ValueError("choose one of jwt_secret (HS256) and jwt_public_key (RS256)")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.workers > 1 and not self.redis:
            raise ValueError("--workers above 1 needs --redis: workers act as one gateway through Redis")
        if self.redis_cluster and not self.redis:
            raise ValueError("--redis-cluster needs --redis URL of a cluster node")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if not 0 < self.ready_high_water <= 1:
            raise ValueError("ready_high_water must be in (0, 1]")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format is text or json")
        if self.socketio_ping_interval <= 0 or self.socketio_ping_timeout <= 0:
            raise ValueError("the Socket.IO ping interval and timeout must be positive")
        if self.socketio_max_payload < 1024:
            raise ValueError("socketio_max_payload must be at least 1024 bytes")
        if self.offline_max_messages < 1 or self.history_size < 1:
            raise ValueError("offline_max_messages and history_size must be at least 1")

    def window_for(self, profile: str) -> float:
        """The flush window of ``profile`` in seconds."""
        return max(0, getattr(self, f"window_{profile}_ms")) / 1000.0

    @property
    def auth_configured(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)

    @property
    def anonymous_enabled(self) -> bool:
        """Anonymous access is on when asked for, or when no key is configured at all
        (a fresh ``fastgw serve`` then shows public channels; nothing else is reachable)."""
        return self.allow_anonymous or not self.auth_configured
