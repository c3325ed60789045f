#!/usr/bin/env bash
# The project's test command: make sure PostgreSQL and RabbitMQ are up, then
# rustfmt check, clippy (warnings are errors) and the whole workspace's tests.
#
#   deploy/local/test.sh [extra cargo test args...]   e.g.  -- --nocapture
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

# rustup installs cargo into ~/.cargo/bin, which a non-login shell may lack.
cargo_bin=${CARGO_HOME:-${HOME:-}/.cargo}/bin
if [[ -d $cargo_bin && ":$PATH:" != *":$cargo_bin:"* ]]; then
  PATH=$cargo_bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/floq-target}
export FLOQ_TEST_DATABASE_URL=${FLOQ_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export FLOQ_TEST_AMQP_URL=${FLOQ_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

step "services (PostgreSQL, RabbitMQ)"
# Check the servers the tests will actually use.
FLOQ_DATABASE_URL=$FLOQ_TEST_DATABASE_URL FLOQ_AMQP_URL=$FLOQ_TEST_AMQP_URL \
  "$ROOT/deploy/local/services.sh"

step "leftovers of interrupted test runs"
# Each test makes its own database (floq_t_*, cloned from floq_tmpl_*, which
# is rebuilt when missing) and queues (t<32 hex>.*) and
# removes them at the end; a killed run leaves them behind, and idle quorum
# queues still cost the broker CPU. Nothing else uses these names.
psql "$FLOQ_TEST_DATABASE_URL" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'floq\_t\_%' OR datname LIKE 'floq\_tmpl\_%'" 2>/dev/null |
  while read -r db; do
    [[ -n $db ]] && psql "$FLOQ_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" </dev/null >/dev/null 2>&1 || true
  done || true
if command -v rabbitmqctl >/dev/null 2>&1; then
  timeout 60 rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^t[0-9a-f]{32}\.' |
    while read -r q; do timeout 30 rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done || true
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || die "cargo fmt --check failed (unformatted code? run 'cargo fmt --all')"

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings || die "clippy failed"

step "cargo test --workspace --locked $*"
cargo test --workspace --locked "$@" || die "tests failed"

step "all checks passed"
