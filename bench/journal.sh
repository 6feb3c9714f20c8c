#!/usr/bin/env bash
# Journal throughput on one core: events per second through batch, DAS JSON, gzip, ESDK
# encryption and the hash-chained append (with and without an fsync per batch), and each
# stage alone. Pinned to one CPU with taskset; the journal is written under bench/results.
#
#   bench/journal.sh                 # 300k events, batches of 1000, 3 repeats (medians)
#   EVENTS=100000 REPEATS=1 bench/journal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-300000}"
BATCH="${BATCH:-1000}"
REPEATS="${REPEATS:-3}"
echo "building (release)..." >&2
cargo build --release --locked -p pgtrail --example journal_bench >&2
mkdir -p bench/results
cd bench/results
for r in $(seq "$REPEATS"); do
  echo "  repeat $r/$REPEATS..." >&2
  taskset -c 0 ../../target/release/examples/journal_bench "$EVENTS" "$BATCH" > "run-$r.txt"
done
# Median of each line's rate over the repeats.
python3 - run-*.txt <<'PY'
import re, statistics, sys
rates, order = {}, []
for path in sys.argv[1:]:
    for line in open(path):
        m = re.match(r"(.+?)\s+([0-9.]+) events/s$", line.rstrip())
        if m:
            label = m.group(1).strip()
            if label not in rates:
                order.append(label)
            rates.setdefault(label, []).append(float(m.group(2)))
        elif path == sys.argv[1]:
            print(line.rstrip())
for label in order:
    r = rates[label]
    print(f"{label:<44} {statistics.median(r):>12.0f} events/s (median of {len(r)})")
PY
rm -f run-*.txt
