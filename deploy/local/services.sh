#!/usr/bin/env bash
# Make sure the PostgreSQL and RabbitMQ that floq needs are reachable.
#
#   PostgreSQL: host/port from FLOQ_DATABASE_URL (default 127.0.0.1:5432). With
#               FLOQ_LOCAL_ROLE=stack|test, also floq's own role for the local stack
#               (floq_local) or the tests (floq_test), with a generated password in
#               ~/.config/floq/postgres.env; pg_hba.conf is never edited. Otherwise a URL
#               without a password must work as given (trust auth).
#   RabbitMQ:   host/port from FLOQ_AMQP_URL (default 127.0.0.1:5672, guest/guest).
#
# Already reachable: nothing to do (fast). Otherwise: install the Debian packages if
# their binaries are missing, start the system instances, and if those do not exist
# or cannot be used, start private throw-away instances under $PROJECT/.local/.
# What it started is listed in .local/started-services, so that down.sh stops
# exactly that.
#
# Can be executed or sourced; a sourced copy runs itself as a child process so that
# its shell options, traps and variables do not leak into the caller.
#
# Environment: FLOQ_SERVICES_TIMEOUT  seconds to wait for each service (default 60)

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  "${BASH:-bash}" "${BASH_SOURCE[0]}"
  return
fi

set -euo pipefail

PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL_DIR=$PROJECT/.local
TIMEOUT=${FLOQ_SERVICES_TIMEOUT:-60}
# rabbitmq-server, rabbitmqctl and runuser live in sbin, which a normal user's PATH lacks.
PATH=$PATH:/usr/sbin:/sbin

log() { printf '[services] %s\n' "$*" >&2; }
# One line per service started here (not ones that were already running), for down.sh.
record_started() {
  mkdir -p "$LOCAL_DIR"
  printf '%s\n' "$*" >>"$LOCAL_DIR/started-services"
}
die() {
  printf '[services] ERROR: %s\n' "$*" >&2
  exit 1
}

# Run a command as root: directly when we are root, via sudo otherwise.
as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -- "$@"
  else
    die "root is needed to run '$*' and sudo is not installed"
  fi
}

