#!/usr/bin/env bash
# The project's test command: make sure PostgreSQL and RabbitMQ are up, then
# rustfmt check, clippy (warnings are errors) and the whole workspace's tests.
#
#   deploy/local/test.sh [--slow] [extra cargo test args...]   e.g.  -- --nocapture
#
# --slow also runs the tests marked #[ignore] (the heavy ones: benchmarks,
# long fault streams, the schemathesis fuzzing driven by the API's OpenAPI
# document, for which it installs schemathesis from PyPI into a venv,
# FLOQ_SCHEMATHESIS_VENV, default /var/tmp/floq-schemathesis) and fuzzes each
# cargo-fuzz target 5 minutes instead of 15 s; CI runs without it. It also runs
# the real-browser tests of single sign-on and of the console
# (tests/browser/sso_login.py, tests/browser/console.py), for which
# it installs Playwright from PyPI into a venv (FLOQ_PLAYWRIGHT_VENV, default
# /var/tmp/floq-playwright) and Debian's chromium if missing; Playwright drives
# that binary (FLOQ_CHROMIUM), it downloads no browser of its own. It also builds
# the container image and runs a flow through it (deploy/docker/build-test.sh:
# podman and debootstrap from Debian, a release build; needs root). The fault
# tests (tests/tests/faults/) start private PostgreSQL and RabbitMQ servers of
# their own; their short versions run in CI, their full streams with --slow.
#
# Environment (each only defaulted when unset):
#   CARGO_TARGET_DIR        /var/tmp/floq-target (persistent, outside the clone,
#                           so repeated CI runs on fresh clones stay incremental)
#   FLOQ_TEST_DATABASE_URL  the local test role floq_test (services.sh creates it,
#                           with a password in ~/.config/floq/postgres.env) on 127.0.0.1:5432
#   FLOQ_TEST_AMQP_URL      amqp://guest:guest@127.0.0.1:5672/%2f
#
# Every database and queue the tests make is named after this run
# (FLOQ_TEST_RUN_ID=<unix time>_<4 hex>); they remove their own, and this script
# removes what is left of this run at the end. Another run's leftovers go only
# when they are older than 6 hours and nobody uses them.
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
export FLOQ_TEST_AMQP_URL=${FLOQ_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
FLOQ_TEST_RUN_ID=$(date +%s)_$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
export FLOQ_TEST_RUN_ID
STALE_AFTER=$((6 * 3600))

slow=0
if [[ ${1:-} == --slow ]]; then
  slow=1
  shift
fi

step "services (PostgreSQL, RabbitMQ)"
# Check the servers the tests will actually use.
if [[ -n ${FLOQ_TEST_DATABASE_URL:-} ]]; then
  FLOQ_DATABASE_URL=$FLOQ_TEST_DATABASE_URL FLOQ_AMQP_URL=$FLOQ_TEST_AMQP_URL \
    "$ROOT/deploy/local/services.sh"
else
  FLOQ_DATABASE_URL='' FLOQ_LOCAL_ROLE=test FLOQ_AMQP_URL=$FLOQ_TEST_AMQP_URL \
    "$ROOT/deploy/local/services.sh"
  # shellcheck source=deploy/local/lib/env.sh
  . "$ROOT/deploy/local/lib/env.sh"
  pg_password=$(sed -n 's/^FLOQ_TEST_PG_PASSWORD=//p' "$FLOQ_PG_ENV_FILE")
  [[ -n $pg_password ]] || die "no password for floq_test in $FLOQ_PG_ENV_FILE"
  export FLOQ_TEST_DATABASE_URL="postgres://floq_test:$pg_password@127.0.0.1:5432/postgres"
fi

# remove_leftovers MIN_AGE_SECONDS [RUN_ID]: drop test databases and queues of
# run RUN_ID (any age), or of any run older than MIN_AGE_SECONDS, that nobody
# uses: a database with a connection and a queue with a consumer stay.
remove_leftovers() {
  local min_age=$1 run=${2:-} now
  now=$(date +%s)
  psql -X -w "$FLOQ_TEST_DATABASE_URL" -tA -F ' ' -c "SELECT d.datname, d.datistemplate,
       coalesce(substring(shobj_description(d.oid, 'pg_database') from 'created ([0-9]+)'), '0')
     FROM pg_database d
    WHERE (d.datname ~ '^floq_t_[0-9]+_[0-9a-f]{4}_[0-9a-f]{32}$' OR d.datname LIKE 'floq\_tmpl\_%')
      AND pg_has_role(d.datdba, 'USAGE')
      AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)" 2>/dev/null |
    while read -r db is_template born; do
      [[ -n $db ]] || continue
      if [[ $db =~ ^floq_t_([0-9]+)_([0-9a-f]{4})_ ]]; then
        born=${BASH_REMATCH[1]}
        [[ ${BASH_REMATCH[1]}_${BASH_REMATCH[2]} == "$run" ]] || ((now - born > min_age)) || continue
      else
        # Templates are shared by all runs and rebuilt when missing: only old ones go.
        ((now - born > min_age && min_age > 0)) || continue
        [[ $is_template != t ]] || psql -X -w "$FLOQ_TEST_DATABASE_URL" -qc "ALTER DATABASE \"$db\" IS_TEMPLATE false" </dev/null >/dev/null 2>&1 || continue
      fi
      # Without FORCE: a run that connected since the query keeps its database.
      psql -X -w "$FLOQ_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" </dev/null >/dev/null 2>&1 || true
    done || true
  if command -v rabbitmqctl >/dev/null 2>&1 && { ((EUID == 0)) || [[ -r /var/lib/rabbitmq/.erlang.cookie ]]; }; then
    timeout 60 rabbitmqctl -q list_queues name consumers 2>/dev/null |
      awk -v now="$now" -v age="$min_age" -v run="$run" '
        $2 == 0 && match($1, /^t[0-9]+_[0-9a-f]{4}_[0-9a-f]{32}\./) {
          split(substr($1, 2), p, "_")
          if (p[1] "_" p[2] == run || now - p[1] > age) print $1
        }' |
      while read -r q; do timeout 30 rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done || true
  fi
}

