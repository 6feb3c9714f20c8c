#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, integration against real
# PostgreSQL 15, real clients), and a fixed-time fuzzing run of the wire decoder and the
# pgAudit log reader.
# Builds once and reuses the build for every step.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"

echo "== fmt"
cargo fmt --all -- --check
echo "== module cycles"
python3 scripts/module-cycles.py
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked
echo "== tests"
scripts/await-tansu.sh
cargo nextest run --workspace --locked --no-fail-fast
echo "== fuzz: wire decoder and pgAudit reader (${FUZZ_SECONDS}s in all)"
scripts/fuzz.sh "$FUZZ_SECONDS"