# Split a URL into URL_USER, URL_HAS_PASS, URL_HOST and URL_PORT (defaults: 127.0.0.1, $2).
parse_url() {
  local url=$1 default_port=$2 authority userinfo=""
  authority=${url#*://}
  authority=${authority%%/*}
  authority=${authority%%\?*}
  if [[ $authority == *@* ]]; then
    userinfo=${authority%@*}
    authority=${authority##*@}
  fi
  URL_USER=${userinfo%%:*}
  URL_HAS_PASS=0
  [[ $userinfo != *:* ]] || URL_HAS_PASS=1
  if [[ $authority == \[* ]]; then # [ipv6]:port
    URL_HOST=${authority%%]*}
    URL_HOST=${URL_HOST#[}
    URL_PORT=${authority#*]}
  else
    URL_HOST=${authority%%:*}
    URL_PORT=${authority#"$URL_HOST"}
  fi
  URL_PORT=${URL_PORT#:}
  URL_HOST=${URL_HOST:-127.0.0.1}
  URL_PORT=${URL_PORT:-$default_port}
  [[ $URL_PORT =~ ^[0-9]+$ ]] || die "cannot parse a port out of '$url'"
}

# Only services on this machine can be started by us.
is_local_host() {
  case $1 in
  localhost | ::1 | 127.*) return 0 ;;
  *) return 1 ;;
  esac
}

# The address a private instance should listen on for a given URL host.
listen_addr() {
  if [[ $1 == ::1 ]]; then echo ::1; else echo 127.0.0.1; fi
}

tcp_open() {
  # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Poll "$@" every half second for up to $TIMEOUT seconds.
wait_until() {
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# A daemon must not inherit our stdout/stderr (a CI runner reading our output through
# a pipe would wait for it forever), so start commands write to a log file instead.
run_logged() {
  local logfile=$1
  shift
  mkdir -p "$(dirname "$logfile")"
  if "$@" </dev/null >"$logfile" 2>&1; then
    return 0
  fi
  log "'$*' failed; its output ($logfile):"
  tail -n 20 "$logfile" >&2 || true
  return 1
}

# Install Debian packages; refresh the package lists once if the first attempt fails.
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "$* not installed and apt-get is unavailable; install it by hand"
  log "installing Debian package(s): $*"
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" </dev/null >&2; then
    return 0
  fi
  log "apt-get install failed; running apt-get update and retrying"
  as_root apt-get update </dev/null >&2 || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" </dev/null >&2 ||
    die "could not install $*"
}

# ---------------------------------------------------------------- PostgreSQL

PG_SYS_VER=""
PG_SYS_CLUSTER=""
PG_SYS_STATUS=""

pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
  else
    tcp_open "$PG_HOST" "$PG_PORT"
  fi
}

# Directory holding the newest installed server binaries (initdb, pg_ctl), if any.
pg_server_bindir() {
  local candidates=(/usr/lib/postgresql/*/bin/initdb) newest
  if [[ -x ${candidates[0]} ]]; then
    newest=$(printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1)
    dirname "$newest"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

# Find the Debian system cluster configured for $PG_PORT (sets PG_SYS_VER/PG_SYS_CLUSTER).
find_system_cluster() {
  local ver cluster port status _rest
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  while read -r ver cluster port status _rest; do
    if [[ $port == "$PG_PORT" ]]; then
      PG_SYS_VER=$ver
      PG_SYS_CLUSTER=$cluster
      PG_SYS_STATUS=$status
      return 0
    fi
  done < <(pg_lsclusters -h 2>/dev/null)
  return 1
}

start_system_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! find_system_cluster; then
    log "no Debian system PostgreSQL cluster is configured for port $PG_PORT"
    return 1
  fi
  if [[ $PG_SYS_STATUS == online* ]]; then
    # e.g. just started by the package's postinst: only wait for it.
    log "system PostgreSQL cluster $PG_SYS_VER/$PG_SYS_CLUSTER is already running; waiting for it"
    # Not reachable when we began: booting because our apt-get just installed it.
    record_started postgres-system "$PG_SYS_VER" "$PG_SYS_CLUSTER"
    return 0
  fi
  log "starting system PostgreSQL cluster $PG_SYS_VER/$PG_SYS_CLUSTER"
  run_logged "$LOCAL_DIR/logs/postgres-start.log" \
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_SYS_VER" "$PG_SYS_CLUSTER" start || return 1
  record_started postgres-system "$PG_SYS_VER" "$PG_SYS_CLUSTER"
}

# A throw-away cluster in .local/postgres: trust auth, superuser "postgres".
start_private_postgres() {
  local bindir dir data sock listen
  bindir=$(pg_server_bindir) || die "PostgreSQL server binaries (initdb) not found"
  dir=$LOCAL_DIR/postgres
  local -a as_pg=()
  mkdir -p "$LOCAL_DIR"
  if ((EUID == 0)); then
    # initdb and pg_ctl refuse to run as root: use the postgres system user.
    id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' user to run PostgreSQL"
    as_pg=(runuser -u postgres --)
    if ! runuser -u postgres -- test -x "$LOCAL_DIR"; then
      # e.g. a clone under /root: the postgres user cannot get in, so keep it in /var/tmp.
      dir=/var/tmp/floq-postgres-$(printf '%s' "$PROJECT" | cksum | cut -d' ' -f1)
      log "the postgres user cannot enter $LOCAL_DIR; using $dir instead"
    fi
  fi
  data=$dir/data
  sock=$dir/run
  listen=$(listen_addr "$PG_HOST")
  mkdir -p "$dir" "$sock"
  chmod 700 "$dir"
  ((EUID != 0)) || chown -R postgres: "$dir"

  if [[ ! -s $data/PG_VERSION ]]; then
    log "creating a private PostgreSQL cluster in $data (trust auth)"
    run_logged "$dir/initdb.log" \
      "${as_pg[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust --no-sync -E UTF8 ||
      die "initdb failed"
  fi
  log "starting private PostgreSQL on $listen:$PG_PORT (data: $data)"
  run_logged "$dir/pg_ctl.log" \
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t "$TIMEOUT" \
    -o "-p $PG_PORT -k '$sock' -c listen_addresses='$listen'" start || {
    tail -n 20 "$dir/postgres.log" >&2 2>/dev/null || true
    die "could not start the private PostgreSQL (log: $dir/postgres.log)"
  }
  record_started postgres-private "$bindir" "$data"
}

psql_ok() {
  PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -c 'select 1' -d "$1" >/dev/null 2>&1 </dev/null
}

pg_host_in_url() {
  if [[ $PG_HOST == *:* ]]; then echo "[$PG_HOST]"; else echo "$PG_HOST"; fi
}

# Run SQL (stdin) as a PostgreSQL superuser on this machine: over TCP as
# 'postgres' where that needs no password (trust, e.g. a private instance),
# else through the server's Unix socket as the postgres system user (Debian's
# default "peer" authentication). Nothing in pg_hba.conf is changed.
pg_superuser_sql() (
  local url
  url="postgres://postgres@$(pg_host_in_url):$PG_PORT/postgres"
  if psql_ok "$url"; then
    psql -X -w -q -v ON_ERROR_STOP=1 -d "$url" >/dev/null
    return
  fi
  id postgres >/dev/null 2>&1 || return 1
  local -a sockets=()
  [[ -d /var/run/postgresql ]] && sockets+=(/var/run/postgresql)
  [[ -d $LOCAL_DIR/postgres/run ]] && sockets+=("$LOCAL_DIR/postgres/run")
  local sql sock
  sql=$(cat)
  # From /, which the postgres user can enter (unlike, say, a clone under /root).
  cd /
  for sock in "${sockets[@]}"; do
    if as_root runuser -u postgres -- psql -X -w -q -h "$sock" -p "$PG_PORT" -d postgres -tAc 'select 1' </dev/null >/dev/null 2>&1; then
      as_root runuser -u postgres -- psql -X -w -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PG_PORT" -d postgres <<<"$sql" >/dev/null
      return
    fi
  done
  return 1
)

# floq's local roles, each LOGIN with a generated password kept in
# ~/.config/floq/postgres.env (see lib/env.sh), CREATEDB and CREATEROLE (migrations create floq's
# NOLOGIN roles floq_app and floq_system), never SUPERUSER:
#   floq_local  what up.sh's stack connects as;
#   floq_test   what the tests connect as; also BYPASSRLS, so that a test can
#               inspect every tenant's rows. floq itself always works as
#               floq_app or floq_system (SET LOCAL ROLE), where RLS holds.
# They sign in over TCP with the password, which Debian's stock pg_hba.conf
# allows (scram-sha-256 on loopback).
# shellcheck source=deploy/local/lib/env.sh
. "$PROJECT/deploy/local/lib/env.sh"
PG_ENV_FILE=$FLOQ_PG_ENV_FILE

# ensure_local_role ROLE VAR ATTRIBUTES: make ROLE sign in with the password in
# $PG_ENV_FILE's VAR (generated if missing) and hold ATTRIBUTES.
ensure_local_role() {
  local role=$1 var=$2 attributes=$3 password="" url want has
  mkdir -p "$(dirname "$PG_ENV_FILE")"
  if [[ -r $PG_ENV_FILE ]]; then
    password=$(sed -n "s/^$var=//p" "$PG_ENV_FILE")
  fi
  if [[ ! $password =~ ^[0-9a-f]{32,}$ ]]; then
    password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    (
      umask 077
      [[ -s $PG_ENV_FILE ]] || printf '# The local PostgreSQL roles of deploy/local/, generated by services.sh. Not in git.\nFLOQ_LOCAL_PG_USER=floq_local\nFLOQ_TEST_PG_USER=floq_test\n' >"$PG_ENV_FILE"
      grep -v "^$var=" "$PG_ENV_FILE" >"$PG_ENV_FILE.tmp" || true
      printf '%s=%s\n' "$var" "$password" >>"$PG_ENV_FILE.tmp"
    )
    mv "$PG_ENV_FILE.tmp" "$PG_ENV_FILE"
  fi
  url="postgres://$role:$password@$(pg_host_in_url):$PG_PORT/postgres"
  # Signs in and holds BYPASSRLS exactly when asked to: nothing to do.
  want=f
  [[ $attributes == *" BYPASSRLS"* ]] && want=t
  has=$(PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -d "$url" -c 'SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user' </dev/null 2>/dev/null || true)
  if [[ $has == "$want" ]]; then
    return 0
  fi
  log "setting up PostgreSQL role '$role' (password in $PG_ENV_FILE)"
  pg_superuser_sql <<SQL || die "could not reach PostgreSQL on $PG_HOST:$PG_PORT as a superuser to set up the role
  '$role' (tried TCP as 'postgres' without a password, then the Unix socket as the
  postgres system user). Create it yourself:
    CREATE ROLE $role $attributes PASSWORD '<$var from $PG_ENV_FILE>';
  or put a URL with a password into FLOQ_DATABASE_URL (FLOQ_TEST_DATABASE_URL for tests)."
DO \$\$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$role') THEN
    ALTER ROLE $role $attributes PASSWORD '$password';
  ELSE
    CREATE ROLE $role $attributes PASSWORD '$password';
  END IF;
  -- Made by an earlier install as another user: floq's migrations SET ROLE to them.
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'floq_app') THEN
    EXECUTE 'GRANT floq_app TO $role';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'floq_system') THEN
    EXECUTE 'GRANT floq_system TO $role';
  END IF;
