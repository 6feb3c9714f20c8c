#!/usr/bin/env bash
# The cost of deny rules: pgbench through pgtrail without a [policy] and with three deny
# rules plus the password restriction, against direct PostgreSQL and pgbouncer, all in
# the same run on the same throwaway cluster.
#
#   bench/policy.sh                        # 20 s per run, 5 repeats
#   DURATION=5 REPEATS=1 bench/policy.sh   # a quick look
#
# Workloads: pgbench -S (simple protocol) and pgbench -S -M extended (a Parse per
# statement), -c 8 -j 2. Runs are interleaved (direct, pgbouncer, pgtrail, pgtrail+policy),
# so drift hits all alike; it prints the median TPS of each and the ratios
# policy/no-policy and pgtrail/pgbouncer.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-20}"
REPEATS="${REPEATS:-5}"
CLIENTS="${CLIENTS:-8}"
THREADS="${THREADS:-2}"
SCALE="${SCALE:-10}"
. bench/lib.sh

command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed: run scripts/setup.sh" >&2; exit 1; }
echo "building pgtrail (release)..." >&2
cargo build --release --locked --bin pgtrail >&2
PGTRAIL="$PWD/target/release/pgtrail"

make_work pgtrail-bench
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); PLAIN_PORT=$(free_port); POLICY_PORT=$(free_port)
cleanup() {
  for pid in "${PLAIN_PID:-}" "${POLICY_PID:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  stop_pgbouncer
  stop_pg
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_pg "$PG_PORT" "shared_buffers = 256MB"
"$BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
start_pgbouncer "$BOUNCER_PORT" "$PG_PORT"
"$PGTRAIL" keys init --dir "$work/keys" >/dev/null

pgtrail_config "$PLAIN_PORT" journal-plain "" > "$work/plain.toml"
pgtrail_config "$POLICY_PORT" journal-policy '
[policy]
restrict_password_commands = true
[[policy.deny]]
name = "no DDL for people"
when = "class == \"DDL\" && identity != null"
message = "no DDL"
[[policy.deny]]
name = "no COPY PROGRAM"
when = "copyProgram"
message = "no COPY PROGRAM"
[[policy.deny]]
name = "no unfiltered writes on accounts"
when = "command in [\"UPDATE\", \"DELETE\"] && !hasWhere && objects.exists(o, o.name == \"pgbench_accounts\")"
message = "need a WHERE"' > "$work/policy.toml"
PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/plain.toml" 2>"$work/plain.log" &
PLAIN_PID=$!
PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/policy.toml" 2>"$work/policy.log" &
POLICY_PID=$!
wait_ready "$BOUNCER_PORT" "$PLAIN_PORT" "$POLICY_PORT"
# The policy proxy really denies: an unfiltered DELETE on pgbench_accounts fails with 42501.
if "$BIN/psql" -X -q "postgres://postgres@127.0.0.1:$POLICY_PORT/postgres" -c "DELETE FROM pgbench_accounts" 2>"$work/denied.txt"; then
  echo "the policy proxy did not deny the unfiltered DELETE" >&2; exit 1
fi
grep -q "denied by rule" "$work/denied.txt" || { cat "$work/denied.txt" >&2; exit 1; }

printf '%-16s %9s %9s %9s %9s %10s %10s\n' workload direct pgbouncer pgtrail +policy "pol/plain" "trail/bnc"
for workload in simple extended; do
  args=(-S); [ "$workload" = extended ] && args=(-S -M extended)
  : > "$work/direct"; : > "$work/bouncer"; : > "$work/plain"; : > "$work/policy"
  for r in $(seq "$REPEATS"); do
    echo "  $workload repeat $r/$REPEATS..." >&2
    pgbench_tps "$PG_PORT" "${args[@]}" >> "$work/direct"
    pgbench_tps "$BOUNCER_PORT" "${args[@]}" >> "$work/bouncer"
    pgbench_tps "$PLAIN_PORT" "${args[@]}" >> "$work/plain"
    pgbench_tps "$POLICY_PORT" "${args[@]}" >> "$work/policy"
  done
  d=$(median < "$work/direct"); b=$(median < "$work/bouncer"); p=$(median < "$work/plain"); q=$(median < "$work/policy")
  awk -v w="select-only $workload" -v d="$d" -v b="$b" -v p="$p" -v q="$q" \
    'BEGIN { printf "%-16s %9.0f %9.0f %9.0f %9.0f %10.3f %10.3f\n", w, d, b, p, q, q / p, p / b }'
  echo "    runs (pgtrail): $(tr '\n' ' ' < "$work/plain")| (+policy): $(tr '\n' ' ' < "$work/policy")"
done
echo "(pgtrail = async delivery, no [policy]; +policy = the same with 3 deny rules and the password restriction)"
