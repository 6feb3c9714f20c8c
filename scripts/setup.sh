#!/usr/bin/env bash
# Installs what building and testing pgtrail needs on a fresh Debian machine:
# PostgreSQL 15 (server, client, pgbench), pgbouncer (benchmarks), libclang (pg_query's
# bindgen), pgaudit 1.7 (the ingest tests), python3-venv, Java and the PostgreSQL JDBC driver (the noise test browses a
# schema with it), cargo-nextest, cargo-fuzz and s3s-fs (a real S3-compatible server), and the
# official AWS Encryption SDK for Python, the Standard Webhooks library, aiosmtpd and DuckDB in
# .venv-interop (test counterparts). Chromium (headless: the reports are printed to PDF in a test).
# nats-server (the transport tests run a 3-node JetStream cluster of it). Tansu, a
# Kafka-protocol broker from crates.io (the Kafka transport's tests), built in the background.
# pgAdmin 4 in .venv-pgadmin (the noise test browses a table with it). Node.js and the npm
# package oidc-provider in tests/oidc (the OIDC login tests and quickstart --oidc). Safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(postgresql-15 postgresql-client-15 pgbouncer libclang-dev clang python3-venv
  openjdk-17-jre-headless libpostgresql-jdbc-java postgresql-15-pgaudit chromium fonts-dejavu-core nats-server)
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

# A real Kafka-protocol broker for the Kafka transport's tests: Tansu from crates.io, with its
# SQLite store. Its build takes minutes, so it runs in the background while the rest is
# installed (and while scripts/test.sh builds pgtrail); scripts/test.sh waits for it before
# the tests. A debug build without debug info: quick to build, fast enough for the tests.
mkdir -p "$(dirname "$0")/../target"
TANSU_STATUS="$(cd "$(dirname "$0")/.." && pwd)/target/tansu-install.status"
if ! command -v tansu >/dev/null; then
  echo "setup: building tansu 0.6.0 in the background (log: target/tansu-install.log)"
  rm -f "$TANSU_STATUS"
  (
    cd /tmp # not the repository: its .cargo/config.toml is pgtrail's own
    status=0
    CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version 0.6.0 --locked --debug --features libsql \
      >"${TANSU_STATUS%.status}.log" 2>&1 || status=$?
    echo "$status" >"$TANSU_STATUS"
  ) </dev/null >/dev/null 2>&1 &
else
  echo 0 >"$TANSU_STATUS"
fi

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# A real S3-compatible server for the archive's s3:// tests (0.14.1: the newest that builds
# with this toolchain).
command -v s3s-fs >/dev/null || cargo install s3s-fs --version 0.14.1 --features binary --locked
cd "$(dirname "$0")/.."
# Test counterparts in Python: the official AWS Encryption SDK (interop), the official
# Standard Webhooks library (checks our webhook signatures) and aiosmtpd (a real SMTP server).
# and the official Prometheus client (its strict OpenMetrics parser reads our /metrics), and
# DuckDB (reads the Parquet archive as a user would), and the OCSF 1.8.0 JSON schema with
# jsonschema (validates every OCSF export).
python_packages=("aws-encryption-sdk==4.0.7" "standardwebhooks==1.1.0" "aiosmtpd==1.4.6" "prometheus-client==0.23.1"
  "duckdb==2.0.1" "ocsf-json-schema==1.2.0" "jsonschema==4.26.0")
if ! .venv-interop/bin/python -c "import aws_encryption_sdk, standardwebhooks, aiosmtpd, prometheus_client, duckdb, ocsf_json_schema, jsonschema" 2>/dev/null; then
  echo "setup: installing ${python_packages[*]} into .venv-interop"
  [ -x .venv-interop/bin/pip ] || python3 -m venv .venv-interop
  .venv-interop/bin/pip install --quiet --disable-pip-version-check "${python_packages[@]}"
fi
# A real pgAdmin 4 for the noise test (it browses a table through the proxy).
if ! .venv-pgadmin/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('pgadmin4') is None)" 2>/dev/null; then
  echo "setup: installing pgAdmin 4 (pgadmin4==9.18) into .venv-pgadmin"
  [ -x .venv-pgadmin/bin/pip ] || python3 -m venv .venv-pgadmin
  .venv-pgadmin/bin/pip install --quiet --disable-pip-version-check "pgadmin4==9.18"
fi
# A real OpenID Connect provider for the token login tests (versions pinned by package-lock.json).
if ! command -v node >/dev/null; then
  echo "setup: installing nodejs and npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  echo "setup: installing oidc-provider into tests/oidc"
  npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi
echo "setup: done"