END
\$\$;
SQL
  psql_ok "$url" || die "role '$role' exists but cannot sign in with its password over TCP at $PG_HOST:$PG_PORT
  (does pg_hba.conf allow password (scram-sha-256 or md5) connections from loopback?)"
}

# Connection check for a URL the caller chose itself; nothing is changed.
check_pg_auth() {
  local user=${URL_PG_USER:-postgres} err url
  # A URL with a password is not ours to verify; psql is needed to check at all.
  if ((URL_PG_HAS_PASS)) || ! command -v psql >/dev/null 2>&1; then
    return 0
  fi
  url="postgres://$user@$(pg_host_in_url):$PG_PORT/postgres"
  if err=$(PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -c 'select 1' -d "$url" 2>&1 >/dev/null </dev/null); then
    return 0
  fi
  die "PostgreSQL on $PG_HOST:$PG_PORT is up but rejects $url: ${err//$'\n'/ }
  Leave FLOQ_DATABASE_URL unset to use floq's own local role (created with a generated
  password), or put a password into FLOQ_DATABASE_URL."
}

# FLOQ_LOCAL_ROLE=stack (up.sh) or =test (test.sh), when they have no URL of
# their own: make sure that local role exists; otherwise check the URL given.
pg_access() {
  case ${FLOQ_LOCAL_ROLE:-} in
  stack) ensure_local_role floq_local FLOQ_LOCAL_PG_PASSWORD "LOGIN CREATEDB CREATEROLE NOSUPERUSER NOBYPASSRLS" ;;
  test) ensure_local_role floq_test FLOQ_TEST_PG_PASSWORD "LOGIN CREATEDB CREATEROLE NOSUPERUSER BYPASSRLS" ;;
  *) check_pg_auth ;;
  esac
}

