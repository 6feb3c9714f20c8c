#!/usr/bin/env bash
# Waits for the Tansu broker that scripts/setup.sh builds in the background (the Kafka
# transport's tests run it), showing that it is still building; fails with its build log if
# the build failed. Returns at once when tansu is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
status=target/tansu-install.status
if command -v tansu >/dev/null && [ ! -f "$status" ]; then exit 0; fi
if [ ! -f "$status" ] && ! pgrep -f "cargo install tansu" >/dev/null; then
  echo "tansu is not installed and is not being built: run scripts/setup.sh" >&2
  exit 1
fi
waited=0
while [ ! -f "$status" ]; do
  # (The build's shell writes the status just after cargo exits: give it a moment.)
  if ! pgrep -f "cargo install tansu" >/dev/null && sleep 2 && [ ! -f "$status" ]; then
    echo "the tansu build stopped without a result; its log:" >&2
    tail -n 40 target/tansu-install.log >&2 || true
    exit 1
  fi
  if [ $((waited % 30)) -eq 0 ]; then echo "waiting for the tansu build (${waited}s; log: target/tansu-install.log)"; fi
  sleep 1
  waited=$((waited + 1))
done
if [ "$(cat "$status")" != "0" ]; then
  echo "building tansu failed:" >&2
  tail -n 40 target/tansu-install.log >&2
  exit 1
fi
command -v tansu >/dev/null || { echo "tansu was built but is not on PATH (~/.cargo/bin)" >&2; exit 1; }
