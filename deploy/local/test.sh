#!/usr/bin/env bash
# The project's test command: make sure PostgreSQL and RabbitMQ are up, then
# rustfmt check, clippy (warnings are errors) and the whole workspace's tests.
#
#   deploy/local/test.sh [--slow] [extra cargo test args...]   e.g.  -- --nocapture
#
# --slow also runs the tests marked #[ignore] (the heavy ones: benchmarks,
# long fault streams); CI runs without it.
#
# Environment (each only defaulted when unset):
#   CARGO_TARGET_DIR        /var/tmp/floq-target (persistent, outside the clone,
#                           so repeated CI runs on fresh clones stay incremental)
#   FLOQ_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:5432/postgres
#   FLOQ_TEST_AMQP_URL      amqp://guest:guest@127.0.0.1:5672/%2f
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'test.sh: ERROR: %s\n' "$*" >&2
  exit 1
}

# Install what is missing (build tools, Rust with clippy and rustfmt, psql) first.
# shellcheck source=deploy/local/bootstrap.sh
. "$ROOT/deploy/local/bootstrap.sh" --dev || die "could not install the tools the tests need (see above)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/floq-target}
export FLOQ_TEST_DATABASE_URL=${FLOQ_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export FLOQ_TEST_AMQP_URL=${FLOQ_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

slow=0
if [[ ${1:-} == --slow ]]; then
  slow=1
  shift
fi

step "services (PostgreSQL, RabbitMQ)"
# Check the servers the tests will actually use.
FLOQ_DATABASE_URL=$FLOQ_TEST_DATABASE_URL FLOQ_AMQP_URL=$FLOQ_TEST_AMQP_URL \
  "$ROOT/deploy/local/services.sh"

step "leftovers of interrupted test runs"
# Each test makes its own database (floq_t_*, cloned from floq_tmpl_*, which
# is rebuilt when missing) and queues (t<32 hex>.*) and removes them at the
# end; a killed run leaves them behind, and idle quorum queues still cost the
# broker CPU. Only leftovers nobody uses go: a database with a connection (a
# concurrent run's) is never dropped, nor a queue with a consumer.
psql "$FLOQ_TEST_DATABASE_URL" -tAc "SELECT d.datname FROM pg_database d
   WHERE (d.datname LIKE 'floq\_t\_%' OR d.datname LIKE 'floq\_tmpl\_%')
     AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)" 2>/dev/null |
  while read -r db; do
    # Without FORCE: a run that connected since the query keeps its database.
    [[ -n $db ]] && psql "$FLOQ_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" </dev/null >/dev/null 2>&1 || true
  done || true
if command -v rabbitmqctl >/dev/null 2>&1; then
  timeout 60 rabbitmqctl -q list_queues name consumers 2>/dev/null | awk '$1 ~ /^t[0-9a-f]{32}\./ && $2 == 0 {print $1}' |
    while read -r q; do timeout 30 rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done || true
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || die "cargo fmt --check failed (unformatted code? run 'cargo fmt --all')"

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings || die "clippy failed"

if ((slow)); then
  step "cargo test --workspace --locked $* -- --include-ignored (slow)"
  cargo test --workspace --locked "$@" -- --include-ignored || die "tests failed"
else
  step "cargo test --workspace --locked $*"
  cargo test --workspace --locked "$@" || die "tests failed"
fi

step "all checks passed"