ensure_postgres() {
  parse_url "${FLOQ_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" 5432
  PG_HOST=$URL_HOST
  PG_PORT=$URL_PORT
  URL_PG_USER=$URL_USER
  URL_PG_HAS_PASS=$URL_HAS_PASS

  if pg_ready; then
    pg_access
    return 0
  fi
  is_local_host "$PG_HOST" ||
    die "PostgreSQL at $PG_HOST:$PG_PORT is not reachable (and it is not local, so it cannot be started here)"
  log "PostgreSQL is not reachable on $PG_HOST:$PG_PORT; starting it"

  if ! pg_server_bindir >/dev/null; then
    apt_install postgresql
  fi
  # The package's postinst may already have started the new cluster.
  if ! pg_ready; then
    start_system_postgres || start_private_postgres
  elif find_system_cluster; then
    record_started postgres-system "$PG_SYS_VER" "$PG_SYS_CLUSTER"
  fi
  wait_until pg_ready ||
    die "PostgreSQL did not become ready on $PG_HOST:$PG_PORT within ${TIMEOUT}s (logs: /var/log/postgresql/, $LOCAL_DIR/)"
  pg_access
  log "PostgreSQL is ready on $PG_HOST:$PG_PORT"
}

# ---------------------------------------------------------------- RabbitMQ

