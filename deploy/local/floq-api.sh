#!/usr/bin/env bash
# Runs the release floq-api against the local stack up.sh set up, with its
# settings (.local/floq.env) loaded, passing every argument on. For example:
#
#   deploy/local/floq-api.sh admin issue-key --email admin@floq.local
#   read -rs PW && printf '%s\n' "$PW" | deploy/local/floq-api.sh admin set-password --email admin@floq.local
#   deploy/local/floq-api.sh config check
#
# Environment:
#   CARGO_TARGET_DIR     where up.sh built, default /var/tmp/floq-target
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENV_FILE=$ROOT/.local/floq.env
BIN=${CARGO_TARGET_DIR:-/var/tmp/floq-target}/release/floq-api

die() { printf 'floq-api.sh: ERROR: %s\n' "$*" >&2; exit 1; }

[[ -x $BIN ]] || die "$BIN is not built yet; run deploy/local/up.sh first (or set CARGO_TARGET_DIR to where it built)"
[[ -r $ENV_FILE ]] || die "$ENV_FILE is missing; run deploy/local/up.sh first"

# shellcheck source=deploy/local/lib/env.sh
. "$ROOT/deploy/local/lib/env.sh"
floq_load_local_env
exec "$BIN" "$@"
