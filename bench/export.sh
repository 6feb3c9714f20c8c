#!/usr/bin/env bash
# Export throughput per format: pgbench (TPC-B, 8 clients, DURATION seconds) through pgtrail
# (async) fills a journal with real events; then `pgtrail export` reads it REPEATS times per
# format (jsonl, cef, ocsf, das) into /dev/null on one core (taskset), and the medians are
# printed in events per second (das: the same count of events, carried in their records).
# Then `pgtrail forward` sends the whole journal REPEATS times to local receivers: Splunk HEC
# with indexer acknowledgements (tests/forward/hec_receiver.py, Python: it bounds the rate)
# and CEF over syslog with TLS (openssl s_server); each line gives events/s (median) and
# the forwarder's CPU (user + system) in microseconds per event.
#
#   bench/export.sh                      # 30 s of pgbench, 3 repeats
#   DURATION=10 REPEATS=1 bench/export.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-30}"
REPEATS="${REPEATS:-3}"
THREADS=2
. bench/lib.sh

echo "building pgtrail (release)..." >&2
cargo build --release --locked --bin pgtrail >&2
PGTRAIL="$PWD/target/release/pgtrail"
PG_PORT=$(free_port); TRAIL_PORT=$(free_port)
make_work pgtrail-export-bench
cleanup() {
  [ -n "${TRAIL_PID:-}" ] && kill "$TRAIL_PID" 2>/dev/null || true
  stop_pg
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_pg "$PG_PORT" "max_connections = 100"
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s 10 postgres >/dev/null 2>&1
"$PGTRAIL" keys init --dir "$work/keys" >/dev/null
pgtrail_config "$TRAIL_PORT" journal > "$work/pgtrail.toml"
PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/pgtrail.toml" 2>"$work/pgtrail.log" &
TRAIL_PID=$!
wait_ready "$TRAIL_PORT"
echo "pgbench through pgtrail for $DURATION s..." >&2
"$BIN/pgbench" -h 127.0.0.1 -p "$TRAIL_PORT" -U postgres -n -c 8 -j 2 -T "$DURATION" postgres >/dev/null 2>&1
kill -TERM "$TRAIL_PID"; wait "$TRAIL_PID" 2>/dev/null || true; TRAIL_PID=

key="$work/keys/wrapping.key"
events=$("$PGTRAIL" export --journal "$work/journal" --key "$key" --format jsonl | wc -l)
echo "journal: $events events, $(du -sm "$work/journal" | cut -f1) MB"
for format in jsonl cef ocsf das; do
  for _ in $(seq "$REPEATS"); do
    t0=$(date +%s%N)
    taskset -c 0 "$PGTRAIL" export --journal "$work/journal" --key "$key" --format "$format" > /dev/null
    t1=$(date +%s%N)
    echo $(( events * 1000000000 / (t1 - t0) ))
  done | median | awk -v f="$format" '{printf "%-6s %d events/s\n", f, $1}'
done

# Forwarding to local receivers.
TOKEN=bench-token
python3 crates/pgtrail-testkit/tests/forward/hec_receiver.py /dev/null --token "$TOKEN" --ack > "$work/hec.port" &
HEC_PID=$!
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
  -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null
SYSLOG_PORT=$(free_port)
while [ ! -s "$work/hec.port" ]; do sleep 0.1; done
HEC_PORT=$(head -1 "$work/hec.port")
forward_once() { # DESTINATION URL [FLAGS...]: "events/s cpu-us-per-event"
  local to=$1 url=$2; shift 2
  rm -f "$work/forward.cursor"
  local TIMEFORMAT='%R %U %S' times
  times=$( { time PGTRAIL_LOG=warn PGTRAIL_FORWARD_TOKEN=$TOKEN "$PGTRAIL" forward --journal "$work/journal" --key "$key" \
    --to "$to" --url "$url" --state "$work/forward.cursor" "$@" > /dev/null 2>"$work/forward.log"; } 2>&1 )
  grep -q "forwarded $events events" "$work/forward.log" || { cat "$work/forward.log" >&2; exit 1; }
  echo "$times" | awk -v n="$events" '{printf "%d %.1f\n", n / $1, ($2 + $3) * 1e6 / n}'
}
forward_median() {
  local label=$1; shift
  local runs
  runs=$(for _ in $(seq "$REPEATS"); do "$@"; done)
  printf '%-22s %d events/s, forwarder CPU %s us/event\n' "$label" \
    "$(echo "$runs" | cut -d' ' -f1 | median)" "$(echo "$runs" | cut -d' ' -f2 | median)"
}
forward_median "forward splunk-hec ack:" forward_once splunk-hec "http://127.0.0.1:$HEC_PORT" --ack
syslog_run() {
  openssl s_server -quiet -accept "$SYSLOG_PORT" -cert "$work/server.pem" -key "$work/server.key" > /dev/null 2>&1 &
  local pid=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$SYSLOG_PORT") 2>/dev/null; do sleep 0.1; done
  forward_once syslog-cef "tls://localhost:$SYSLOG_PORT" --ca-file "$work/ca.pem"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
forward_median "forward syslog-cef tls:" syslog_run
kill "$HEC_PID" 2>/dev/null || true
