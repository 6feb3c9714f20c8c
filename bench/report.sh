#!/usr/bin/env bash
# Report generation time: a journal of EVENTS pgbench-shaped events (checkpointed, half of
# them by people of an identity provider, one in a thousand a GRANT, a failed login, a
# denied DELETE or a bypassing connection) is archived once (archive_bench); then
# `pgtrail report` (release) makes each kind REPEATS times, HTML (at most 10,000 rows
# listed) and verified against the journal, and the median wall time of each is printed,
# next to `pgtrail verify --archive --journal` alone (the part every report pays) and a
# `pgtrail query` counting the same rows (the query alone), measured in the same run.
#
#   bench/report.sh                       # 10M events, 3 repeats
#   EVENTS=1000000 REPEATS=1 bench/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-10000000}"
REPEATS="${REPEATS:-3}"
echo "building (release)..." >&2
cargo build --release --locked -p pgtrail --bin pgtrail -p pgtrail-archive --example archive_bench >&2
work=$(mktemp -d /tmp/pgtrail-report-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "writing and archiving a journal of $EVENTS events..." >&2
target/release/examples/archive_bench "$work" "$EVENTS" 100 1 >&2
PGTRAIL="$PWD/target/release/pgtrail"
keys="$work/keys"

median() { sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# Milliseconds of wall time of a command, output discarded.
millis() { local t0 t1; t0=$(date +%s%N); "$@" > /dev/null 2>&1; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
report() {
  "$PGTRAIL" report --archive "$work/archive" --journal "$work/journal" --from 2000-01-01 \
    --signing-key "$keys/signing.key" --verify-key "$keys/verify.pub" --verify-key "$keys/archive.pub" \
    -o "$work/report.html" "$@"
}
timed() { for _ in $(seq "$REPEATS"); do millis "$@"; done | median; }

# The first run warms the page cache; it is not counted.
report --kind denied >/dev/null 2>&1
printf '%-16s %8s ms\n' "verify alone:" "$(timed "$PGTRAIL" verify --archive "$work/archive" --journal "$work/journal" --verify-key "$keys/verify.pub" --verify-key "$keys/archive.pub")"
for kind in object-access privileged failed-logins person denied coverage; do
  extra=()
  [ "$kind" = person ] && extra=(--person person_1@bank.example)
  ms=$(timed report --kind "$kind" "${extra[@]}")
  report --kind "$kind" "${extra[@]}" 2>"$work/said" >/dev/null
  rows=$(grep -o 'wrote [^ ]* ([0-9]* of [0-9]* events)' "$work/said" | grep -o 'of [0-9]*' | tr -dc 0-9)
  grep -q '^VERIFIED' "$work/said" || { echo "report $kind was not verified:" >&2; cat "$work/said" >&2; exit 1; }
  printf '%-16s %8s ms   %9s events selected, verified\n' "$kind:" "$ms" "$rows"
done
