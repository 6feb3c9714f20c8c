#!/usr/bin/env bash
# Runs the wire decoder fuzz target for a fixed number of seconds (default 60).
# cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the pinned stable
# toolchain accept them for this build only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
mkdir -p fuzz/corpus/wire_decoder
RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decoder --fuzz-dir fuzz -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 25
echo "fuzz: wire_decoder ran ${seconds}s without a crash"
