#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft: broker + controller in one JVM) for the
# tests and CI, without Docker: the jars come from Maven Central through `mvn`.
#
#   scripts/kafka.sh fetch                 download the broker jars into the cache (once)
#   scripts/kafka.sh start                 fetch if needed, format, start, wait until it answers,
#                                          then print KAFKA_BOOTSTRAP=127.0.0.1:PORT on stdout
#   scripts/kafka.sh stop [--keep-data]    stop it (TERM, then KILL) and remove its data, or keep
#                                          data + ports + config so that the next `start` resumes
#   scripts/kafka.sh restart               stop --keep-data, then start (same ports, same data)
#   scripts/kafka.sh status                "running pid N" + KAFKA_BOOTSTRAP=... (exit 0), or
#                                          "not running" (exit 3)
#
# Environment:
#   FASTGW_KAFKA_VERSION        broker version (default below)
#   FASTGW_KAFKA_HOME           jar cache root (default <repo>/.cache/kafka); jars in <home>/<version>/lib
#   FASTGW_KAFKA_RUN            state: config, pid, log, data (default <repo>/.cache/kafka/run)
#   FASTGW_KAFKA_PORT           broker port (default: a free loopback port)
#   FASTGW_KAFKA_CONTROLLER_PORT controller port (default: a free loopback port)
#   FASTGW_KAFKA_START_TIMEOUT  seconds to wait for the broker to answer (default 60)
#   FASTGW_KAFKA_STOP_TIMEOUT   seconds to wait after TERM before KILL (default 30)
#   FASTGW_KAFKA_JAVA_OPTS      extra JVM options for the broker
#   FASTGW_KAFKA_PYTHON         python used for port picking and the readiness probe (stdlib only)
#   JAVA_HOME                   java is $JAVA_HOME/bin/java when set, else `java` on PATH
#
# Everything listens on 127.0.0.1 only. Diagnostics go to stderr; stdout carries only the
# KAFKA_BOOTSTRAP line (and the status line), so callers can parse it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${FASTGW_KAFKA_VERSION:-4.1.2}
CACHE=${FASTGW_KAFKA_HOME:-$ROOT/.cache/kafka}
LIB=$CACHE/$VERSION/lib
RUN=${FASTGW_KAFKA_RUN:-$ROOT/.cache/kafka/run}
POM=$ROOT/scripts/kafka/pom.xml
START_TIMEOUT=${FASTGW_KAFKA_START_TIMEOUT:-60}
STOP_TIMEOUT=${FASTGW_KAFKA_STOP_TIMEOUT:-30}

PIDFILE=$RUN/kafka.pid
LOG=$RUN/broker.log
PROPS=$RUN/server.properties
DATA=$RUN/data
KEEP=$RUN/keep-data      # present after `stop --keep-data`: the next start resumes
PORTS=$RUN/ports         # "BROKER_PORT CONTROLLER_PORT"

say() { echo "kafka.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

java_bin() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (need a JDK/JRE 17+ on PATH or in JAVA_HOME; e.g. apt-get install openjdk-17-jre-headless)"
  fi
}

