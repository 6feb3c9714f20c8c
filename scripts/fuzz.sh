#!/usr/bin/env bash
# Runs each fuzz target for a share of a fixed number of seconds (default 60 in all): the
# wire decoder and the pgAudit log reader (seeded with the reference logs in testdata).
# cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the pinned stable
# toolchain accept them for this build only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
targets=(wire_decoder pgaudit_parser)
share=$(( seconds / ${#targets[@]} ))
mkdir -p fuzz/corpus/wire_decoder fuzz/corpus/pgaudit_parser
for f in testdata/pgaudit/stderr.log testdata/pgaudit/csvlog.csv testdata/pgaudit/jsonlog.json; do
  head -c 4096 "$f" > "fuzz/corpus/pgaudit_parser/seed-$(basename "$f")"
done
for target in "${targets[@]}"; do
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --fuzz-dir fuzz -- \
    -max_total_time="$share" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
  echo "fuzz: $target ran ${share}s without a crash"
done
