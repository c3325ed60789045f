# Sourced by the deploy/local scripts: load the local stack's settings
# (.local/floq.env from up.sh, the local PostgreSQL roles' passwords from
# services.sh) and derive the database URL from floq's local role unless
# floq.env names one. Expects $ROOT (the repository).

# The roles are the PostgreSQL cluster's, not one clone's: their passwords live
# once per user, so that every clone (and CI's fresh ones) uses the same.
FLOQ_PG_ENV_FILE=${FLOQ_PG_ENV_FILE:-${XDG_CONFIG_HOME:-${HOME:-/root}/.config}/floq/postgres.env}

floq_load_local_env() {
  local env_file=$ROOT/.local/floq.env pg_file=$FLOQ_PG_ENV_FILE
  set -a
  # shellcheck source=/dev/null
  [[ -r $env_file ]] && . "$env_file"
  # shellcheck source=/dev/null
  [[ -r $pg_file ]] && . "$pg_file"
  set +a
  if [[ -z ${FLOQ_DATABASE_URL:-} && -n ${FLOQ_LOCAL_PG_PASSWORD:-} ]]; then
    export FLOQ_DATABASE_URL="postgres://${FLOQ_LOCAL_PG_USER:-floq_local}:$FLOQ_LOCAL_PG_PASSWORD@127.0.0.1:5432/floq"
  fi
}
