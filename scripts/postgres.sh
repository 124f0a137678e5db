#!/usr/bin/env bash
# Start, stop or check a throwaway PostgreSQL cluster on 127.0.0.1 for the tests and the demo.
#
#   scripts/postgres.sh start      initdb once (trust auth for local sockets and 127.0.0.1 only), start,
#                                  wait until pg_isready reports that it accepts connections, create
#                                  the databases controlplane and controlplane_test
#   scripts/postgres.sh stop       stop the server of this data directory with pg_ctl
#   scripts/postgres.sh status     exit 0 when the server of this data directory accepts connections
#   scripts/postgres.sh url [DB]   print the SQLAlchemy URL of DB (default controlplane_test)
#   scripts/postgres.sh install    install the server binaries from Debian's packages when missing (root only)
#
# Sourced from another bash script, it only defines functions: apt_install and ensure_postgres_binaries.
#
# The cluster runs with fsync off, so a machine crash can corrupt it: it is meant to be thrown away
# (delete the state directory to start from scratch).
#
# Settings (environment):
#   POSTGRES_PORT         TCP port on 127.0.0.1, default 55432
#   POSTGRES_HOME_DIR     state directory (data, server log, socket), default .postgres in the repository
#   POSTGRES_BIN_DIR      directory holding initdb, pg_ctl and postgres; default: `pg_config --bindir`,
#                         then the newest /usr/lib/postgresql/*/bin
#   POSTGRES_RUN_AS       user the server runs as when this script runs as root, default postgres
#   POSTGRES_START_WAIT   seconds to wait for the server to accept connections, default 60

pg_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pg_root=$(cd "$pg_here/.." && pwd)
pg_port=${POSTGRES_PORT:-55432}
pg_state=${POSTGRES_HOME_DIR:-$pg_root/.postgres}
pg_data=$pg_state/data
pg_log=$pg_state/postgres.log
pg_run_as=${POSTGRES_RUN_AS:-postgres}
pg_wait_s=${POSTGRES_START_WAIT:-60}
pg_databases=(controlplane controlplane_test)
# A Unix socket path is limited to 107 bytes on Linux, including the ".s.PGSQL.<port>" file name.
pg_max_socket_dir_len=80

pg_say() { echo "postgres.sh: $*" >&2; }

# Run apt-get install for the given Debian packages, with one `apt-get update` per process tree.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    pg_say "installing $* needs root; run as root or install them yourself"
    return 1
  fi
  if ! command -v apt-get >/dev/null; then
    pg_say "apt-get not found; install $* with this system's package manager"
    return 1
  fi
  if [ "${CONTROLPLANE_APT_UPDATED:-0}" != 1 ]; then
    apt-get update -q
    export CONTROLPLANE_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Print the directory holding initdb, pg_ctl and postgres, or return 1 when none is installed.
pg_find_bindir() {
  local dir
  if [ -n "${POSTGRES_BIN_DIR:-}" ]; then
    [ -x "$POSTGRES_BIN_DIR/initdb" ] && echo "$POSTGRES_BIN_DIR"
    return
  fi
  if command -v pg_config >/dev/null && dir=$(pg_config --bindir 2>/dev/null) && [ -x "$dir/initdb" ]; then
    echo "$dir"
    return 0
  fi
  # Debian installs each major version side by side; take the newest.
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    if [ -x "$dir/initdb" ]; then
      echo "$dir"
      return 0
    fi
  done
  if dir=$(command -v initdb); then
    dirname "$dir"
    return 0
  fi
  return 1
}

# Install Debian's postgresql package when no server binaries are found.
ensure_postgres_binaries() {
  if pg_find_bindir >/dev/null; then return 0; fi
  if [ -n "${POSTGRES_BIN_DIR:-}" ]; then
    pg_say "POSTGRES_BIN_DIR=$POSTGRES_BIN_DIR has no initdb; point it at the bin directory of a PostgreSQL server"
    return 1
  fi
  pg_say "no PostgreSQL server binaries found; installing Debian's postgresql package"
  apt_install postgresql || {
    pg_say "install the PostgreSQL server (Debian: apt-get install postgresql) or set POSTGRES_BIN_DIR"
    return 1
  }
  pg_find_bindir >/dev/null || { pg_say "postgresql was installed but initdb is still not found"; return 1; }
}

# Run a command as the server user, because PostgreSQL rejects running as root.
pg_as_server_user() {
  if [ "$(id -u)" -ne 0 ]; then
    (cd "$pg_state" && "$@")
  elif command -v runuser >/dev/null; then
    (cd "$pg_state" && runuser -u "$pg_run_as" -- "$@")
  else
    (cd "$pg_state" && su -s /bin/sh "$pg_run_as" -c "$(printf '%q ' "$@")")
  fi
}

pg_ensure_server_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  id -u "$pg_run_as" >/dev/null 2>&1 && return 0
  pg_say "creating the system user $pg_run_as to run the server"
  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$pg_run_as"
}

pg_prepare_state_dir() {
  mkdir -p "$pg_state"
  if [ "$(id -u)" -eq 0 ]; then chown "$pg_run_as": "$pg_state"; fi
  if ! pg_as_server_user test -w "$pg_state"; then
    pg_say "user $pg_run_as cannot write $pg_state, probably because a parent directory is not searchable by it;"
    pg_say "set POSTGRES_HOME_DIR to a directory it can reach, such as /tmp/controlplane-postgres"
    exit 1
  fi
}