# remove_private_servers [RUN_ID]: the fault tests' private PostgreSQL and RabbitMQ
# (tests/src/private.rs, under $TMPDIR/floq-fault-<run>-*) go when their test ends,
# even on a panic; a test process killed outright leaves them running. Stop and
# remove those of run RUN_ID, or of any run older than STALE_AFTER.
remove_private_servers() {
  local run=${1:-} now dir born pid pg_ctl
  now=$(date +%s)
  pg_ctl=$(ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)
  for dir in "${TMPDIR:-/tmp}"/floq-fault-*; do
    [[ -d $dir && ${dir##*/} =~ ^floq-fault-([0-9]+)_([0-9a-f]{4})- ]] || continue
    born=${BASH_REMATCH[1]}
    [[ ${BASH_REMATCH[1]}_${BASH_REMATCH[2]} == "$run" ]] || ((now - born > STALE_AFTER)) || continue
    if [[ -f $dir/data/postmaster.pid && -n $pg_ctl ]]; then
      if ((EUID == 0)); then
        runuser -u postgres -- "$pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
      else
        "$pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
      fi
    fi
    if [[ -f $dir/rabbit.pid ]] && pid=$(<"$dir/rabbit.pid") && [[ $pid =~ ^[0-9]+$ ]]; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
  done
}

step "leftovers of earlier test runs (older than $((STALE_AFTER / 3600)) h, unused)"
remove_leftovers "$STALE_AFTER"
remove_private_servers
# Whatever happens below, this run's own databases, queues and private servers go at the end.
trap 'remove_leftovers "$STALE_AFTER" "$FLOQ_TEST_RUN_ID"; remove_private_servers "$FLOQ_TEST_RUN_ID"' EXIT

if [[ ! -d $CARGO_TARGET_DIR/debug/deps ]]; then
  step "note: a first build of the tests takes 20-40 minutes on two cores (target dir: $CARGO_TARGET_DIR)"
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || die "cargo fmt --check failed (unformatted code? run 'cargo fmt --all')"

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings || die "clippy failed"

# The deployment artifacts (Dockerfile, compose, Kubernetes, alert rules, dashboard),
# offline: its tools go into a venv (FLOQ_DEPLOY_VENV) on the first run.
step "deploy/ci/validate.sh (deployment artifacts)"
"$ROOT/deploy/ci/validate.sh" || die "the deployment artifacts failed validation (see above)"

if ((slow)); then
  st_venv=${FLOQ_SCHEMATHESIS_VENV:-/var/tmp/floq-schemathesis}
  if [[ -z ${FLOQ_SCHEMATHESIS:-} && ! -x $st_venv/bin/schemathesis ]]; then
    step "schemathesis (PyPI) into $st_venv, for the fuzzing test"
    # Debian's python3 makes venvs only with python3-venv.
    python3 -m venv "$st_venv" 2>/dev/null || {
      ((EUID == 0)) && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv </dev/null >&2 &&
        python3 -m venv "$st_venv"
    } || die "cannot make a Python venv in $st_venv (install python3-venv)"
    "$st_venv/bin/pip" install -q 'schemathesis==4.32.5' || die "could not install schemathesis into $st_venv"
  fi
  export FLOQ_SCHEMATHESIS=${FLOQ_SCHEMATHESIS:-$st_venv/bin/schemathesis}
  pw_venv=${FLOQ_PLAYWRIGHT_VENV:-/var/tmp/floq-playwright}
  if [[ -z ${FLOQ_PLAYWRIGHT_PYTHON:-} && ! -x $pw_venv/bin/playwright ]]; then
    step "playwright (PyPI) into $pw_venv, for the browser tests (single sign-on, console)"
    python3 -m venv "$pw_venv" || die "cannot make a Python venv in $pw_venv (install python3-venv)"
    "$pw_venv/bin/pip" install -q 'playwright==1.65.2' || die "could not install playwright into $pw_venv"
  fi
  export FLOQ_PLAYWRIGHT_PYTHON=${FLOQ_PLAYWRIGHT_PYTHON:-$pw_venv/bin/python}
  export FLOQ_CHROMIUM=${FLOQ_CHROMIUM:-/usr/bin/chromium}
  if [[ ! -x $FLOQ_CHROMIUM ]]; then
    ((EUID == 0)) || die "$FLOQ_CHROMIUM is missing: install Debian's chromium (apt-get install chromium) or set FLOQ_CHROMIUM"
    step "chromium (Debian) for the browser tests (single sign-on, console)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium </dev/null >&2 || die "could not install chromium"
  fi
  step "cargo test --workspace --locked $* -- --include-ignored (slow)"
  cargo test --workspace --locked "$@" -- --include-ignored || die "tests failed"
else
  step "cargo test --workspace --locked $*"
  cargo test --workspace --locked "$@" || die "tests failed"
fi

# The fuzz targets of the flow-definition and template parsers (fuzz/, cargo-fuzz):
# a short run in CI, a longer one with --slow. FLOQ_FUZZ_SECONDS overrides the
# time per target; FLOQ_FUZZ_SECONDS=0 skips it. The first build of fuzz/ (its own
# target dir, FLOQ_FUZZ_TARGET_DIR) takes several minutes; later ones are incremental.
fuzz_seconds=${FLOQ_FUZZ_SECONDS:-$((slow ? 300 : 15))}
if ((fuzz_seconds > 0)); then
  step "fuzz/run.sh $fuzz_seconds (cargo-fuzz: flow definitions, templates)"
  "$ROOT/fuzz/run.sh" "$fuzz_seconds" || die "fuzzing found a crash (see above; the input is in fuzz/artifacts/)"
fi

# The container image end to end (--slow only: a release build, podman, a flow run
# through the image's three services against the local PostgreSQL and RabbitMQ).
if ((slow)); then
  step "deploy/docker/build-test.sh (the container image, end to end)"
  "$ROOT/deploy/docker/build-test.sh" || die "the container image test failed (see above)"
fi

step "all checks passed"
