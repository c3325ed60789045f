#!/usr/bin/env bash
# Stop what deploy/local/up.sh started: the floq processes (from another
# terminal, too) and the PostgreSQL and RabbitMQ that services.sh started
# itself (.local/started-services). Services that were already running before
# are left alone.
#
#   deploy/local/down.sh            stop
#   deploy/local/down.sh --reset    stop, then remove the local database, its
#                                   role, floq's queues, and .local/
#
# Environment: FLOQ_DOWN_KEEP_SERVICES=1 stops floq but no service.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL=$ROOT/.local
PATH=$PATH:/usr/sbin:/sbin

reset=0
case ${1:-} in
'') ;;
--reset) reset=1 ;;
-h | --help)
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
  ;;
*)
  printf 'down.sh: unknown argument %s (try --help)\n' "$1" >&2
  exit 2
  ;;
esac

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'down.sh: %s\n' "$*" >&2; }
as_root() {
  if ((EUID == 0)); then "$@"; else sudo -- "$@"; fi
}
is_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# --- floq ---------------------------------------------------------------------
# Only pids up.sh recorded, and only while they still are floq binaries.
if [[ -s $LOCAL/floq.pids ]]; then
  pids=()
  while read -r name pid; do
    if is_running "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name"* ]]; then
      pids+=("$pid")
    fi
  done <"$LOCAL/floq.pids"
  if ((${#pids[@]})); then
    log "stopping floq (pids ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    for pid in "${pids[@]}"; do
      while is_running "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
      is_running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  rm -f "$LOCAL/floq.pids"
fi

# --- reset: database, role, queues (while the services still run) ---------------
if ((reset)); then
  # shellcheck source=deploy/local/lib/env.sh
  . "$ROOT/deploy/local/lib/env.sh"
  floq_load_local_env
  if [[ -n ${FLOQ_DATABASE_URL:-} ]] && command -v psql >/dev/null 2>&1; then
    db=${FLOQ_DATABASE_URL##*/}
    db=${db%%\?*}
    admin=${FLOQ_DATABASE_URL%/*}/postgres
    if [[ $db =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      log "dropping database '$db'"
      psql -X -w -q -d "$admin" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" ||
        warn "could not drop database '$db'"
    fi
    # The role goes too when it owns nothing else (e.g. test databases).
    if [[ -n ${FLOQ_LOCAL_PG_USER:-} ]] && id postgres >/dev/null 2>&1; then
      if as_root runuser -u postgres -- psql -X -w -q -d postgres \
        -c "DROP ROLE IF EXISTS \"$FLOQ_LOCAL_PG_USER\"" </dev/null >/dev/null 2>&1 ||
        psql -X -w -q -d "postgres://postgres@127.0.0.1:5432/postgres" \
          -c "DROP ROLE IF EXISTS \"$FLOQ_LOCAL_PG_USER\"" </dev/null >/dev/null 2>&1; then
        log "dropped role '$FLOQ_LOCAL_PG_USER'"
      else
        warn "kept role '$FLOQ_LOCAL_PG_USER' (it still owns other databases, or no superuser access)"
      fi
    fi
  fi
  prefix=${FLOQ_QUEUE_PREFIX:-floq}
  if command -v rabbitmqctl >/dev/null 2>&1; then
    log "deleting RabbitMQ queues '$prefix.*'"
    as_root timeout 60 rabbitmqctl -q list_queues name 2>/dev/null | grep -E "^$prefix\." |
      while read -r q; do as_root timeout 30 rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done || true
  else
    warn "rabbitmqctl not found: queues '$prefix.*' were not deleted"
  fi
fi

# --- services started by services.sh ----------------------------------------------
if [[ ${FLOQ_DOWN_KEEP_SERVICES:-0} != 1 && -s $LOCAL/started-services ]]; then
  # Newest first; each line once.
  tac "$LOCAL/started-services" | awk '!seen[$0]++' | while read -r kind a b; do
    case $kind in
    postgres-system)
      log "stopping PostgreSQL cluster $a/$b (started by services.sh)"
      as_root pg_ctlcluster --skip-systemctl-redirect "$a" "$b" stop </dev/null || warn "could not stop PostgreSQL $a/$b"
      ;;
    postgres-private)
      log "stopping the private PostgreSQL in $b"
      if ((EUID == 0)); then
        runuser -u postgres -- "$a/pg_ctl" -D "$b" -m fast stop </dev/null >/dev/null || true
      else
        "$a/pg_ctl" -D "$b" -m fast stop </dev/null >/dev/null || true
      fi
      ;;
    rabbitmq-system)
      log "stopping RabbitMQ node $a (started by services.sh)"
      as_root rabbitmqctl -q -n "$a" stop </dev/null >/dev/null 2>&1 || warn "could not stop RabbitMQ node $a"
      ;;
    rabbitmq-private)
      log "stopping the private RabbitMQ node $a"
      (
        export HOME=$LOCAL/rabbitmq/home RABBITMQ_CONF_ENV_FILE=$LOCAL/rabbitmq/rabbitmq-env.conf
        /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$a" stop </dev/null >/dev/null 2>&1
      ) || warn "could not stop RabbitMQ node $a"
      ;;
    esac
  done
  rm -f "$LOCAL/started-services"
fi

if ((reset)); then
  log "removing $LOCAL"
  rm -rf "$LOCAL"
fi
log "done"
