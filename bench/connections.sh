#!/usr/bin/env bash
# Memory per session: how much resident memory each idle client session costs the proxy,
# and the resident memory while 64 clients run flat out. Compared in the same run with
# pgbouncer (session mode) and the zero-work relay (crates/pgtrail-proxy/examples/relay.rs).
#
#   bench/connections.sh                       # 1000 idle sessions, -c 64 for 8 s
#   SESSIONS=200 DURATION=3 bench/connections.sh   # a quick look
#
# Idle: pgbench opens $SESSIONS connections through the proxy (each completes the startup
# and authentication exchange with PostgreSQL and is ready for queries), then each client
# sleeps; once PostgreSQL counts them all, the proxy's RSS (VmRSS) is read. Per session is
# (RSS with the sessions - RSS before them) / sessions. Busy: the highest RSS sampled every
# 0.1 s during pgbench -S -c 64 -j 2 -T $DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS="${SESSIONS:-1000}"
DURATION="${DURATION:-8}"
THREADS="${THREADS:-2}"
. bench/lib.sh

ulimit -n $((SESSIONS * 3 + 1000)) || { echo "cannot raise the open file limit to $((SESSIONS * 3 + 1000))" >&2; exit 1; }
prepare_proxies
make_work pgtrail-conn
HOLD_PID=

cleanup() {
  [ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null || true
  stop_proxies
  stop_pg
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" >&2 && return
  rm -rf "$work"
}
trap cleanup EXIT

start_pg "$PG_PORT" "max_connections = $((SESSIONS + 200))" "shared_buffers = 256MB"
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s 10 postgres >/dev/null 2>&1
BOUNCER_POOL=$((SESSIONS + 20)) BOUNCER_MAX_CLIENTS=$((SESSIONS + 100)) start_proxies
printf 'SELECT 1;\n\\sleep 600 s\n' > "$work/idle.sql"

# Client backends in PostgreSQL other than the one asking ($1: more SQL conditions).
client_backends() {
  "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -XAtq -d postgres \
    -c "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() ${1:-}"
}
# ...of those, the ones that have run the idle script's statement and wait for the next.
IDLE_DONE="and state = 'idle' and query = 'SELECT 1;'"


# Holds $SESSIONS idle sessions through port $1 (each has run one statement); prints
# "before after" RSS of pid $2.
idle_rss() {
  local port=$1 pid=$2 before base
  before=$(rss_kib "$pid")
  base=$(client_backends "$IDLE_DONE")
  "$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$SESSIONS" -j "$THREADS" -t 1 -f "$work/idle.sql" postgres \
    >"$work/hold.log" 2>&1 &
  HOLD_PID=$!
  for _ in $(seq 600); do
    [ "$(client_backends "$IDLE_DONE")" -ge $((base + SESSIONS)) ] && break
    kill -0 "$HOLD_PID" 2>/dev/null || { echo "pgbench could not hold $SESSIONS sessions through $port:" >&2; tail -5 "$work/hold.log" >&2; exit 1; }
    sleep 0.1
  done
  [ "$(client_backends "$IDLE_DONE")" -ge $((base + SESSIONS)) ] \
    || { echo "only $(($(client_backends "$IDLE_DONE") - base)) of $SESSIONS sessions opened through $port" >&2; exit 1; }
  echo "$before $(rss_kib "$pid")"
  kill "$HOLD_PID" 2>/dev/null || true
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=
  # pgbouncer keeps its server connections pooled: this waits only for the others' to end
  for _ in $(seq 100); do [ "$(client_backends "$IDLE_DONE")" -le "$base" ] && break; sleep 0.1; done
}

# Highest RSS of pid $2 during pgbench -S -c 64 through port $1.
busy_rss() {
  local port=$1 pid=$2 peak=0 rss
  "$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -S -c 64 -j "$THREADS" -T "$DURATION" postgres >/dev/null 2>&1 &
  local bench=$!
  while kill -0 "$bench" 2>/dev/null; do
    rss=$(rss_kib "$pid"); [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.1
  done
  wait "$bench" || { echo "pgbench -c 64 through $port failed" >&2; exit 1; }
  echo "$peak"
}

echo
echo "| proxy | RSS idle (KiB) | RSS with $SESSIONS idle sessions (KiB) | per idle session (KiB) | peak RSS under -S -c 64 (KiB) |"
echo "|---|---|---|---|---|"
for t in ${TARGETS:-relay async sync pgbouncer}; do
  case "$t" in
    pgbouncer) port=$BOUNCER_PORT pid=$BOUNCER_PID ;;
    relay) port=$RELAY_PORT pid=$RELAY_PID ;;
    async) port=$TRAIL_PORT pid=$TRAIL_PID ;;
    sync) port=$SYNC_PORT pid=$SYNC_PID ;;
  esac
  echo "  $t: $SESSIONS idle sessions..." >&2
  read -r before after <<<"$(idle_rss "$port" "$pid")"
  [ -n "${after:-}" ] || exit 1
  echo "  $t: -S -c 64 for $DURATION s..." >&2
  peak=$(busy_rss "$port" "$pid")
  awk -v t="$t" -v b="$before" -v a="$after" -v n="$SESSIONS" -v p="$peak" \
    'BEGIN { printf "| %s | %d | %d | %.1f | %d |\n", t, b, a, (a - b) / n, p }'
done
echo
echo "(async, sync: pgtrail with async / sync delivery; relay: the zero-work relay; $(nproc) CPUs)"
