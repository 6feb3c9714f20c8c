#!/usr/bin/env bash
# Archive and query, measured: a journal of EVENTS pgbench-shaped events (records of
# BATCH events) is archived into Parquet on one core (taskset) REPEATS times: events/s
# (median) and bytes per million events. Then two auditor's questions over the archive,
# each run QUERY_REPEATS times with `pgtrail query` (release) and with DuckDB (PyPI
# duckdb, from .venv-interop) on the same files, medians in milliseconds:
#   count by user:            SELECT db_user_name, count(*) ... GROUP BY 1
#   one person's statements:  every statement of teller_3 (a tenth of the events), in
#                             time order, written out as CSV (to /dev/null)
#
#   bench/archive.sh                       # 10M events, batches of 100, 3 archive runs
#   EVENTS=1000000 REPEATS=1 bench/archive.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-10000000}"
BATCH="${BATCH:-100}"
REPEATS="${REPEATS:-3}"
QUERY_REPEATS="${QUERY_REPEATS:-5}"
echo "building (release)..." >&2
cargo build --release --locked -p pgtrail --bin pgtrail -p pgtrail-archive --example archive_bench >&2
work=$(mktemp -d /tmp/pgtrail-archive-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "writing a journal of $EVENTS events and archiving it $REPEATS times on one core..." >&2
taskset -c 0 target/release/examples/archive_bench "$work" "$EVENTS" "$BATCH" "$REPEATS"
archive="$work/archive"

median() { sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# Seconds of wall time of a command, output discarded.
seconds() { local t0 t1; t0=$(date +%s%N); "$@" > /dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }

COUNT_BY_USER="SELECT db_user_name, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC"
ONE_PERSON="SELECT log_time, database_name, command, command_text FROM events WHERE db_user_name = 'teller_3' ORDER BY log_time"
duck() {
  .venv-interop/bin/python - "$archive" "$1" "$2" <<'PY'
import sys, duckdb
archive, sql, mode = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{archive}/**/*.parquet', hive_partitioning = true)")
if mode == "csv":
    con.execute(f"COPY ({sql}) TO '/dev/null' (FORMAT csv, HEADER)")
else:
    con.execute(sql).fetchall()
PY
}
echo "queries over the archive ($QUERY_REPEATS runs each)..." >&2
for name in count one; do
  if [ "$name" = count ]; then sql=$COUNT_BY_USER; fmt=table; mode=fetch; else sql=$ONE_PERSON; fmt=csv; mode=csv; fi
  # The first run of each warms the page cache; it is not counted.
  target/release/pgtrail query --archive "$archive" --format "$fmt" "$sql" > /dev/null
  duck "$sql" "$mode"
  p=$(for _ in $(seq "$QUERY_REPEATS"); do seconds target/release/pgtrail query --archive "$archive" --format "$fmt" "$sql"; done | median)
  d=$(for _ in $(seq "$QUERY_REPEATS"); do seconds duck "$sql" "$mode"; done | median)
  printf '%-8s pgtrail query %s ms   duckdb %s ms (each includes process start)\n' "$name:" "$p" "$d"
done
echo "rows of one person: $(target/release/pgtrail query --archive "$archive" --format csv "SELECT count(*) FROM events WHERE db_user_name = 'teller_3'" | tail -1)"
