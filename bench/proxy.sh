#!/usr/bin/env bash
# Throughput of pgtrail against direct PostgreSQL and pgbouncer (session mode), all
# measured in the same run on the same throwaway cluster.
#
#   bench/proxy.sh                 # 30 s per run, 3 repeats (the numbers in the notes)
#   DURATION=5 REPEATS=1 bench/proxy.sh   # a quick look
#
# For each workload (pgbench -S, and the default TPC-B-like script), -c 8 -j 2, it runs
# direct, pgbouncer, pgtrail with async delivery and pgtrail with sync delivery (the
# client waits for each event's fsync) in turn (interleaved, so drift hits all alike),
# and prints the median TPS of each and pgtrail's ratios to direct and to pgbouncer.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-30}"
REPEATS="${REPEATS:-3}"
CLIENTS="${CLIENTS:-8}"
THREADS="${THREADS:-2}"
SCALE="${SCALE:-10}"
. bench/lib.sh

command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed: run scripts/setup.sh" >&2; exit 1; }
echo "building pgtrail (release)..." >&2
cargo build --release --locked --bin pgtrail >&2
PGTRAIL="$PWD/target/release/pgtrail"

make_work pgtrail-bench
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); TRAIL_PORT=$(free_port); SYNC_PORT=$(free_port)

cleanup() {
  [ -n "${TRAIL_PID:-}" ] && kill "$TRAIL_PID" 2>/dev/null || true
  [ -n "${SYNC_PID:-}" ] && kill "$SYNC_PID" 2>/dev/null || true
  stop_pgbouncer
  stop_pg
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_pg "$PG_PORT" "max_connections = 100" "shared_buffers = 256MB"
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
start_pgbouncer "$BOUNCER_PORT" "$PG_PORT"
"$PGTRAIL" keys init --dir "$work/keys" >/dev/null
PGTRAIL_LOG=warn "$PGTRAIL" proxy --listen "127.0.0.1:$TRAIL_PORT" --upstream "postgres://127.0.0.1:$PG_PORT" \
  --journal "$work/journal" --keys "$work/keys" 2>"$work/pgtrail.log" &
TRAIL_PID=$!
pgtrail_config "$SYNC_PORT" journal-sync $'[delivery]\nmode = "sync"' > "$work/sync.toml"
PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/sync.toml" 2>"$work/pgtrail-sync.log" &
SYNC_PID=$!
wait_ready "$BOUNCER_PORT" "$TRAIL_PORT" "$SYNC_PORT"

printf '%-11s %9s %9s %9s %9s %8s %8s %8s %8s\n' workload direct pgbouncer async sync \
  "as/dir" "as/bnc" "sy/dir" "sy/bnc"
for workload in select-only tpcb-like; do
  args=(); [ "$workload" = select-only ] && args=(-S)
  : > "$work/direct"; : > "$work/bouncer"; : > "$work/trail"; : > "$work/sync"
  for r in $(seq "$REPEATS"); do
    echo "  $workload repeat $r/$REPEATS..." >&2
    pgbench_tps "$PG_PORT" "${args[@]}" >> "$work/direct"
    pgbench_tps "$BOUNCER_PORT" "${args[@]}" >> "$work/bouncer"
    pgbench_tps "$TRAIL_PORT" "${args[@]}" >> "$work/trail"
    pgbench_tps "$SYNC_PORT" "${args[@]}" >> "$work/sync"
  done
  d=$(median < "$work/direct"); b=$(median < "$work/bouncer"); t=$(median < "$work/trail"); y=$(median < "$work/sync")
  awk -v w="$workload" -v d="$d" -v b="$b" -v t="$t" -v y="$y" \
    'BEGIN { printf "%-11s %9.0f %9.0f %9.0f %9.0f %8.3f %8.3f %8.3f %8.3f\n", w, d, b, t, y, t / d, t / b, y / d, y / b }'
done
echo "(as = pgtrail async delivery, sy = pgtrail sync delivery, dir = direct, bnc = pgbouncer)"
for j in journal journal-sync; do
  events=$("$PGTRAIL" tail --journal "$work/$j" --key "$work/keys/wrapping.key" --json 2>/dev/null | wc -l)
  echo "$j: $events events ($(du -sh "$work/$j" | cut -f1))"
done