need_java() {
  JAVA=$(java_bin)
  local line major
  line=$("$JAVA" -version 2>&1 | head -n 1) || die "java at $JAVA does not run: $line"
  major=$(printf '%s\n' "$line" | sed -E 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/')
  if [ "$major" = "1" ] || ! [ "$major" -ge 17 ] 2>/dev/null; then
    die "java 17+ needed by Kafka $VERSION, found: $line ($JAVA)"
  fi
}

need_python() {
  local c
  for c in ${FASTGW_KAFKA_PYTHON:-} python3 python; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; return 0; fi
  done
  die "python3 not found (used to pick free ports and to probe the broker)"
}

# --- fetch --------------------------------------------------------------------------------

fetch() {
  if [ -f "$LIB/.complete" ]; then
    return 0
  fi
  need_java
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found: Maven 3.6+ is needed once, to download the Kafka $VERSION jars (e.g. apt-get install maven)"
  [ -f "$POM" ] || die "missing $POM"
  mkdir -p "$CACHE/$VERSION"
  local tmp=$LIB.tmp.$$ flog=$CACHE/$VERSION/fetch.log t0=$SECONDS
  rm -rf "$tmp"
  say "fetching Apache Kafka $VERSION jars with mvn into $LIB ..."
  if ! mvn -B -q -Dstyle.color=never -f "$POM" -Dkafka.version="$VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$flog" 2>&1; then
    tail -n 30 "$flog" >&2 || true
    rm -rf "$tmp"
    die "download failed: mvn could not fetch org.apache.kafka:kafka_2.13:$VERSION and its dependencies (log: $flog)"
  fi
  [ -f "$tmp/kafka_2.13-$VERSION.jar" ] || {
    rm -rf "$tmp"
    die "download failed: kafka_2.13-$VERSION.jar missing after mvn (log: $flog)"
  }
  touch "$tmp/.complete"
  rm -rf "$LIB"   # a partial folder from an interrupted older fetch
  mv -T "$tmp" "$LIB" 2>/dev/null || rm -rf "$tmp"   # lost a race with another fetch: theirs is complete
  say "fetched $(find "$LIB" -name "*.jar" | wc -l) jars ($(du -sh "$LIB" | cut -f1)) in $((SECONDS - t0)) s"
}

# --- process helpers ------------------------------------------------------------------------

# The pid in the pid file, if that process is alive and is our broker (not a recycled pid).
broker_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid args
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  args=$(ps -p "$pid" -o args= 2>/dev/null) || return 1
  case "$args" in
    *kafka.Kafka*"$PROPS"*) echo "$pid" ;;
    *) return 1 ;;
  esac
}

bootstrap() {
  local bport cport
  read -r bport cport <"$PORTS"
  echo "127.0.0.1:$bport"
}

# Wait until the broker answers a Metadata request listing itself (stdlib-only Kafka protocol:
# Metadata v4, which Kafka 2.x..4.x all accept). Exits 0 when ready, 1 on timeout, 2 if died.
wait_ready() {
  local pid=$1 port=$2
  "$PY" - "$pid" "$port" "$START_TIMEOUT" <<'PYEOF'
import os, socket, struct, sys, time

pid, port, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def alive():
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our parent has not reaped it yet) is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf

def probe():
    client = b"fastgw-kafka-probe"
    # header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client
    body += struct.pack(">i", 0) + b"\x00"  # topics: [] (none), allow_auto_topic_creation=false
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", recv_exact(s, 4))[0]
        resp = recv_exact(s, size)
    corr, _throttle, nbrokers = struct.unpack_from(">iii", resp, 0)
    off, ports = 12, []
    for _ in range(nbrokers):
        _node, hlen = struct.unpack_from(">ih", resp, off); off += 6 + hlen
        (bport,) = struct.unpack_from(">i", resp, off); off += 4
        (rlen,) = struct.unpack_from(">h", resp, off); off += 2 + max(rlen, 0)
        ports.append(bport)
    return corr == 7 and port in ports

deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    if not alive():
        sys.exit(2)
    try:
        if probe():
            sys.exit(0)
    except (OSError, struct.error):
        pass
    time.sleep(0.2)
sys.exit(1)
PYEOF
}

