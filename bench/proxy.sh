#!/usr/bin/env bash
# What the proxy hop and the audit cost: pgbench throughput and proxy CPU per transaction
# for direct PostgreSQL, pgbouncer (session mode), a zero-work relay (copies bytes both
# ways and does nothing else: the limit of any proxy hop on this machine), pgtrail with
# async delivery and pgtrail with sync delivery (each client waits for its events' fsync),
# all measured in the same run on the same throwaway cluster.
#
#   bench/proxy.sh                          # 8 s per run, 3 repeats (the README's table)
#   DURATION=5 REPEATS=1 bench/proxy.sh     # a quick look
#   WORKLOADS="select tpcb" bench/proxy.sh  # some of the workloads only
#
# Workloads (pgbench, scale $SCALE): select (-S, simple protocol, -c 8), select-extended
# (-M extended), select-prepared (-M prepared), tpcb (the default TPC-B-like script, -c 8),
# select-c1 (-S, one client), select-c64 (-S, 64 clients); -j is the lesser of $THREADS
# and the clients. Within a repeat the five targets run one after another (interleaved, so
# drift hits all alike); the tables show medians over the repeats. CPU is the process's
# user + system time (from /proc/PID/stat) over the run divided by the transactions it
# carried; PostgreSQL's own CPU is not counted for any column.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-8}"
REPEATS="${REPEATS:-3}"
THREADS="${THREADS:-2}"
SCALE="${SCALE:-10}"
WORKLOADS="${WORKLOADS:-select select-extended select-prepared tpcb select-c1 select-c64}"
. bench/lib.sh

workload_spec() { # "CLIENTS PGBENCH-ARGS..." for a workload name
  case "$1" in
    select) echo "8 -S" ;;
    select-extended) echo "8 -S -M extended" ;;
    select-prepared) echo "8 -S -M prepared" ;;
    tpcb) echo "8" ;;
    select-c1) echo "1 -S" ;;
    select-c64) echo "64 -S" ;;
    *) echo "unknown workload '$1' (select select-extended select-prepared tpcb select-c1 select-c64)" >&2; exit 2 ;;
  esac
}
for w in $WORKLOADS; do workload_spec "$w" >/dev/null; done

prepare_proxies
make_work pgtrail-bench

cleanup() {
  stop_proxies
  stop_pg
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_pg "$PG_PORT" "max_connections = 300" "shared_buffers = 256MB"
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
start_proxies

TARGETS="direct pgbouncer relay async sync"
port_of() { case "$1" in direct) echo "$PG_PORT" ;; pgbouncer) echo "$BOUNCER_PORT" ;; relay) echo "$RELAY_PORT" ;; async) echo "$TRAIL_PORT" ;; sync) echo "$SYNC_PORT" ;; esac; }
pid_of() { case "$1" in pgbouncer) echo "$BOUNCER_PID" ;; relay) echo "$RELAY_PID" ;; async) echo "$TRAIL_PID" ;; sync) echo "$SYNC_PID" ;; *) echo "" ;; esac; }

for w in $WORKLOADS; do
  read -r clients args <<<"$(workload_spec "$w")"
  # shellcheck disable=SC2086 # args is a word list
  set -- $args
  for t in $TARGETS; do : > "$work/$w.$t.tps"; : > "$work/$w.$t.cpu"; done
  for r in $(seq "$REPEATS"); do
    for t in $TARGETS; do
      echo "  $w ($clients clients) repeat $r/$REPEATS: $t..." >&2
      pid=$(pid_of "$t")
      before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
      read -r tps txns <<<"$(pgbench_run "$(port_of "$t")" "$clients" "$@")"
      [ -n "${tps:-}" ] && [ -n "${txns:-}" ] || { echo "pgbench against $t failed" >&2; exit 1; }
      echo "$tps" >> "$work/$w.$t.tps"
      if [ -n "$pid" ]; then
        after=$(cpu_ticks "$pid")
        # clock ticks are 1/CLK_TCK s: microseconds per transaction
        awk -v d=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$txns" 'BEGIN { print d * 1e6 / hz / n }' >> "$work/$w.$t.cpu"
      fi
    done
  done
done

m() { median < "$work/$1.$2.$3"; }
echo
echo "Throughput: median TPS, and the ratio to direct PostgreSQL in brackets"
echo
echo "| workload | direct | pgbouncer | zero-work relay | pgtrail async | pgtrail sync | proxy CPU us/txn: pgbouncer / relay / async / sync |"
echo "|---|---|---|---|---|---|---|"
for w in $WORKLOADS; do
  awk -v w="$w" -v d="$(m "$w" direct tps)" -v b="$(m "$w" pgbouncer tps)" -v r="$(m "$w" relay tps)" \
    -v a="$(m "$w" async tps)" -v s="$(m "$w" sync tps)" -v cb="$(m "$w" pgbouncer cpu)" \
    -v cr="$(m "$w" relay cpu)" -v ca="$(m "$w" async cpu)" -v cs="$(m "$w" sync cpu)" 'BEGIN {
      printf "| %s | %.0f | %.0f (%.2f) | %.0f (%.2f) | %.0f (%.2f) | %.0f (%.2f) | %.0f / %.0f / %.0f / %.0f |\n",
        w, d, b, b / d, r, r / d, a, a / d, s, s / d, cb, cr, ca, cs }'
done
echo
echo "pgtrail's ratios to the other proxies (median TPS over median TPS)"
echo
echo "| workload | async / relay | async / pgbouncer | sync / relay | sync / pgbouncer | sync / async | sync CPU - async CPU (us/txn) |"
echo "|---|---|---|---|---|---|---|"
for w in $WORKLOADS; do
  awk -v w="$w" -v b="$(m "$w" pgbouncer tps)" -v r="$(m "$w" relay tps)" -v a="$(m "$w" async tps)" \
    -v s="$(m "$w" sync tps)" -v ca="$(m "$w" async cpu)" -v cs="$(m "$w" sync cpu)" 'BEGIN {
      printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %+.0f |\n", w, a / r, a / b, s / r, s / b, s / a, cs - ca }'
done
echo
echo "($(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo); pgbench -T $DURATION, $REPEATS repeats, scale $SCALE)"
for j in journal journal-sync; do
  events=$("$PGTRAIL" tail --journal "$work/$j" --key "$work/keys/wrapping.key" --json 2>/dev/null | wc -l)
  echo "$j: $events events ($(du -sh "$work/$j" | cut -f1))"
done
