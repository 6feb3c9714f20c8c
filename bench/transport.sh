#!/usr/bin/env bash
# Fleet transport, measured: N simulated instances (N = 1, 8, 32) publish their journals
# into a real 3-node NATS JetStream cluster (Debian nats-server, three processes with
# their own stores and routes on loopback, the audit stream made by `pgtrail transport
# init` with 3 replicas), then one consumer reads every instance back from the stream.
#
#   bench/transport.sh                                # 2M events per N, 3 repeats
#   TOTAL=200000 REPEATS=1 SIZES="1 8" bench/transport.sh
#
# Each instance's journal holds TOTAL/N statement events sealed in DAS records of BATCH
# events (what the recorder writes under load), checkpointed every 1000 records; they are
# written once per N by an example program (fleet_journals), so what is timed is the
# transport, not the capture. Per repeat, a new cluster and stream:
#   publish:  N `pgtrail transport publish --until-caught-up` processes at once (each one
#             instance, as each proxy publishes its own journal): records/s and events/s
#             from the first start to the last acknowledgement (checked in their --state
#             files: every record acknowledged).
#   consume:  `pgtrail export --nats --format jsonl` of every instance (reads each subject,
#             checks every chain record by record, decrypts each record, writes the events
#             to a file, counted: every event once): events/s, and the consumer's lag = the
#             seconds it needs to read the whole backlog after the last acknowledgement.
#   end to end: every event from the first publisher's start to the consumer's last event.
#   CPU:      seconds of user + system time of the publishers, of the three nats-server
#             processes, and of the consumer (getrusage of children, /proc for servers).
#   steady:   then, at a steady rate (STEADY_RATE events/s, 20,000 by default: a busy
#             proxy's rate, spread over STEADY_N = 8 instances, for STEADY_SECS = 20 s), the
#             journals are written live while N following publishers and one following
#             consumer (`pgtrail tail --nats --follow --json`, every instance) run: the
#             consumer lag is each event's delay from its record's creation to the
#             consumer's output (p50, p99, max), and whether the consumer kept up.
# The machine has 2 cores: the cluster, the publishers and the consumer share them, so
# these are the floor of what separate hosts would do. Medians of REPEATS are printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL="${TOTAL:-2000000}"
BATCH="${BATCH:-50}"
REPEATS="${REPEATS:-3}"
SIZES="${SIZES:-1 8 32}"
STEADY_RATE="${STEADY_RATE:-20000}"
STEADY_N="${STEADY_N:-8}"
STEADY_SECS="${STEADY_SECS:-20}"
. bench/lib.sh
command -v nats-server >/dev/null || { echo "run scripts/setup.sh first (nats-server)" >&2; exit 1; }

echo "building (release)..." >&2
cargo build --release --locked -p pgtrail --bin pgtrail >&2
cargo build --release --locked -p pgtrail-transport-nats --example fleet_journals >&2
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
PGTRAIL="$TARGET/release/pgtrail"
GEN="$TARGET/release/examples/fleet_journals"
work=$(mktemp -d /tmp/pgtrail-transport-bench.XXXXXX)
SERVER_PIDS=()
stop_cluster() {
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  SERVER_PIDS=()
}
cleanup() { stop_cluster; rm -rf "$work"; }
trap cleanup EXIT

start_cluster() {
  local dir=$1 routes="" i
  CLIENT_PORTS=(); MONITOR_PORTS=(); local route_ports=()
  for i in 1 2 3; do CLIENT_PORTS+=("$(free_port)"); route_ports+=("$(free_port)"); MONITOR_PORTS+=("$(free_port)"); done
  for i in 0 1 2; do routes+="${routes:+, }nats-route://127.0.0.1:${route_ports[$i]}"; done
  for i in 0 1 2; do
    mkdir -p "$dir/n$i"
    cat > "$dir/n$i.conf" <<CONF
server_name: n$((i + 1))
listen: 127.0.0.1:${CLIENT_PORTS[$i]}
http: 127.0.0.1:${MONITOR_PORTS[$i]}
jetstream { store_dir: "$dir/n$i" }
cluster { name: pgtrail, listen: 127.0.0.1:${route_ports[$i]}, routes: [$routes] }
CONF
    nats-server -c "$dir/n$i.conf" 2>"$dir/n$i.log" &
    SERVER_PIDS+=($!)
  done
  NATS_URL=$(printf 'nats://127.0.0.1:%s,' "${CLIENT_PORTS[@]}"); NATS_URL=${NATS_URL%,}
  for i in 0 1 2; do
    for _ in $(seq 1 300); do
      curl -sf "http://127.0.0.1:${MONITOR_PORTS[$i]}/healthz" 2>/dev/null | grep -q ok \
        && curl -sf "http://127.0.0.1:${MONITOR_PORTS[$i]}/jsz" 2>/dev/null | grep -q '"leader"' && break
      sleep 0.1
    done
  done
  "$PGTRAIL" transport init --nats "$NATS_URL" >/dev/null
}