# Two free loopback ports (or the ones asked for). Picked below the kernel's ephemeral range,
# so that no outgoing connection can take them while the broker is down during a restart.
free_ports() {
  "$PY" - "${FASTGW_KAFKA_PORT:-0}" "${FASTGW_KAFKA_CONTROLLER_PORT:-0}" <<'PYEOF'
import random, socket, sys

try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
candidates = list(range(20000, max(low, 20001))) or [0]
random.shuffle(candidates)
socks, ports = [], []

def bind(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    socks.append(s)
    return s.getsockname()[1]

for want in map(int, sys.argv[1:]):
    if want:
        try:
            ports.append(bind(want))
        except OSError as exc:
            sys.exit(f"kafka.sh: ERROR: port 127.0.0.1:{want} is not free: {exc}")
        continue
    for port in candidates[:200]:
        if port in ports:
            continue
        try:
            ports.append(bind(port))
            break
        except OSError:
            continue
    else:
        ports.append(bind(0))
print(*ports)
PYEOF
}

write_config() {
  local bport=$1 cport=$2
  cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft broker for tests (loopback only).
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.voters=1@127.0.0.1:$cport
log.dirs=$DATA
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=16777216
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  cat >"$RUN/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = info
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.utils.name = org.apache.kafka.common.utils.AppInfoParser
logger.utils.level = warn
EOF
}

# --- commands -------------------------------------------------------------------------------

start() {
  local pid bport cport cid resume=0
  mkdir -p "$RUN"
  if pid=$(broker_pid); then
    say "already running (pid $pid)"
    echo "KAFKA_BOOTSTRAP=$(bootstrap)"
    return 0
  fi
  fetch
  need_java
  need_python
  rm -f "$PIDFILE"
  if [ -f "$KEEP" ] && [ -f "$PROPS" ] && [ -f "$PORTS" ] && [ -f "$DATA/meta.properties" ]; then
    read -r bport cport <"$PORTS"
    resume=1
    say "resuming with the kept data on ports $bport (broker) and $cport (controller)"
  else
    rm -rf "$DATA" "$PROPS" "$PORTS" "$KEEP"
    read -r bport cport < <(free_ports) || die "could not pick free loopback ports"
    if [ -z "${bport:-}" ] || [ -z "${cport:-}" ]; then die "could not pick free loopback ports"; fi
    echo "$bport $cport" >"$PORTS"
    write_config "$bport" "$cport"
    cid=$("$PY" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    if ! "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
        -cp "$LIB/*" kafka.tools.StorageTool format -t "$cid" -c "$PROPS" >"$RUN/format.log" 2>&1; then
      cat "$RUN/format.log" >&2
      die "formatting the storage failed (kafka.tools.StorageTool, log: $RUN/format.log)"
    fi
  fi
  rm -f "$KEEP"

  local t0=$SECONDS
  if [ "$resume" -eq 1 ]; then
    echo "===== kafka.sh: restarted with the kept data at $(date '+%F %T') =====" >>"$LOG"
  else
    : >"$LOG"
  fi
  # In a subshell: close every inherited descriptor above 2 (some callers leak theirs, e.g.
  # uvloop's subprocess pipes: a broker holding them would keep the caller waiting for EOF
  # forever), then setsid so the broker is not in the caller's process group and only
  # `stop` (or its pid) ends it.
  (
    for fd in "/proc/$BASHPID/fd"/* /dev/fd/*; do
      fd=${fd##*/}
      if [[ "$fd" =~ ^[0-9]+$ ]] && [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    # shellcheck disable=SC2086
    exec setsid "$JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Xshare:auto \
      -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
      ${FASTGW_KAFKA_JAVA_OPTS:-} \
      -cp "$LIB/*" kafka.Kafka "$PROPS"
  ) >>"$LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"

  local rc=0
  wait_ready "$pid" "$bport" || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 2 ]; then
      say "ERROR: the broker exited during startup; last lines of $LOG:"
    else
      say "ERROR: the broker did not answer on 127.0.0.1:$bport within ${START_TIMEOUT}s; last lines of $LOG:"
    fi
    tail -n 40 "$LOG" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    exit 1
  fi
  say "Kafka $VERSION up (pid $pid) in $((SECONDS - t0)) s; log: $LOG"
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$bport"
}

stop() {
  local keep=0 pid
  case "${1:-}" in
    --keep-data) keep=1 ;;
    "") ;;
    *) die "unknown option for stop: $1 (expected --keep-data)" ;;
  esac
  if pid=$(broker_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "broker (pid $pid) still up after ${STOP_TIMEOUT}s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    say "stopped (pid $pid)"
  else
    say "not running"
  fi
  rm -f "$PIDFILE"
  if [ "$keep" -eq 1 ]; then
    [ -f "$PROPS" ] && touch "$KEEP"
  else
    rm -rf "$DATA" "$PROPS" "$PORTS" "$KEEP" "$RUN/log4j2.properties"
  fi
}

status() {
  local pid
  if pid=$(broker_pid); then
    echo "running pid $pid"
    echo "KAFKA_BOOTSTRAP=$(bootstrap)"
  else
    echo "not running"
    return 3
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  fetch) fetch ;;
  start) start ;;
  stop) stop "$@" ;;
  restart) stop --keep-data; start ;;
  status) status ;;
  *)
    echo "usage: $0 fetch|start|stop [--keep-data]|restart|status" >&2
    exit 2
    ;;
esac
