#!/usr/bin/env bash
# Installs what building and testing pgtrail needs on a fresh Debian machine:
# PostgreSQL 15 (server, client, pgbench), pgbouncer (benchmarks), libclang (pg_query's
# bindgen), cargo-nextest and cargo-fuzz. Safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(postgresql-15 postgresql-client-15 pgbouncer libclang-dev clang)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a cluster on port 5432 when the server package is installed; pgtrail's
# tests start their own, so that one is not needed (and is left alone if it runs).

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
echo "setup: done"
