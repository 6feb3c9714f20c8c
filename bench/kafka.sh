#!/usr/bin/env bash
# Kafka transport, measured: N simulated instances (N = 1, 8) publish their journals to a
# real Kafka-protocol broker (Tansu, the build scripts/setup.sh installs, with its SQLite
# store, one process on loopback), with IN_FLIGHT messages awaiting acknowledgement at
# once (1: one at a time, as the JetStream publisher must; 16: the default), then one
# consumer reads every instance back.
#
#   bench/kafka.sh                                   # 1M events per N, 3 repeats
#   TOTAL=200000 REPEATS=1 SIZES="1" bench/kafka.sh
#   RUN_RECORDS=1 TOTAL=200000 bench/kafka.sh        # one record per message, as when live
#
# Each instance's journal holds TOTAL/N statement events in DAS records of BATCH events,
# written once per N by the transport benchmark's generator (fleet_journals). Per repeat
# and IN_FLIGHT value, a new broker and store:
#   publish:  N `pgtrail transport publish --kafka --until-caught-up` processes at once:
#             records/s and events/s from the first start to the last acknowledgement
#             (checked in their --state files: every record acknowledged).
#   consume:  `pgtrail export --kafka --format jsonl` of every topic (chain checks,
#             decryption, every event counted once): events/s.
#   CPU:      seconds of user + system time of the publishers, the broker and the consumer.
# What it shows is pgtrail's side (what pipelining buys against one message at a time, on
# the same broker in the same run). Tansu is not Apache Kafka, and this build of it is an
# unoptimised one: the broker's figures are not Kafka's. Everything shares 2 CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL="${TOTAL:-1000000}"
BATCH="${BATCH:-50}"
REPEATS="${REPEATS:-3}"
SIZES="${SIZES:-1 8}"
IN_FLIGHT="${IN_FLIGHT:-1 16}"
RUN_RECORDS="${RUN_RECORDS:-256}"
. bench/lib.sh
command -v tansu >/dev/null || { echo "run scripts/setup.sh first (tansu)" >&2; exit 1; }

echo "building (release)..." >&2
cargo build --release --locked -p pgtrail --bin pgtrail >&2
cargo build --release --locked -p pgtrail-transport-nats --example fleet_journals >&2
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
PGTRAIL="$TARGET/release/pgtrail"
GEN="$TARGET/release/examples/fleet_journals"
work=$(mktemp -d /tmp/pgtrail-kafka-bench.XXXXXX)
BROKER_PID=""
stop_broker() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
  BROKER_PID=""
}
cleanup() { stop_broker; rm -rf "$work"; }
trap cleanup EXIT

start_broker() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir/broker"
  (cd "$dir/broker" && exec tansu broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db >"$dir/broker.log" 2>&1) &
  BROKER_PID=$!
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  BROKERS="127.0.0.1:$port"
}

acked() {
  local dir=$1 n=$2 sum=0 i rec
  for ((i = 0; i < n; i++)); do
    rec=$(sed -n 's/.*"record":\([0-9]*\).*/\1/p' "$dir/sim-$i.state" 2>/dev/null || true)
    sum=$((sum + ${rec:-0}))
  done
  echo "$sum"
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
    for k in $IN_FLIGHT; do
      run="$work/run-$n-$k-$repeat"; mkdir -p "$run"
      start_broker "$run"
      broker_cpu0=$(cpu_of_pid "$BROKER_PID")
      t0=$(now)
      pubs=()
      for ((i = 0; i < n; i++)); do
        with_cpu "$PGTRAIL" transport publish --kafka "$BROKERS" --replication 1 --in-flight "$k" --run-records "$RUN_RECORDS" \
          --journal "$gen/sim-$i/journal" --state "$run/sim-$i.state" --until-caught-up 2>"$run/pub-$i.log" &
        pubs+=($!)
      done
      for pid in "${pubs[@]}"; do wait "$pid" || { echo "a publisher failed:" >&2; cat "$run"/pub-*.log >&2; exit 1; }; done
      t1=$(now)
      pub_cpu=$(for ((i = 0; i < n; i++)); do tail -1 "$run/pub-$i.log"; done | awk '{s += $1} END {printf "%.2f", s}')
      broker_cpu1=$(cpu_of_pid "$BROKER_PID")
      got_records=$(acked "$run" "$n")
      [ "$got_records" -eq "$records" ] || { echo "publishers acknowledged $got_records of $records records" >&2; exit 1; }
      t2=$(now)
      consumer_cpu=$(with_cpu "$PGTRAIL" export --kafka "$BROKERS" --key "$gen/keys/wrapping.key" --format jsonl \
        2>&1 >"$run/events.jsonl" | tail -1)
      t3=$(now)
      got=$(wc -l < "$run/events.jsonl")
      [ "$got" -eq "$events" ] || { echo "the consumer read $got events, $events were published" >&2; exit 1; }
      stop_broker
      rm -rf "$run/broker" "$run/events.jsonl"
      line=$(awk -v n="$n" -v k="$k" -v r="$records" -v e="$events" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" \
        -v pc="$pub_cpu" -v b0="$broker_cpu0" -v b1="$broker_cpu1" -v cc="$consumer_cpu" \
        'BEGIN { printf "%d %d %.0f %.0f %.0f %.2f %.2f %.2f", n, k, r/(t1-t0), e/(t1-t0), e/(t3-t2), pc, b1-b0, cc }')
      read -r _ _ rps eps ceps pcpu bcpu ccpu <<<"$line"
      echo "N=$n in-flight $k run $repeat: publish $rps records/s, $eps events/s; consume $ceps events/s; CPU s: publishers $pcpu, broker $bcpu, consumer $ccpu" >&2
      RESULTS[$n-$k]+="$line"$'\n'
    done
  done
done

echo
echo "kafka transport: $TOTAL events per N in records of $BATCH, up to $RUN_RECORDS records per message, one Tansu broker (SQLite), medians of $REPEATS"
printf '%-4s %10s %14s %14s %14s %12s %14s %12s\n' N in-flight "pub records/s" "pub events/s" "consume ev/s" "pub CPU s" "broker CPU s" "cons. CPU s"
for n in $SIZES; do
  for k in $IN_FLIGHT; do
    col() { printf '%s' "${RESULTS[$n-$k]}" | awk -v c="$1" 'NF {print $c}' | median; }
    printf '%-4s %10s %14s %14s %14s %12s %14s %12s\n' "$n" "$k" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(col 7)" "$(col 8)"
  done
done
