#!/usr/bin/env bash
# pgAudit ingest: lines per second through the log reader for each format, and the lag from
# a statement's execution to its ingested event.
#
#   bench/ingest.sh                     # 5 parse rounds; 100 probes/s for 20 s
#   RATE=200 DURATION=10 bench/ingest.sh
#
# 1. Parse rate: the reference logs in testdata/pgaudit (real pgAudit 1.7 output) repeated
#    in memory, assembled into entries and turned into events; median of ROUNDS.
# 2. Lag: PostgreSQL 15 with pgaudit writes csvlog; `pgtrail ingest` follows it into a
#    journal; `pgtrail tail --follow --json` reads the journal and a small reader notes when
#    each probe's event arrives. pgbench sends probes (`SELECT 'probe'`) at RATE per second.
#    Lag = arrival at the reader - the event's logTime (PostgreSQL's own timestamp of the
#    statement). It includes the logging collector, the ingester's poll (100 ms when idle),
#    the journal's batching and fsync, and tail's poll. Same host, same clock.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-5}"
RATE="${RATE:-100}"
DURATION="${DURATION:-20}"
BIN=/usr/lib/postgresql/15/bin
[ -f /usr/share/postgresql/15/extension/pgaudit.control ] || { echo "pgaudit is not installed: run scripts/setup.sh" >&2; exit 1; }

echo "building (release)..." >&2
cargo build --release --locked -p pgtrail --bin pgtrail >&2
cargo build --release --locked -p pgtrail-pgaudit --example parse_bench >&2
PGTRAIL="$PWD/target/release/pgtrail"

echo "== parse rate (reference logs x2000, median of $ROUNDS)"
target/release/examples/parse_bench "$ROUNDS"

work=$(mktemp -d /tmp/pgtrail-ingest-bench.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  for pid in ${INGEST_PID:-} ${TAIL_PID:-}; do kill "$pid" 2>/dev/null || true; done
  # The tail at the head of the reader's pipeline is not $!: stop it by its journal.
  pkill -f -- "tail --journal $work/journal" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" stop -D "$work/data" -m fast >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust --no-sync >/dev/null
cat >> "$work/data/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$work'
shared_preload_libraries = 'pgaudit'
pgaudit.log = 'read'
logging_collector = on
log_destination = 'csvlog'
log_directory = 'log'
log_timezone = 'UTC'
CONF
as_pg "$BIN/pg_ctl" start -D "$work/data" -l "$work/pg.log" -w >/dev/null
"$BIN/psql" -qX -h 127.0.0.1 -p "$PORT" -U postgres -c "CREATE EXTENSION pgaudit" postgres

"$PGTRAIL" keys init --dir "$work/keys" >/dev/null
PGTRAIL_LOG=warn "$PGTRAIL" ingest --log-dir "$work/data/log" --format csvlog --journal "$work/journal" \
  --keys "$work/keys" 2>"$work/ingest.log" &
INGEST_PID=$!
for _ in $(seq 100); do [ -d "$work/journal" ] && break; sleep 0.1; done
"$PGTRAIL" tail --journal "$work/journal" --key "$work/keys/wrapping.key" --follow --json 2>/dev/null \
  | python3 -u -c '
import sys, time
for line in sys.stdin:
    print(f"{time.time():.6f} {line.strip()}", flush=True)
' > "$work/arrivals" &
TAIL_PID=$!
sleep 1

echo "== lag: $RATE probes/s for ${DURATION}s (pgbench -R), csvlog"
printf "SELECT 'probe';\n" > "$work/probe.sql"
"$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U postgres -c 2 -j 2 -R "$RATE" -T "$DURATION" -f "$work/probe.sql" postgres \
  2>/dev/null | awk '/^tps = /{print "statements/s: " $3}'
sleep 3

python3 - "$work/arrivals" <<'PY'
import json, sys
from datetime import datetime, timezone

def das_time(text):
    return datetime.strptime(text[:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()

lags = []
for line in open(sys.argv[1]):
    arrived, _, body = line.partition(" ")
    event = json.loads(body)
    if event.get("commandText") == "SELECT 'probe';" and event.get("source") == "pgaudit":
        lags.append((float(arrived) - das_time(event["logTime"])) * 1000)
lags.sort()
if not lags:
    sys.exit("no probe arrived: see the ingest log")
pct = lambda p: lags[min(len(lags) - 1, int(round(p / 100 * (len(lags) - 1))))]
print(f"probes ingested: {len(lags)}")
print(f"lag ms: p50 {pct(50):.0f}  p99 {pct(99):.0f}  max {lags[-1]:.0f}")
PY
