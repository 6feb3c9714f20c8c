#!/usr/bin/env bash
# Alert latency: from a matching statement's completion at the proxy to the webhook request
# arriving at a local HTTP server, under a steady load through the proxy.
#
#   bench/alert-latency.sh                       # 5,000 statements/s, 20 s, 3 repeats
#   RATE=2000 DURATION=10 REPEATS=1 bench/alert-latency.sh
#
# pgbench sends RATE statements per second (-R, 8 clients) through `pgtrail proxy` (async
# delivery, default batching). One statement in PROBE_EVERY is an INSERT into an
# application table, which a rule turns into an alert; the rest are SELECTs. `pgtrail
# alerts run` (separate process, own cursor) sends each alert to a Standard Webhooks
# destination: the recording HTTP server of the notifier tests, which notes when each
# request arrives. Latency = arrival - the event's endTime (set by the proxy when the
# statement's CommandComplete passed through). Same host, same clock.
#
# Prints, per repeat and as the median of repeats: statements/s achieved, probes sent,
# alerts received, p50, p99 and max latency. The project target is p99 <= 1 s.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-5000}"
DURATION="${DURATION:-20}"
REPEATS="${REPEATS:-3}"
PROBE_EVERY="${PROBE_EVERY:-100}"
BIN=/usr/lib/postgresql/15/bin
PYTHON="${PGTRAIL_VENV_PYTHON:-$PWD/.venv-interop/bin/python}"
"$PYTHON" -c "import standardwebhooks" 2>/dev/null || { echo "run scripts/setup.sh first (.venv-interop)" >&2; exit 1; }

echo "building pgtrail (release)..." >&2
cargo build --release --locked --bin pgtrail >&2
PGTRAIL="$PWD/target/release/pgtrail"

work=$(mktemp -d /tmp/pgtrail-alert-bench.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); TRAIL_PORT=$(free_port)

cleanup() {
  for pid in ${TRAIL_PID:-} ${ALERTS_PID:-} ${HOOK_PID:-}; do kill "$pid" 2>/dev/null || true; done
  as_pg "$BIN/pg_ctl" stop -D "$work/data" -m fast >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "starting PostgreSQL 15 on $PG_PORT..." >&2
as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust --no-sync >/dev/null
cat >> "$work/data/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$work'
CONF
as_pg "$BIN/pg_ctl" start -D "$work/data" -l "$work/pg.log" -w >/dev/null
"$BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE TABLE orders (id bigserial PRIMARY KEY, v int)" postgres

"$PGTRAIL" keys init --dir "$work/keys" >/dev/null
PGTRAIL_LOG=warn "$PGTRAIL" proxy --listen "127.0.0.1:$TRAIL_PORT" --upstream "postgres://127.0.0.1:$PG_PORT" \
  --journal "$work/journal" --keys "$work/keys" 2>"$work/pgtrail.log" &
TRAIL_PID=$!

"$PYTHON" crates/pgtrail-testkit/tests/notify/http_recorder.py "$work/hooks.jsonl" \
  --webhook-secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw > "$work/hook.port" &
HOOK_PID=$!
for _ in $(seq 100); do [ -s "$work/hook.port" ] && break; sleep 0.1; done
HOOK_PORT=$(head -1 "$work/hook.port")

cat > "$work/rules.toml" <<'TOML'
[[rule]]
name = "write to orders"
condition = 'command == "INSERT" && objects.exists(o, o.name.endsWith("orders"))'
severity = "high"
# Every probe is its own alert: no dedup across statements, no suppression.
dedup_key = ["sessionId", "statementId"]
TOML
cat > "$work/destinations.toml" <<TOML
[[destination]]
name = "bench"
kind = "webhook"
url = "http://127.0.0.1:$HOOK_PORT/webhook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOML
PGTRAIL_LOG=warn "$PGTRAIL" alerts run --journal "$work/journal" --key "$work/keys/wrapping.key" \
  --rules "$work/rules.toml" --state "$work/cursor" --output "$work/alerts.jsonl" \
  --destinations "$work/destinations.toml" 2>"$work/alerts.log" &
ALERTS_PID=$!
for _ in $(seq 100); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$TRAIL_PORT" && break; sleep 0.1; done

cat > "$work/load.sql" <<SQL
\set r random(1, $PROBE_EVERY)
\if :r = 1
INSERT INTO orders (v) VALUES (:r);
\else
SELECT :r;
\endif
SQL

: > "$work/runs"
for r in $(seq "$REPEATS"); do
  echo "  repeat $r/$REPEATS: $RATE statements/s for ${DURATION}s..." >&2
  start=$(date +%s.%N)
  tps=$("$BIN/pgbench" -h 127.0.0.1 -p "$TRAIL_PORT" -U postgres -n -c 8 -j 2 -R "$RATE" -T "$DURATION" \
        -f "$work/load.sql" postgres 2>/dev/null | awk '/^tps = /{print $3; exit}')
  sleep 3 # let the last alerts of this run arrive
  end=$(date +%s.%N)
  echo "$r $start $end $tps" >> "$work/runs"
done

"$PYTHON" - "$work/runs" "$work/hooks.jsonl" <<'PY'
import json, sys
from datetime import datetime, timezone

runs = [l.split() for l in open(sys.argv[1])]
hooks = [json.loads(l) for l in open(sys.argv[2])]

def das_time(text):  # "2026-11-22 06:36:25.052055+00"
    return datetime.strptime(text[:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

rows = []
print(f"{'repeat':>6} {'stmts/s':>8} {'alerts':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for number, start, end, tps in runs:
    start, end = float(start), float(end)
    latencies = []
    for h in hooks:
        event = json.loads(h["body"])["data"]["event"]
        done = das_time(event["endTime"])
        if start <= done <= end:
            latencies.append((h["received"] - done) * 1000)
    if not latencies:
        print(f"{number:>6} {float(tps):>8.0f} {0:>7}  no alerts arrived"); continue
    row = (float(tps), len(latencies), pct(latencies, 50), pct(latencies, 99), max(latencies))
    rows.append(row)
    print(f"{number:>6} {row[0]:>8.0f} {row[1]:>7} {row[2]:>8.0f} {row[3]:>8.0f} {row[4]:>8.0f}")
if rows:
    med = lambda i: sorted(r[i] for r in rows)[len(rows) // 2]
    print(f"{'median':>6} {med(0):>8.0f} {med(1):>7} {med(2):>8.0f} {med(3):>8.0f} {med(4):>8.0f}")
    print(f"target: p99 <= 1000 ms; median p99 {med(3):.0f} ms: {'met' if med(3) <= 1000 else 'NOT met'}")
PY
probes=$("$BIN/psql" -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "SELECT count(*) FROM orders" postgres)
alerts=$(wc -l < "$work/alerts.jsonl")
echo "probe INSERTs committed: $probes; alerts raised: $alerts; webhook requests: $(wc -l < "$work/hooks.jsonl")"
grep -E "WARN|ERROR" "$work/alerts.log" | head -5 || true
