# Sourced by the deploy/local scripts: load the local stack's settings from
# .local/ (floq.env from up.sh, postgres.env from services.sh) and derive the
# database URL from floq's local PostgreSQL role unless floq.env names one.
# Expects $ROOT (the repository).

floq_load_local_env() {
  local env_file=$ROOT/.local/floq.env pg_file=$ROOT/.local/postgres.env
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
