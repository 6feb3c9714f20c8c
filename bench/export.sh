#!/usr/bin/env bash
# Export throughput per format: pgbench (TPC-B, 8 clients, DURATION seconds) through pgtrail
# (async) fills a journal with real events; then `pgtrail export` reads it REPEATS times per
# format (jsonl, cef, ocsf, das) into /dev/null on one core (taskset), and the medians are
# printed in events per second (das: the same count of events, carried in their records).
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