pg_init_cluster() {
  local bindir=$1 server_major data_major
  # `postgres --version` prints e.g. "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
  server_major=$("$bindir/postgres" --version | awk '{print $3}' | sed -E 's/^([0-9]+).*/\1/')
  if [ -f "$pg_data/PG_VERSION" ]; then
    data_major=$(cat "$pg_data/PG_VERSION")
    if [ "$data_major" != "$server_major" ]; then
      pg_say "$pg_data was created by PostgreSQL $data_major but the server found is $server_major ($bindir);"
      pg_say "delete $pg_state to start a new throwaway cluster, or set POSTGRES_BIN_DIR to a $data_major server"
      exit 1
    fi
    return 0
  fi
  pg_say "creating a PostgreSQL $server_major cluster in $pg_data"
  pg_as_server_user "$bindir/initdb" -D "$pg_data" -U postgres --auth=trust --encoding=UTF8 --no-locale \
    >"$pg_state/initdb.log" 2>&1 || { pg_say "initdb failed:"; cat "$pg_state/initdb.log" >&2; exit 1; }
  # initdb's own pg_hba.conf also trusts ::1 and replication; keep only what the tests use.
  pg_as_server_user tee "$pg_data/pg_hba.conf" >/dev/null <<'HBA'
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
HBA
  echo "include_if_exists = 'controlplane.conf'" | pg_as_server_user tee -a "$pg_data/postgresql.conf" >/dev/null
}

# Rewrite the settings that depend on the environment, so a changed POSTGRES_PORT takes effect on start.
pg_write_settings() {
  local socket_dir=$pg_state
  if [ ${#socket_dir} -gt $pg_max_socket_dir_len ]; then
    pg_say "NOTE: $pg_state is too long a path for a Unix socket; the server listens on TCP only"
    socket_dir=""
  fi
  pg_as_server_user tee "$pg_data/controlplane.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$socket_dir'
# Throwaway cluster: durability is traded for test speed.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
}

pg_is_running() {
  [ -f "$pg_data/postmaster.pid" ] && pg_as_server_user "$1/pg_ctl" -D "$pg_data" status >/dev/null 2>&1
}

pg_accepts_connections() {
  "$1/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres
}

pg_create_databases() {
  local bindir=$1 db exists
  for db in "${pg_databases[@]}"; do
    exists=$("$bindir/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tAX \
      -c "SELECT 1 FROM pg_database WHERE datname = '$db'")
    if [ "$exists" != 1 ]; then
      "$bindir/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres "$db"
      pg_say "created database $db"
    fi
  done
}

pg_start() {
  local bindir deadline
  ensure_postgres_binaries
  bindir=$(pg_find_bindir)
  pg_ensure_server_user
  pg_prepare_state_dir

  if pg_is_running "$bindir"; then
    pg_say "already running on 127.0.0.1:$pg_port (data $pg_data)"
  else
    if pg_accepts_connections "$bindir"; then
      pg_say "another server already listens on 127.0.0.1:$pg_port; stop it or set POSTGRES_PORT to a free port"
      exit 1
    fi
    pg_init_cluster "$bindir"
    pg_write_settings
    # -w waits for the server's own "ready" mark in postmaster.pid; pg_isready below checks from outside.
    if ! pg_as_server_user "$bindir/pg_ctl" -D "$pg_data" -l "$pg_log" -w -t "$pg_wait_s" start >/dev/null; then
      pg_say "the server did not start; last lines of $pg_log:"
      tail -20 "$pg_log" >&2 || true
      exit 1
    fi
  fi

  deadline=$((SECONDS + pg_wait_s))
  until pg_accepts_connections "$bindir"; do
    if [ $SECONDS -ge "$deadline" ]; then
      pg_say "timed out after ${pg_wait_s}s waiting for pg_isready on 127.0.0.1:$pg_port; see $pg_log"
      exit 1
    fi
    sleep 0.5
  done

  pg_create_databases "$bindir"
  pg_say "ready on 127.0.0.1:$pg_port (data $pg_data, pid $(head -1 "$pg_data/postmaster.pid"))"
}

pg_stop() {
  local bindir
  if ! bindir=$(pg_find_bindir) || ! pg_is_running "$bindir"; then
    pg_say "not running (data $pg_data)"
    return 0
  fi
  pg_as_server_user "$bindir/pg_ctl" -D "$pg_data" -m fast -w -t "$pg_wait_s" stop >/dev/null
  pg_say "stopped (data $pg_data)"
}

pg_status() {
  local bindir
  if bindir=$(pg_find_bindir) && pg_is_running "$bindir" && pg_accepts_connections "$bindir"; then
    pg_say "running on 127.0.0.1:$pg_port (data $pg_data)"
    return 0
  fi
  pg_say "not running on 127.0.0.1:$pg_port (data $pg_data)"
  return 1
}

pg_main() {
  case "${1:-}" in
    start) pg_start ;;
    stop) pg_stop ;;
    status) pg_status ;;
    url) echo "postgresql+psycopg://postgres@127.0.0.1:$pg_port/${2:-controlplane_test}" ;;
    install) ensure_postgres_binaries ;;
    *) echo "usage: $0 start|stop|status|url [DATABASE]|install" >&2; exit 2 ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  pg_main "$@"
fi