mq_ready() { tcp_open "$MQ_HOST" "$MQ_PORT"; }

pid_alive() { [[ $1 =~ ^[0-9]+$ && -d /proc/$1 ]]; }

# The AMQP port the system node is configured for (rabbitmq.conf listeners, else 5672).
system_mq_port() {
  local conf=/etc/rabbitmq/rabbitmq.conf line
  if [[ -r $conf ]] && line=$(grep -E '^[[:space:]]*listeners\.tcp\.[^=]+=' "$conf" | head -n 1); then
    line=${line##*[:=]}
    echo "${line//[[:space:]]/}"
  else
    echo 5672
  fi
}

start_system_rabbitmq() {
  local envconf=/etc/rabbitmq/rabbitmq-env.conf vars nodename mnesia pidfile pid="" sysport
  if [[ ! -x /usr/sbin/rabbitmq-server ]]; then
    log "no system RabbitMQ installation (/usr/sbin/rabbitmq-server)"
    return 1
  fi
  sysport=$(system_mq_port)
  if [[ $sysport != "$MQ_PORT" ]]; then
    log "the system RabbitMQ node listens on port $sysport, not $MQ_PORT"
    return 1
  fi
  # The node name and PID file location come from rabbitmq-env.conf (shell syntax).
  vars=$(
    set +eu
    # shellcheck disable=SC1090
    [[ -r $envconf ]] && . "$envconf" >/dev/null 2>&1
    printf '%s\n%s\n%s\n' "${NODENAME:-}" "${MNESIA_BASE:-}" "${PID_FILE:-}"
  )
  {
    read -r nodename
    read -r mnesia
    read -r pidfile
  } <<<"$vars"
  nodename=${nodename:-rabbit@$(hostname -s)}
  pidfile=${pidfile:-${mnesia:-/var/lib/rabbitmq/mnesia}/$nodename.pid}

  # The PID file is only readable by rabbitmq/root.
  pid=$(as_root cat "$pidfile" 2>/dev/null || true)
  if pid_alive "$pid"; then
    log "system RabbitMQ node $nodename is already running (pid $pid); waiting for it"
    record_started rabbitmq-system "$nodename"
  else
    # A stale PID file would make 'rabbitmqctl wait' watch a dead process.
    as_root rm -f "$pidfile"
    log "starting system RabbitMQ node $nodename"
    run_logged "$LOCAL_DIR/logs/rabbitmq-start.log" as_root rabbitmq-server -detached || return 1
    record_started rabbitmq-system "$nodename"
  fi
  # 'await_startup' right after -detached fails (node not registered yet): wait for
  # the PID file and the node first.
  run_logged "$LOCAL_DIR/logs/rabbitmq-wait.log" \
    as_root rabbitmqctl -q wait --timeout "$TIMEOUT" "$pidfile" || {
    log "the system RabbitMQ node did not come up (see /var/log/rabbitmq/)"
    return 1
  }
  run_logged "$LOCAL_DIR/logs/rabbitmq-wait.log" \
    as_root rabbitmqctl -q await_startup --timeout "$TIMEOUT" || return 1
}

# A throw-away node with its own name, data, cookie and ports in .local/rabbitmq.
start_private_rabbitmq() {
  local dir=$LOCAL_DIR/rabbitmq node="floq$MQ_PORT@localhost" dist pidfile pid="" listen
  local bin=/usr/lib/rabbitmq/bin
  [[ -x $bin/rabbitmq-server ]] || die "RabbitMQ is not installed ($bin/rabbitmq-server missing)"
  # Erlang distribution port: default is AMQP port + 20000, which must stay < 65536.
  # Stay off the system node's 25672 and the CLI tools' range 35672-35682.
  dist=$((MQ_PORT + 20000))
  ((dist < 65536)) || dist=$((MQ_PORT - 20001))
  if ((dist == 25672 || (dist >= 35672 && dist <= 35682))); then
    dist=$((dist - 100))
  fi
  pidfile=$dir/$node.pid
  listen=$(listen_addr "$MQ_HOST")
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  chmod 700 "$dir" "$dir/home"
  printf 'loopback_users = none\n' >"$dir/rabbitmq.conf"
  printf '[].\n' >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"

  # Shared by the node and rabbitmqctl: the cookie lives in HOME, and no system
  # rabbitmq-env.conf may leak in. Crash dumps go here, not into the working directory.
  export HOME=$dir/home \
    RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf \
    ERL_CRASH_DUMP=$dir/erl_crash.dump \
    ERL_EPMD_ADDRESS=127.0.0.1
  # Node-only settings. They must not reach rabbitmqctl: a CLI that sees
  # RABBITMQ_DIST_PORT grabs that port itself and the booting node then dies
  # with dist_port_already_used.
  local -a node_env=(
    RABBITMQ_NODENAME="$node"
    RABBITMQ_NODE_IP_ADDRESS="$listen"
    RABBITMQ_NODE_PORT="$MQ_PORT"
    RABBITMQ_DIST_PORT="$dist"
    RABBITMQ_MNESIA_BASE="$dir/mnesia"
    RABBITMQ_LOG_BASE="$dir/log"
    RABBITMQ_PID_FILE="$pidfile"
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  )

  pid=$(cat "$pidfile" 2>/dev/null || true)
  if pid_alive "$pid"; then
    log "private RabbitMQ node $node is already running (pid $pid); waiting for it"
  else
    rm -f "$pidfile" "$dir/erl_crash.dump"
    log "starting private RabbitMQ node $node on $listen:$MQ_PORT (data: $dir)"
    # The /usr/sbin wrappers switch user and directory, so call the real script.
    run_logged "$dir/start.log" env "${node_env[@]}" "$bin/rabbitmq-server" -detached ||
      die "could not start the private RabbitMQ node (logs: $dir/log/)"
    record_started rabbitmq-private "$node"
    # A node that dies while booting leaves a crash dump and never writes its PID
    # file; notice that instead of letting 'rabbitmqctl wait' sit out its timeout.
    wait_until test -e "$pidfile" -o -e "$dir/erl_crash.dump" || true
    if [[ -e $dir/erl_crash.dump ]]; then
      die "the private RabbitMQ node crashed while booting: $(grep -m 1 '^Slogan' "$dir/erl_crash.dump" || true)
  (crash dump: $dir/erl_crash.dump, logs: $dir/log/)"
    fi
  fi
  run_logged "$dir/wait.log" "$bin/rabbitmqctl" -n "$node" -q wait --timeout "$TIMEOUT" "$pidfile" &&
    run_logged "$dir/wait.log" "$bin/rabbitmqctl" -n "$node" -q await_startup --timeout "$TIMEOUT" ||
    die "the private RabbitMQ node did not start (logs: $dir/log/)"
}

ensure_rabbitmq() {
  parse_url "${FLOQ_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" 5672
  MQ_HOST=$URL_HOST
  MQ_PORT=$URL_PORT

  if mq_ready; then
    return 0
  fi
  is_local_host "$MQ_HOST" ||
    die "RabbitMQ at $MQ_HOST:$MQ_PORT is not reachable (and it is not local, so it cannot be started here)"
  log "RabbitMQ is not reachable on $MQ_HOST:$MQ_PORT; starting it"

  if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    apt_install rabbitmq-server
  fi
  if ! mq_ready; then
    # Run in a subshell: the private node exports its own HOME and RABBITMQ_* variables.
    start_system_rabbitmq || (start_private_rabbitmq)
  else
    # Started by the package we just installed.
    record_started rabbitmq-system "rabbit@$(hostname -s)"
  fi
  wait_until mq_ready ||
    die "RabbitMQ did not accept connections on $MQ_HOST:$MQ_PORT within ${TIMEOUT}s (logs: /var/log/rabbitmq/, $LOCAL_DIR/)"
  log "RabbitMQ is ready on $MQ_HOST:$MQ_PORT"
}

ensure_postgres
ensure_rabbitmq
