#!/usr/bin/env bash
# Start, stop or check a single-node Apache Kafka 3.9 broker (KRaft, combined mode) on 127.0.0.1.
#
#   scripts/kafka.sh start    resolve the jars (cached), format storage once, start, wait until it answers
#   scripts/kafka.sh stop     stop the broker started here, by its process id
#   scripts/kafka.sh status   exit 0 when the broker answers
#
# Settings (environment):
#   KAFKA_PORT         client port, default 9092
#   KAFKA_HOME_DIR     state directory (logs, data, pid), default .kafka in the repository
#   KAFKA_JARS_DIR     jar cache, default ~/.cache/controlplane/kafka-3.9.2
#   KAFKA_HEAP         JVM heap, default 256m
#   KAFKA_START_WAIT   seconds to wait for the broker to answer, default 90
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
state=${KAFKA_HOME_DIR:-$root/.kafka}
jars=${KAFKA_JARS_DIR:-$HOME/.cache/controlplane/kafka-3.9.2}
heap=${KAFKA_HEAP:-256m}
wait_s=${KAFKA_START_WAIT:-90}
pidfile=$state/kafka.pid

log() { echo "kafka.sh: $*" >&2; }

resolve_jars() {
  if [ -f "$jars/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven) or set CONTROLPLANE_KAFKA_BOOTSTRAP to an existing cluster"; exit 1; }
  log "resolving broker jars from Maven Central into $jars"
  mkdir -p "$jars"
  if ! mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$jars" >"$state/mvn.log" 2>&1; then
    log "Maven failed to resolve the broker jars; see $state/mvn.log"
    tail -20 "$state/mvn.log" >&2
    exit 1
  fi
  touch "$jars/.complete"
}

answers() {
  # A TCP connect is not enough (the socket opens before the broker is ready), so ask for metadata.
  python3 - "$port" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
# ApiVersions v0 request: size, api_key=18, api_version=0, correlation_id=1, client_id=""
body = struct.pack(">hhih", 18, 0, 1, 0)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        header = s.recv(10)
        sys.exit(0 if len(header) >= 10 and struct.unpack(">h", header[8:10])[0] == 0 else 1)
except OSError:
    sys.exit(1)
PY
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_config() {
  cat >"$state/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
CONF
}

start() {
  mkdir -p "$state"
  if pid=$(running_pid); then log "already running (pid $pid) on 127.0.0.1:$port"; return 0; fi
  resolve_jars
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java -cp "$jars/*" kafka.tools.StorageTool random-uuid)
    java -cp "$jars/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" >"$state/format.log" 2>&1 \
      || { log "storage format failed; see $state/format.log"; cat "$state/format.log" >&2; exit 1; }
  fi
  cat >"$state/log4j.properties" <<CONF
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$state/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
CONF
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$state/log4j.properties" \
    -cp "$jars/*" kafka.Kafka "$state/server.properties" >"$state/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + wait_s))
  until answers; do
    if ! running_pid >/dev/null; then
      log "broker exited during start; last lines of $state/stdout.log and server.log:"
      tail -20 "$state/stdout.log" "$state/server.log" >&2 || true
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then log "broker did not answer on 127.0.0.1:$port within ${wait_s}s"; exit 1; fi
    sleep 1
  done
  log "broker ready on 127.0.0.1:$port (pid $(cat "$pidfile"))"
}

stop() {
  local pid
  if ! pid=$(running_pid); then log "not running"; rm -f "$pidfile"; return 0; fi
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped (pid $pid)"; return 0; }
    sleep 0.5
  done
  log "broker did not stop within 30s, sending SIGKILL to $pid"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
