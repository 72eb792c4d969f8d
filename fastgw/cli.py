"""Command line: ``fastgw serve``, ``fastgw token``, ``fastgw loadtest`` and the rest. Every ``serve`` flag is
also ``FASTGW_<NAME>``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click

from fastgw import __version__
from fastgw.config import Config, system_somaxconn

#: ``fastgw loadtest`` scenarios (``fastgw.loadtest.controller.SCENARIOS``; not imported here
#: so that the CLI starts without the load test's modules)
LOADTEST_SCENARIOS = ("idle", "fanout", "bmtc", "storm")


def _read_key(value: str | None) -> str | None:
    """A key given inline (PEM text) or as a path to a PEM file."""
    if not value:
        return None
    if "-----BEGIN" in value:
        return value
    return Path(value).read_text()


@click.group()
@click.version_option(__version__, prog_name="fastgw")
def main() -> None:
    """fastgw: real-time WebSocket gateway for the BMTC transit app."""


@main.command()
@click.option("--host", envvar="FASTGW_HOST", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", envvar="FASTGW_PORT", default=8080, show_default=True, type=int)
@click.option("--max-connections", envvar="FASTGW_MAX_CONNECTIONS", default=10_000, show_default=True, type=int,
              help="Open WebSockets beyond which upgrades get HTTP 503 + Retry-After.")
@click.option("--jwt-secret", envvar="FASTGW_JWT_SECRET", default=None, help="HS256 secret for client tokens.")
@click.option("--jwt-public-key", envvar="FASTGW_JWT_PUBLIC_KEY", default=None,
              help="RS256 public key: PEM text or a path to a PEM file.")
@click.option("--allow-anonymous/--no-allow-anonymous", envvar="FASTGW_ALLOW_ANONYMOUS", default=False,
              help="Public channels without a token (always on when no key is configured).")
@click.option("--no-simulator", envvar="FASTGW_NO_SIMULATOR", is_flag=True, default=False,
              help="Do not run the built-in BMTC bus simulator.")
@click.option("--simulator", "force_simulator", envvar="FASTGW_SIMULATOR", is_flag=True, default=False,
              help="Run the simulator even with --kafka (it is on by default only without Kafka).")
@click.option("--kafka", envvar="FASTGW_KAFKA", default=None, metavar="HOST:PORT",
              help="Consume location reports, alerts, notifications and user events from Kafka.")
@click.option("--kafka-topic", "kafka_topics", envvar="FASTGW_KAFKA_TOPIC", multiple=True, metavar="ROLE=TOPIC",
              help="Override a topic (roles: location, alerts, notifications, user_events). Repeatable.")
@click.option("--kafka-group-prefix", envvar="FASTGW_KAFKA_GROUP_PREFIX", default="fastgw", show_default=True,
              help="Consumer group of each role is PREFIX.ROLE.")
@click.option("--kafka-dlq-topic", envvar="FASTGW_KAFKA_DLQ_TOPIC", default="fastgw.dlq", show_default=True,
              help="Dead-letter topic for records that fail validation.")
@click.option("--simulator-buses", envvar="FASTGW_SIMULATOR_BUSES", default=200, show_default=True, type=int)
@click.option("--heartbeat", envvar="FASTGW_HEARTBEAT", default=30.0, show_default=True, type=float,
              help="Seconds between pings; no pong within half of it closes the connection.")
@click.option("--max-subscriptions", envvar="FASTGW_MAX_SUBSCRIPTIONS", default=64, show_default=True, type=int)
@click.option("--max-frame-size", envvar="FASTGW_MAX_FRAME_SIZE", default=65536, show_default=True, type=int,
              help="Largest client frame in bytes; larger ones close with 1009.")
@click.option("--outbound-limit", envvar="FASTGW_OUTBOUND_LIMIT", default=1024 * 1024, show_default=True, type=int,
              help="Bytes buffered per connection before it is closed as a slow consumer (4008).")
@click.option("--window-full", envvar="FASTGW_WINDOW_FULL", default=0, show_default=True, type=int,
              help="Flush window of the full profile, ms (0 = write each message at once).")
@click.option("--window-cellular", envvar="FASTGW_WINDOW_CELLULAR", default=100, show_default=True, type=int,
              help="Flush window of the cellular profile, ms.")
@click.option("--window-slow", envvar="FASTGW_WINDOW_SLOW", default=500, show_default=True, type=int,
              help="Flush window of the slow profile, ms.")
@click.option("--backlog", envvar="FASTGW_BACKLOG", default=None, type=int,
              help="Listen backlog [default: net.core.somaxconn].")
@click.option("--redis", envvar="FASTGW_REDIS", default=None, metavar="URL",
              help="redis://HOST:PORT/DB: many gateway processes act as one (broker, presence, offline queues, "
                   "resume history in Redis).")
@click.option("--redis-cluster", envvar="FASTGW_REDIS_CLUSTER", is_flag=True, default=False,
              help="--redis names a Redis Cluster node; use sharded pub/sub (Redis >= 7).")
@click.option("--redis-prefix", envvar="FASTGW_REDIS_PREFIX", default="fastgw", show_default=True,
              help="Prefix of every Redis key and channel.")
@click.option("--workers", envvar="FASTGW_WORKERS", default=1, show_default=True, type=int,
              help="Worker processes sharing the port (SO_REUSEPORT); above 1 needs --redis.")
@click.option("--offline-max-messages", envvar="FASTGW_OFFLINE_MAX_MESSAGES", default=100, show_default=True,
              type=int, help="Notifications kept per offline user (newest kept).")
@click.option("--offline-retention", envvar="FASTGW_OFFLINE_RETENTION", default=86400.0, show_default=True,
              type=float, help="Seconds an offline notification is kept.")
@click.option("--resume-grace", envvar="FASTGW_RESUME_GRACE", default=120.0, show_default=True, type=float,
              help="Seconds a disconnected session can be resumed.")
@click.option("--history-size", envvar="FASTGW_HISTORY_SIZE", default=1000, show_default=True, type=int,
              help="Messages of recent history kept per channel for session resume.")
@click.option("--history-ttl", envvar="FASTGW_HISTORY_TTL", default=150.0, show_default=True, type=float,
              help="Seconds of recent history kept per channel for session resume.")
@click.option("--connect-rate-per-ip", envvar="FASTGW_CONNECT_RATE_PER_IP", default=50.0, show_default=True,
              type=float, help="New connections per second per source IP (token bucket; 0 = off); over it: 429.")
@click.option("--connect-burst-per-ip", envvar="FASTGW_CONNECT_BURST_PER_IP", default=500, show_default=True, type=int)
@click.option("--connect-rate", envvar="FASTGW_CONNECT_RATE", default=1000.0, show_default=True, type=float,
              help="New connections per second for the instance (token bucket; 0 = off); over it: 503.")
@click.option("--connect-burst", envvar="FASTGW_CONNECT_BURST", default=2000, show_default=True, type=int)
@click.option("--ready-high-water", envvar="FASTGW_READY_HIGH_WATER", default=0.9, show_default=True, type=float,
              help="/readyz turns 503 above this fraction of --max-connections.")
@click.option("--drain-period", envvar="FASTGW_DRAIN_PERIOD", default=30.0, show_default=True, type=float,
              help="SIGTERM: seconds over which clients are told to reconnect (jittered) and closed.")
@click.option("--tls-cert", envvar="FASTGW_TLS_CERT", default=None, metavar="PEM", help="Serve wss:// and https://.")
@click.option("--tls-key", envvar="FASTGW_TLS_KEY", default=None, metavar="PEM")
@click.option("--allowed-origins", envvar="FASTGW_ALLOWED_ORIGINS", default="", metavar="ORIGIN[,ORIGIN]",
              help="Origins accepted on WebSocket upgrades (default: any).")
@click.option("--jwt-issuer", envvar="FASTGW_JWT_ISSUER", default=None, help="Required iss claim.")
@click.option("--jwt-audience", envvar="FASTGW_JWT_AUDIENCE", default=None, help="Required aud claim.")
@click.option("--log-format", envvar="FASTGW_LOG_FORMAT", default="text", show_default=True,
              type=click.Choice(["text", "json"]), help="json: one object per line with instance/session/user ids.")
@click.option("--influx-url", envvar="FASTGW_INFLUX_URL", default=None, metavar="URL",
              help="Push the metrics in InfluxDB line protocol to this write URL.")
@click.option("--influx-token", envvar="FASTGW_INFLUX_TOKEN", default=None)
@click.option("--influx-interval", envvar="FASTGW_INFLUX_INTERVAL", default=10.0, show_default=True, type=float)
@click.option("--socketio-ping-interval", envvar="FASTGW_SOCKETIO_PING_INTERVAL", default=25.0, show_default=True,
              type=float, help="Socket.IO: seconds between the server's Engine.IO pings.")
@click.option("--socketio-ping-timeout", envvar="FASTGW_SOCKETIO_PING_TIMEOUT", default=20.0, show_default=True,
              type=float, help="Socket.IO: seconds a client has to answer a ping before it is closed.")
@click.option("--socketio-max-payload", envvar="FASTGW_SOCKETIO_MAX_PAYLOAD", default=1_000_000,
              show_default=True, type=int, help="Socket.IO: largest message or polling request body, bytes.")
@click.option("--socketio-connect-timeout", envvar="FASTGW_SOCKETIO_CONNECT_TIMEOUT", default=45.0,
              show_default=True, type=float, help="Socket.IO: seconds a new session has to send its CONNECT.")
@click.option("--socketio-recovery/--no-socketio-recovery", envvar="FASTGW_SOCKETIO_RECOVERY", default=True,
              show_default=True, help="Socket.IO connection state recovery (pid/offset → session resume).")
@click.option("--log-level", envvar="FASTGW_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(
    host: str, port: int, max_connections: int, jwt_secret: str | None, jwt_public_key: str | None,
    allow_anonymous: bool, no_simulator: bool, force_simulator: bool, kafka: str | None,
    kafka_topics: tuple[str, ...], kafka_group_prefix: str, kafka_dlq_topic: str, simulator_buses: int, heartbeat: float,
    max_subscriptions: int, max_frame_size: int, outbound_limit: int, window_full: int, window_cellular: int,
    window_slow: int, backlog: int | None, redis: str | None, redis_cluster: bool, redis_prefix: str, workers: int,
    offline_max_messages: int, offline_retention: float, resume_grace: float, history_size: int,
    history_ttl: float, connect_rate_per_ip: float, connect_burst_per_ip: int, connect_rate: float,
    connect_burst: int, ready_high_water: float, drain_period: float, tls_cert: str | None, tls_key: str | None,
    allowed_origins: str, jwt_issuer: str | None, jwt_audience: str | None, log_format: str,
    influx_url: str | None, influx_token: str | None, influx_interval: float, socketio_ping_interval: float,
    socketio_ping_timeout: float, socketio_max_payload: int, socketio_connect_timeout: float,
    socketio_recovery: bool, log_level: str,
) -> None:
    """Run the gateway (single node, in-memory broker, built-in simulator by default)."""
    try:
        config = Config(
            host=host, port=port, max_connections=max_connections, jwt_secret=jwt_secret,
            jwt_public_key=_read_key(jwt_public_key), allow_anonymous=allow_anonymous,
            simulator=not no_simulator and (force_simulator or not kafka), simulator_buses=simulator_buses,
            kafka=kafka, kafka_topics=_parse_topics(kafka_topics), kafka_group_prefix=kafka_group_prefix,
            kafka_dlq_topic=kafka_dlq_topic, heartbeat=heartbeat,
            max_subscriptions=max_subscriptions, max_frame_size=max_frame_size, outbound_limit=outbound_limit,
            window_full_ms=window_full, window_cellular_ms=window_cellular, window_slow_ms=window_slow,
            backlog=backlog or system_somaxconn(), redis=redis, redis_cluster=redis_cluster,
            redis_prefix=redis_prefix, workers=workers, offline_max_messages=offline_max_messages,
            offline_retention=offline_retention, resume_grace=resume_grace, history_size=history_size,
            history_ttl=history_ttl, connect_rate_per_ip=connect_rate_per_ip,
            connect_burst_per_ip=connect_burst_per_ip, connect_rate=connect_rate, connect_burst=connect_burst,
            ready_high_water=ready_high_water, drain_period=drain_period, tls_cert=tls_cert, tls_key=tls_key,
            allowed_origins=tuple(o.strip() for o in allowed_origins.split(",") if o.strip()),
            jwt_issuer=jwt_issuer, jwt_audience=jwt_audience, log_format=log_format,
            influx_url=influx_url, influx_token=influx_token, influx_interval=influx_interval,
            socketio_ping_interval=socketio_ping_interval, socketio_ping_timeout=socketio_ping_timeout,
            socketio_max_payload=socketio_max_payload, socketio_connect_timeout=socketio_connect_timeout,
            socketio_recovery=socketio_recovery,
        )
        _check_startup(config)  # bad TLS files, origins or keys: a usage error, not a traceback
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from fastgw.logs import configure as configure_logging

    configure_logging(log_level, config.log_format, config.node_id)
    if not config.auth_configured:
        logging.getLogger("fastgw").warning(
            "no --jwt-secret or --jwt-public-key: anonymous access to public channels only; "
            "user, admin channels and /api/publish are unavailable"
        )
    from fastgw.system import raise_open_files_limit

    raise_open_files_limit(config.max_connections)
    _run(config)


def _check_startup(config: Config) -> None:
    """Everything ``serve`` can check before it starts; raises ``ValueError``."""
    from fastgw.auth import Authenticator
    from fastgw.security import check_allowed_origins, ssl_context

    ssl_context(config.tls_cert, config.tls_key)
    check_allowed_origins(config.allowed_origins)
    Authenticator(secret=config.jwt_secret, public_key=config.jwt_public_key,
                  allow_anonymous=config.anonymous_enabled, issuer=config.jwt_issuer, audience=config.jwt_audience)


def _parse_topics(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from fastgw.sources.kafka import DEFAULT_TOPICS

    parsed = []
    for pair in pairs:
        role, sep, topic = pair.partition("=")
        if not sep or role not in DEFAULT_TOPICS or not topic:
            raise click.BadParameter(f"{pair!r}: expected ROLE=TOPIC with ROLE one of {', '.join(DEFAULT_TOPICS)}",
                                     param_hint="--kafka-topic")
        parsed.append((role, topic))
    return tuple(parsed)


def _run(config: Config) -> None:
    import dataclasses
    import os

    from fastgw.server import Gateway
    from fastgw.workers import WORKER_COUNT_ENV, WORKER_GROUP_ENV, WORKER_INDEX_ENV, run_workers, serve_argv

    if config.workers > 1:  # this process supervises; the workers serve
        sys.exit(run_workers(config, serve_argv(click.get_current_context())))
    index = os.environ.get(WORKER_INDEX_ENV)  # set by the supervisor, not a user flag
    if index is not None:
        if not index.isdigit():
            raise click.UsageError(f"{WORKER_INDEX_ENV}={index!r}: expected a worker index 0, 1, ...")
        # only worker 0 runs the simulator: N simulators would publish every bus N times
        count = os.environ.get(WORKER_COUNT_ENV, "1")
        config = dataclasses.replace(config, reuse_port=True, worker_index=int(index),
                                     simulator=config.simulator and int(index) == 0,
                                     worker_group=os.environ.get(WORKER_GROUP_ENV),
                                     worker_count=int(count) if count.isdigit() else 1)
        logging.getLogger("fastgw").info("worker %s (pid %d, node %s)", index, os.getpid(), config.node_id)

    async def serve_until_signalled() -> None:
        gateway = Gateway(config)
        try:
            await gateway.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log = logging.getLogger("fastgw")
        for sig in (signal.SIGINT, signal.SIGTERM):  # a repeated signal must not cut the drain short
            loop.add_signal_handler(sig, log.info, "already stopping")
        log.info("stopping: closing %d connections", len(gateway.connections))
        await gateway.stop(drain_period=config.drain_period)

    try:
        import uvloop
    except ImportError:  # non-Linux platforms: the standard loop works, slower
        asyncio.run(serve_until_signalled())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_until_signalled())


@main.command()
@click.option("--kafka", envvar="FASTGW_KAFKA", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers.")
@click.option("--buses", default=200, show_default=True, type=int, help="Simulated buses (spread over the 40 routes).")
@click.option("--rate", default=200.0, show_default=True, type=float, help="Location reports per second, in all.")
@click.option("--format", "fmt", type=click.Choice(["json", "gtfs-rt"]), default="json", show_default=True)
@click.option("--duration", default=60.0, show_default=True, type=float, help="Seconds to run.")
@click.option("--topic", default="location-updates", show_default=True)
@click.option("--seed", default=None, type=int, help="Seed for the simulator's noise (reproducible runs).")
def simulate(kafka: str, buses: int, rate: float, fmt: str, duration: float, topic: str, seed: int | None) -> None:
    """Produce simulated BMTC bus location reports to Kafka (JSON LocationData or GTFS-RT)."""
    from fastgw.sources.reports import produce_reports

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    produced = asyncio.run(produce_reports(
        kafka, topic=topic, buses=buses, rate=rate, fmt=fmt, duration=duration, seed=seed))  # type: ignore[arg-type]
    click.echo(f"produced {produced} location reports to {topic}")


@main.command("socketio-conformance")
@click.option("--host", default="localhost", show_default=True,
              help="Interface; localhost listens on 127.0.0.1 and ::1.")
@click.option("--port", default=3000, show_default=True, type=int)
def socketio_conformance(host: str, port: int) -> None:
    """Serve the reference server of the official Engine.IO v4 / Socket.IO v5 protocol
    test suites (echo at /engine.io/, namespaces / and /custom at /socket.io/)."""
    import uvloop

    from fastgw.socketio.conformance import serve

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(host, port))


@main.command()
@click.option("--sub", required=True, help="User id (the token's subject).")
@click.option("--admin", is_flag=True, default=False, help="Mark the token as an admin token.")
@click.option("--ttl", default=3600, show_default=True, type=int, help="Seconds until the token expires.")
@click.option("--jwt-secret", envvar="FASTGW_JWT_SECRET", default=None, help="HS256 secret (as for serve).")
@click.option("--jwt-private-key", envvar="FASTGW_JWT_PRIVATE_KEY", default=None,
              help="RS256 private key: PEM text or a path to a PEM file.")
@click.option("--iss", envvar="FASTGW_JWT_ISSUER", default=None,
              help="iss claim (as serve's --jwt-issuer, whose env var it reads too).")
@click.option("--aud", envvar="FASTGW_JWT_AUDIENCE", default=None,
              help="aud claim (as serve's --jwt-audience, whose env var it reads too).")
def token(sub: str, admin: bool, ttl: int, jwt_secret: str | None, jwt_private_key: str | None,
          iss: str | None, aud: str | None) -> None:
    """Print a signed JWT for the configured secret or private key."""
    from fastgw.auth import mint_token

    if not jwt_secret and not jwt_private_key:
        raise click.UsageError("set --jwt-secret (or FASTGW_JWT_SECRET) or --jwt-private-key")
    try:
        click.echo(mint_token(sub, secret=jwt_secret, private_key=_read_key(jwt_private_key), admin=admin, ttl=ttl,
                              issuer=iss, audience=aud))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.argument("scenario_arg", metavar="[SCENARIO]", required=False,
                type=click.Choice(LOADTEST_SCENARIOS))
@click.option("--scenario", type=click.Choice(LOADTEST_SCENARIOS), default=None,
              help="idle: N clients with heartbeats for --duration; fanout: one channel, N subscribers, "
                   "--rate messages/s for --duration; bmtc: Kafka + simulated location reports at "
                   "--report-rate, the BMTC subscription mix; storm: every client dropped at once "
                   "(--trigger), back with backoff and jitter [default: fanout].")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True,
              help="The gateway (http:// or ws://; the path is chosen by --protocol).")
@click.option("-n", "--clients", default=1000, show_default=True, type=int, help="WebSocket clients to open.")
@click.option("--protocol", type=click.Choice(["native", "socketio"]), default="native", show_default=True,
              help="native: /ws; socketio: /socket.io/ (Engine.IO v4 over WebSocket).")
@click.option("--processes", default=0, type=int,
              help="Client processes (at most ~15,000 clients each) [default: auto].")
@click.option("--sources", default="auto", show_default=True,
              help="Source addresses: auto (127.0.0.2... one per 25,000 clients on a loopback target), "
                   "a count of loopback addresses, addresses A,B,..., or none.")
@click.option("--jwt-secret", envvar="FASTGW_JWT_SECRET", default=None,
              help="HS256 secret: a token per client (user lt0, lt1, ...) and an admin token to publish. "
                   "Without it the clients are anonymous.")
@click.option("--admin-token", envvar="FASTGW_ADMIN_TOKEN", default=None,
              help="Admin token for POST /api/publish (default: minted with --jwt-secret).")
@click.option("--publish-url", default=None, metavar="URL",
              help="fanout: where to POST the messages (a URL, or host:port for its /api/publish) "
                   "[default: the target's /api/publish].")
@click.option("--user-prefix", default="lt", show_default=True, help="User ids are PREFIX0, PREFIX1, ...")
@click.option("--profile-mix", default=None, metavar="full=0.6,cellular=0.3,slow=0.1",
              help="Wire profiles (?profile=) in these proportions [default: all full].")
@click.option("--duration", default=None, type=float,
              help="Seconds to publish (fanout) or to hold the connections (idle) "
                   "[default: fanout 10, idle 60: two default heartbeats].")
@click.option("--rate", default=10.0, show_default=True, type=float, help="fanout: messages per second.")
@click.option("--channel", default=None, help="fanout: the channel [default: the busiest route direction].")
@click.option("--channels-per-client", "-k", default=3, show_default=True, type=int,
              help="idle: route/stop channels per client (Zipf-like popularity; 0: none).")
@click.option("--notification-share", default=0.2, show_default=True, type=float,
              help="idle: share of users that also subscribe to user:{id}:notifications (with tokens).")
@click.option("--route-share", default=0.5, show_default=True, type=float,
              help="idle: share of the drawn channels that are routes (the rest are stops).")
@click.option("--zipf", "zipf_s", default=1.0, show_default=True, type=float,
              help="Zipf exponent of channel popularity (0: uniform).")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the plan (reproducible).")
@click.option("--connect-rate", default=0.0, show_default=True, type=float,
              help="New connections per second in all (0: as fast as --concurrency allows).")
@click.option("--concurrency", default=200, show_default=True, type=int,
              help="Handshakes in flight per client process.")
@click.option("--retries", default=2, show_default=True, type=int,
              help="Extra attempts per client after a 503/429/timeout/reset.")
@click.option("--attempt-timeout", default=20.0, show_default=True, type=float,
              help="Seconds for one connection attempt (TCP, upgrade, subscribes).")
@click.option("--connect-deadline", default=600.0, show_default=True, type=float,
              help="Seconds for the whole connect phase.")
@click.option("--drain-timeout", default=15.0, show_default=True, type=float,
              help="fanout: seconds to wait for the last deliveries after the last publish.")
@click.option("--trigger", default="drop", show_default=True, type=click.Choice(["drop", "kill", "term"]),
              help="storm: drop: the clients cut every connection at once (a network outage); kill / term: "
                   "SIGKILL / SIGTERM (drain) to the gateway's processes, for `fastgw serve --workers N`, "
                   "whose supervisor restarts them.")
@click.option("--reconnect-base", default=0.5, show_default=True, type=float,
              help="storm: a client's first reconnect waits a random [0, BASE] s; each failed attempt doubles it.")
@click.option("--reconnect-cap", default=8.0, show_default=True, type=float,
              help="storm: the longest reconnect delay, seconds (a gateway's Retry-After is honoured up to it).")
@click.option("--outage", default=2.0, show_default=True, type=float,
              help="storm --trigger drop: seconds the network stays down after the drop "
                   "(the notifications are published meanwhile).")
@click.option("--storm-deadline", default=60.0, show_default=True, type=float,
              help="storm: seconds for every client to be back and resubscribed.")
@click.option("--notifications", default=1, show_default=True, type=int,
              help="storm: notifications published to each notification user while the clients are away.")
@click.option("--kafka", default=None, metavar="HOST:PORT",
              help="bmtc: the Kafka bootstrap servers the gateway consumes from.")
@click.option("--kafka-topic", default="location-updates", show_default=True,
              help="bmtc: the location reports' topic.")
@click.option("--report-rate", default=1000.0, show_default=True, type=float,
              help="bmtc: simulated location reports per second.")
@click.option("--buses", default=1000, show_default=True, type=int, help="bmtc: simulated buses at most.")
@click.option("--server-pid", "server_pids", multiple=True, type=int,
              help="Gateway process to measure (repeatable) [default: the processes listening on the port].")
@click.option("--report", "report_path", default=None, metavar="PATH",
              help="JSON report [default: loadtest-<scenario>-<UTC time>.json].")
@click.option("--chart", "chart_path", default=None, metavar="PATH", help="PNG chart (matplotlib).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr (only on a terminal).")
def loadtest(scenario_arg: str | None, scenario: str | None, url: str, clients: int, protocol: str, processes: int,
             sources: str, jwt_secret: str | None, admin_token: str | None, publish_url: str | None,
             user_prefix: str,
             profile_mix: str | None, duration: float | None, rate: float, channel: str | None,
             channels_per_client: int, notification_share: float, route_share: float, zipf_s: float, seed: int, connect_rate: float,
             concurrency: int, retries: int, attempt_timeout: float, connect_deadline: float, drain_timeout: float,
             trigger: str, reconnect_base: float, reconnect_cap: float, outage: float, storm_deadline: float,
             notifications: int,
             kafka: str | None, kafka_topic: str, report_rate: float, buses: int,
             server_pids: tuple[int, ...], report_path: str | None, chart_path: str | None, progress: bool) -> None:
    """Open many WebSocket clients against a gateway and report what it held: connect rate and
    failures, deliveries/s, end-to-end latency, losses, gateway RSS per connection.

    Exit status 0 when every client connected and stayed, and nothing was lost; 1 otherwise
    (the report says why)."""
    from fastgw.loadtest import controller, report
    from fastgw.loadtest.progress import make_progress

    if scenario_arg and scenario and scenario_arg != scenario:
        raise click.UsageError(f"scenario {scenario_arg!r} and --scenario {scenario!r} disagree")
    chosen = scenario_arg or scenario or "fanout"
    cfg = controller.LoadtestConfig(
        scenario=chosen, url=url, clients=clients, protocol=protocol, processes=processes, sources=sources,
        jwt_secret=jwt_secret, admin_token=admin_token, publish_url=publish_url, user_prefix=user_prefix,
        profile_mix=profile_mix,
        duration=duration if duration is not None else (60.0 if chosen == "idle" else 10.0), rate=rate,
        channel=channel, channels_per_client=channels_per_client,
        notification_share=notification_share, route_share=route_share, zipf_s=zipf_s, seed=seed,
        connect_rate=connect_rate, concurrency=concurrency, retries=retries, attempt_timeout=attempt_timeout,
        connect_deadline=connect_deadline, drain_timeout=drain_timeout, server_pids=server_pids,
        trigger=trigger, reconnect_base=reconnect_base, reconnect_cap=reconnect_cap, outage=outage,
        storm_deadline=storm_deadline,
        notifications=notifications, kafka=kafka, kafka_topic=kafka_topic, report_rate=report_rate, buses=buses,
        report_path=report_path or report.default_report_path(chosen), chart_path=chart_path,
    )
    try:
        controller.check_config(cfg)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    import faulthandler

    import uvloop

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where is it?

    async def run() -> dict:
        # Ctrl-C and SIGTERM cancel the run, whose cleanup stops the client processes by pid.
        # Installed here, not left to asyncio.Runner: a process started in the background by
        # a non-interactive shell inherits SIGINT ignored, and Runner then leaves it ignored.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await controller.run_loadtest(cfg, make_progress(progress))

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted: client processes stopped, no report written", err=True)
        sys.exit(130)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    report.render_table(result)
    click.echo(f"report: {cfg.report_path}" + (f"  chart: {cfg.chart_path}" if cfg.chart_path else ""))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
