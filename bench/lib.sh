# Shared by the benchmark scripts (sourced): a throwaway PostgreSQL 15 and pgbouncer on
# free loopback ports, owned by the postgres user when run as root, and medians.
BIN=/usr/lib/postgresql/15/bin

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# Sets $work to a new temporary directory the postgres user can use. $1: name prefix.
make_work() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$work"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; fi
}

# Starts a trust-auth cluster in $work/data on port $1; further arguments are extra
# postgresql.conf lines.
start_pg() {
  local port=$1; shift
  echo "starting PostgreSQL 15 on $port..." >&2
  as_pg "$BIN/initdb" -D "$work/data" -U postgres --auth=trust --no-sync >/dev/null
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$work'"
    for line in "$@"; do echo "$line"; done
  } >> "$work/data/postgresql.auto.conf"
  as_pg "$BIN/pg_ctl" start -D "$work/data" -l "$work/pg.log" -w >/dev/null
}

stop_pg() { as_pg "$BIN/pg_ctl" stop -D "$work/data" -m fast >/dev/null 2>&1 || true; }

# pgbouncer in session mode on port $1 in front of the cluster on port $2 (trust); its
# pool holds $BOUNCER_POOL server connections (80), enough for a -c 64 run.
start_pgbouncer() {
  cat > "$work/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$2 dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = ${BOUNCER_MAX_CLIENTS:-200}
default_pool_size = ${BOUNCER_POOL:-80}
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
  echo '"postgres" ""' > "$work/userlist.txt"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work/pgbouncer.ini" "$work/userlist.txt"; fi
  # runuser's PAM session resets the open file limit: raise it again to the caller's
  as_pg bash -c 'ulimit -n "$1" 2>/dev/null; exec pgbouncer "$2"' _ "$(ulimit -n)" "$work/pgbouncer.ini" >/dev/null 2>&1 &
  BOUNCER_PID=$!
}

# pgbouncer forks under runuser: stop it through its pid file too.
stop_pgbouncer() {
  [ -f "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
  [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
}

# A pgtrail configuration on stdout: listening on port $1 in front of the cluster on
# $PG_PORT (no TLS), journal $work/$2, keys in $work/keys, then the TOML in $3.
pgtrail_config() {
  cat <<TOML
[proxy]
listen = "127.0.0.1:$1"
[upstream]
host = "127.0.0.1"
port = $PG_PORT
tls = "disable"
[journal]
dir = "$work/$2"
[keys]
dir = "$work/keys"
${3:-}
TOML
}

# Waits until something accepts PostgreSQL connections on each port given.
wait_ready() {
  for port in "$@"; do
    for _ in $(seq 100); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
  done
}

# TPS of pgbench against port $1 (further arguments go to pgbench); uses $CLIENTS,
# $THREADS and $DURATION.
pgbench_tps() {
  local port=$1; shift
  "$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" "$@" postgres 2>/dev/null \
    | awk '/^tps = /{print $3; exit}'
}

# "TPS TRANSACTIONS" of pgbench against port $1 with $2 clients (threads: the lesser of
# $THREADS and the clients); further arguments go to pgbench; uses $DURATION.
pgbench_run() {
  local port=$1 clients=$2; shift 2
  local threads=$(( clients < THREADS ? clients : THREADS ))
  "$BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$clients" -j "$threads" -T "$DURATION" "$@" postgres 2>/dev/null \
    | awk '/^number of transactions actually processed: /{n=$6} /^tps = /{t=$3} END{print t, n}'
}

# CPU time (user + system) process $1 has used so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Resident set size of process $1 in KiB.
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# Builds pgtrail and the zero-work relay (release), sets PGTRAIL and RELAY to them, and
# picks free ports for the cluster and the four proxies start_proxies starts.
prepare_proxies() {
  command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed: run scripts/setup.sh" >&2; exit 1; }
  echo "building pgtrail and the zero-work relay (release)..." >&2
  cargo build --release --locked --bin pgtrail >&2
  cargo build --release --locked -p pgtrail-proxy --example relay >&2
  PGTRAIL="$PWD/target/release/pgtrail"
  RELAY="$PWD/target/release/examples/relay"
  PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); RELAY_PORT=$(free_port)
  TRAIL_PORT=$(free_port); SYNC_PORT=$(free_port)
}

# The four proxies in front of the cluster on $PG_PORT, for the comparisons: pgbouncer on
# $BOUNCER_PORT, the zero-work relay ($RELAY) on $RELAY_PORT, pgtrail ($PGTRAIL) with async
# delivery on $TRAIL_PORT and with sync delivery on $SYNC_PORT. Sets BOUNCER_PID,
# RELAY_PID, TRAIL_PID and SYNC_PID once all accept connections.
start_proxies() {
  start_pgbouncer "$BOUNCER_PORT" "$PG_PORT"
  "$RELAY" "127.0.0.1:$RELAY_PORT" "127.0.0.1:$PG_PORT" &
  RELAY_PID=$!
  "$PGTRAIL" keys init --dir "$work/keys" >/dev/null
  pgtrail_config "$TRAIL_PORT" journal > "$work/async.toml"
  PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/async.toml" 2>"$work/pgtrail.log" &
  TRAIL_PID=$!
  pgtrail_config "$SYNC_PORT" journal-sync $'[delivery]\nmode = "sync"' > "$work/sync.toml"
  PGTRAIL_LOG=warn "$PGTRAIL" proxy --config "$work/sync.toml" 2>"$work/pgtrail-sync.log" &
  SYNC_PID=$!
  wait_ready "$BOUNCER_PORT" "$RELAY_PORT" "$TRAIL_PORT" "$SYNC_PORT"
  BOUNCER_PID=$(cat "$work/pgbouncer.pid")
}

# Stops what start_proxies started (for a cleanup trap: never fails).
stop_proxies() {
  for pid in "${RELAY_PID:-}" "${TRAIL_PID:-}" "${SYNC_PID:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  stop_pgbouncer
}

# Seconds of CPU (user + system) a running process has used, from /proc.
cpu_of_pid() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Runs a command, then prints on standard error the CPU seconds it and its children used.
with_cpu() {
  python3 -c 'import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.2f}", file=sys.stderr)
sys.exit(rc)' "$@"
}
now() { date +%s.%N; }