# Records in the journals not yet acknowledged, from the publishers' state files.
lag_now() {
  local dir=$1 n=$2 total=$3 acked=0 i rec
  for ((i = 0; i < n; i++)); do
    rec=$(sed -n 's/.*"record":\([0-9]*\).*/\1/p' "$dir/sim-$i.state" 2>/dev/null || true)
    acked=$((acked + ${rec:-0}))
  done
  echo $((total - acked))
}

declare -A RESULTS
for n in $SIZES; do
  per=$((TOTAL / n))
  gen="$work/gen-$n"
  echo "N=$n: writing $n journals of $per events (records of $BATCH)..." >&2
  "$GEN" "$gen" "$n" "$per" "$BATCH" > "$gen.records"
  records=$(awk '{s += $2} END {print s}' "$gen.records")
  events=$((per * n))
  for repeat in $(seq 1 "$REPEATS"); do
    run="$work/run-$n-$repeat"; mkdir -p "$run"
    start_cluster "$run"
    server_cpu0=0; for pid in "${SERVER_PIDS[@]}"; do server_cpu0=$(echo "$server_cpu0 + $(cpu_of_pid "$pid")" | bc); done
    t0=$(now)
    pubs=()
    for ((i = 0; i < n; i++)); do
      with_cpu "$PGTRAIL" transport publish --nats "$NATS_URL" --journal "$gen/sim-$i/journal" \
        --state "$run/sim-$i.state" --until-caught-up 2>"$run/pub-$i.log" &
      pubs+=($!)
    done
    for pid in "${pubs[@]}"; do wait "$pid" || { echo "a publisher failed:" >&2; cat "$run"/pub-*.log >&2; exit 1; }; done
    t1=$(now)
    pub_cpu=$(for ((i = 0; i < n; i++)); do tail -1 "$run/pub-$i.log"; done | awk '{s += $1} END {printf "%.2f", s}')
    server_cpu1=0; for pid in "${SERVER_PIDS[@]}"; do server_cpu1=$(echo "$server_cpu1 + $(cpu_of_pid "$pid")" | bc); done
    left=$(lag_now "$run" "$n" "$records")
    [ "$left" -eq 0 ] || { echo "publishers exited with $left records not acknowledged" >&2; exit 1; }
    t2=$(now)
    consumer_cpu=$(with_cpu "$PGTRAIL" export --nats "$NATS_URL" --key "$gen/keys/wrapping.key" --format jsonl \
      2>&1 >"$run/events.jsonl" | tail -1)
    t3=$(now)
    got=$(wc -l < "$run/events.jsonl")
    [ "$got" -eq "$events" ] || { echo "the consumer read $got events, $events were published" >&2; exit 1; }
    server_cpu2=0; for pid in "${SERVER_PIDS[@]}"; do server_cpu2=$(echo "$server_cpu2 + $(cpu_of_pid "$pid")" | bc); done
    stop_cluster
    rm -rf "$run"/n? "$run/events.jsonl"
    line=$(awk -v n="$n" -v r="$records" -v e="$events" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" \
      -v pc="$pub_cpu" -v s0="$server_cpu0" -v s1="$server_cpu1" -v s2="$server_cpu2" -v cc="$consumer_cpu" \
      'BEGIN { printf "%d %.0f %.0f %.0f %.0f %.1f %.2f %.2f %.2f %.2f", n, r/(t1-t0), e/(t1-t0), e/(t3-t2), e/(t3-t0), t3-t2, pc, s1-s0, cc, s2-s1 }')
    read -r _ rps eps ceps e2e pk pcpu scpu ccpu scpu2 <<<"$line"
    echo "N=$n run $repeat: publish $rps records/s, $eps events/s; consume $ceps events/s (lag: the backlog read in $pk s); end to end $e2e events/s; CPU s: publishers $pcpu, nats-servers $scpu (+$scpu2 while consumed), consumer $ccpu" >&2
    RESULTS[$n]+="$line"$'\n'
  done
done

# The steady-rate phase: live journals, following publishers, one following consumer.
STEADY=""
n=$STEADY_N
per=$((STEADY_RATE * STEADY_SECS / n))
events=$((per * n))
instances=(); for ((i = 0; i < n; i++)); do instances+=(--instance "sim-$i"); done
for repeat in $(seq 1 "$REPEATS"); do
  run="$work/steady-$repeat"; gen="$run/gen"; mkdir -p "$gen"
  start_cluster "$run"
  "$GEN" "$run/keys-only" 1 1 1 >/dev/null && mv "$run/keys-only/keys" "$gen/keys"
  # The consumer first (it waits for the instances' subjects), then the writers and publishers.
  PGTRAIL_LOG="${STEADY_LOG:-info,async_nats=warn}" \
    "$PGTRAIL" tail --nats "$NATS_URL" "${instances[@]}" --key "$gen/keys/wrapping.key" --follow --json \
    2>"$run/tail.log" | python3 -c '
import datetime, sys, time
want, utc, delays = int(sys.argv[1]), datetime.timezone.utc, []
for line in sys.stdin:
    i = line.find("\"startTime\":\"") + 13
    at = datetime.datetime.fromisoformat(line[i:i + 26]).replace(tzinfo=utc).timestamp()
    delays.append((time.time() - at) * 1000)
    if len(delays) == want:
        break
delays.sort()
pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]
print(f"{len(delays)} {pick(0.5):.1f} {pick(0.99):.1f} {delays[-1]:.1f}" if delays else "0 0 0 0")
' "$events" >"$run/lag" &
  consumer_pid=$!
  "$GEN" "$gen" "$n" "$per" "$BATCH" "$STEADY_RATE" >"$run/records" &
  gen_pid=$!
  for ((i = 0; i < n; i++)); do
    for _ in $(seq 1 200); do compgen -G "$gen/sim-$i/journal/*.seg" >/dev/null && break; sleep 0.05; done
  done
  pubs=()
  for ((i = 0; i < n; i++)); do
    "$PGTRAIL" transport publish --nats "$NATS_URL" --journal "$gen/sim-$i/journal" --state "$run/sim-$i.state" \
      2>"$run/pub-$i.log" &
    pubs+=($!)
  done
  # The measuring end stops after the last event; the tail in front of it follows on.
  while [ ! -s "$run/lag" ] && kill -0 "$consumer_pid" 2>/dev/null; do sleep 0.2; done
  pkill -f -- "tail --nats $NATS_URL" 2>/dev/null || true
  wait "$consumer_pid" 2>/dev/null || true
  line=$(cat "$run/lag")
  wait "$gen_pid"
  for pid in "${pubs[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  stop_cluster
  read -r got p50 p99 worst <<<"$line"
  [ "$got" -eq "$events" ] || { echo "steady: the consumer read $got events of $events" >&2; cat "$run/tail.log" >&2; exit 1; }
  echo "steady run $repeat: $STEADY_RATE events/s over $n instances for $STEADY_SECS s: consumer lag p50 $p50 ms, p99 $p99 ms, max $worst ms" >&2
  STEADY+="$p50 $p99 $worst"$'\n'
  [ -z "${STEADY_KEEP:-}" ] || cp "$run/tail.log" "$STEADY_KEEP.$repeat"
  rm -rf "$run"
done

echo
echo "transport: $TOTAL events per N in records of $BATCH, 3-node JetStream cluster (R3), medians of $REPEATS"
printf '%-4s %14s %14s %15s %14s %16s %12s %14s %12s\n' N "pub records/s" "pub events/s" "consumer lag s" "consume ev/s" "end-to-end ev/s" "pub CPU s" "servers CPU s" "cons. CPU s"
for n in $SIZES; do
  col() { printf '%s' "${RESULTS[$n]}" | awk -v c="$1" 'NF {print $c}' | median; }
  printf '%-4s %14s %14s %15s %14s %16s %12s %14s %12s\n' "$n" "$(col 2)" "$(col 3)" "$(col 6)" "$(col 4)" "$(col 5)" "$(col 7)" "$(col 8)" "$(col 9)"
done
steady() { printf '%s' "$STEADY" | awk -v c="$1" 'NF {print $c}' | median; }
echo "steady: $STEADY_RATE events/s over $STEADY_N instances for $STEADY_SECS s (records of $BATCH): consumer lag from record creation to the consumer's output, medians of $REPEATS: p50 $(steady 1) ms, p99 $(steady 2) ms, max $(steady 3) ms"
