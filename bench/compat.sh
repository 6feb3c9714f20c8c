#!/usr/bin/env bash
# Client compatibility: psycopg 3's own test suite, run once directly against a throwaway
# PostgreSQL 15 and once through pgtrail in front of the same cluster, in the same run.
# Prints both pytest summaries and every test whose outcome differs.
#
#   PSYCOPG_SRC=/path/to/psycopg bench/compat.sh            # the whole suite
#   PSYCOPG_SRC=... bench/compat.sh tests/test_connection.py tests/test_copy.py ...
#
# PSYCOPG_SRC is a checkout of psycopg's repository at a release tag (its test suite is
# not in the PyPI packages; 3.2.9 is what the numbers in the notes were measured with).
# Needs network access to PyPI for the test dependencies, so it is not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PSYCOPG_SRC:-}" ] || [ ! -d "${PSYCOPG_SRC}/tests" ]; then
  echo "compat.sh: set PSYCOPG_SRC to a checkout of https://github.com/psycopg/psycopg at a release tag" >&2
  exit 2
fi
PSYCOPG_SRC=$(cd "$PSYCOPG_SRC" && pwd)
. bench/lib.sh

VENV="$PWD/.venv-compat"
if [ ! -x "$VENV/bin/pytest" ]; then
  echo "compat: installing psycopg[test] from $PSYCOPG_SRC into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$PSYCOPG_SRC/psycopg[test]" "$PSYCOPG_SRC/psycopg_pool"
fi
echo "compat: building pgtrail..." >&2
cargo build --locked --bin pgtrail >&2
PGTRAIL="$PWD/target/debug/pgtrail"

make_work pgtrail-compat
PG_PORT=$(free_port); PROXY_PORT=$(free_port)
cleanup() {
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
  stop_pg
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
start_pg "$PG_PORT" "max_connections = 200" "max_prepared_transactions = 10"
"$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE psycopg_test" postgres
"$PGTRAIL" keys init --dir "$work/keys" >/dev/null
pgtrail_config "$PROXY_PORT" journal > "$work/pgtrail.toml"
PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/pgtrail.toml" 2>"$work/proxy.log" &
PROXY_PID=$!
wait_ready "$PG_PORT" "$PROXY_PORT"

run_suite() { # label, port
  local label=$1 port=$2
  echo "compat: psycopg tests $label..." >&2
  (cd "$PSYCOPG_SRC" && PSYCOPG_TEST_DSN="host=127.0.0.1 port=$port user=postgres dbname=psycopg_test" \
    "$VENV/bin/pytest" -p no:randomly -q -o addopts="" -o cache_dir="$work/cache-$label" \
    --junitxml="$work/$label.xml" "${@:3}" >"$work/$label.out" 2>&1) || true
  tail -1 "$work/$label.out"
}
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(tests)
direct=$(run_suite direct "$PG_PORT" "${tests[@]}")
proxied=$(run_suite pgtrail "$PROXY_PORT" "${tests[@]}")
echo "direct:        $direct"
echo "through proxy: $proxied"
"$VENV/bin/python" - "$work/direct.xml" "$work/pgtrail.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
def outcomes(path):
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[name] = kinds[0] if kinds else "passed"
    return out
direct, proxied = outcomes(sys.argv[1]), outcomes(sys.argv[2])
differ = sorted(n for n in direct if proxied.get(n) != direct[n])
print(f"tests whose outcome differs: {len(differ)}")
for name in differ:
    print(f"  {name}: direct {direct[name]}, through pgtrail {proxied.get(name, 'missing')}")
worse = [n for n in differ if direct[n] == "passed"]
print(f"passing directly but not through pgtrail: {len(worse)}")
PY
