#!/usr/bin/env bash
# Build floq's container image and prove it works: the three services run from
# it (read-only root filesystem, uid 10001, no capabilities) against this
# machine's PostgreSQL and RabbitMQ, and a flow runs to `succeeded` over HTTP.
#
#   deploy/docker/build-test.sh [--multi-stage] [--base-only] [--rebuild-base] [--keep]
#
#   (default)       build the release binaries on this machine (cargo build --release
#                   --locked, incremental in CARGO_TARGET_DIR) and the image's
#                   `prebuilt-runtime` target from them. Needs no container registry:
#                   the base image comes from debootstrap (below).
#   --multi-stage   build the Dockerfile's real multi-stage path instead, its build
#                   stage also started from the local base with RUST_FROM=debian
#                   (Debian 12's rustc-web from bookworm-security): compiles the
#                   workspace inside the build container, 30-60 minutes on two cores.
#   --base-only     only make the base image (debootstrap + podman import) and stop.
#   --rebuild-base  debootstrap a new base instead of reusing the cached one.
#   --keep          keep the floq image (localhost/floq:build-test) at the end.
#
# FLOQ_IMAGE_TEST_BIN_DIR=DIR uses the floq-api, floq-worker and floq-scheduler in
# DIR (built on Debian 12, e.g. by an earlier CI step) instead of building them.
#
# The base image: `debootstrap --variant=minbase bookworm` into a temporary
# directory, cached as a tarball in $FLOQ_IMAGE_TEST_CACHE (default
# /var/tmp/floq-image), then `tar -C dir -c . | podman import - floq-base:bookworm`.
# No container registry is reached at any point; Debian's mirror and crates.io are.
#
# The run: a database floq_imgtest_<id> (as the local stack's role, see
# deploy/local/services.sh and lib/env.sh) and a RabbitMQ vhost floq-imgtest-<id>
# of their own, secrets generated for this run only (the encryption key pair by
# the image's own `floq-api admin gen-keys`), `floq-api migrate` and
# `floq-api admin bootstrap` as one-shot containers, then api, worker and
# scheduler with --network host on ports 18080-18083
# (FLOQ_IMAGE_TEST_PORT_BASE). Everything it made is removed at the end, passed
# or failed (the cached base image stays).
#
# Needs root (podman, debootstrap); installs podman and debootstrap with apt when
# missing, and the build tools through deploy/local/bootstrap.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

SUITE=bookworm
MIRROR=${FLOQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${FLOQ_IMAGE_TEST_CACHE:-/var/tmp/floq-image}
BASE_TAR=$CACHE_DIR/$SUITE-minbase.tar
BASE_IMAGE=localhost/floq-base:$SUITE
IMAGE=${FLOQ_IMAGE_TEST_TAG:-localhost/floq:build-test}
PORT_BASE=${FLOQ_IMAGE_TEST_PORT_BASE:-18080}
READY_TIMEOUT=90
RUN_TIMEOUT=60
NICE=(nice -n 10)

step() { printf '\n==> %s\n' "$*" >&2; }
log() { printf '    %s\n' "$*" >&2; }
die() {
  printf 'build-test.sh: ERROR: %s\n' "$*" >&2
  exit 1
}

multi_stage=0 base_only=0 rebuild_base=0 keep=0
for arg in "$@"; do
  case $arg in
  --multi-stage) multi_stage=1 ;;
  --base-only) base_only=1 ;;
  --rebuild-base) rebuild_base=1 ;;
  --keep) keep=1 ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

((EUID == 0)) || die "must run as root (podman builds and runs, debootstrap)"
if ! [[ $PORT_BASE =~ ^[0-9]+$ ]] || ((PORT_BASE < 1 || PORT_BASE > 65532)); then
  die "FLOQ_IMAGE_TEST_PORT_BASE must be a port number (it and the next three are used)"
fi

# --- tools ---------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
  step "installing ${missing[*]} (Debian packages)"
  apt-get update -q </dev/null >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null >&2 ||
    die "could not install ${missing[*]}"
fi

# --- cleanup (set up before anything is made) ------------------------------------
RUN_ID=$(date +%s)_$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/floq-build-test.XXXXXX")
chmod 700 "$WORK"
CONTAINERS=()
DB_ADMIN_URL="" DB_NAME="" VHOST="" IMAGE_BUILT=0

cleanup() {
  local rc=$? c
  set +e
  if ((rc != 0)); then
    for c in "${CONTAINERS[@]}"; do
      podman container exists "$c" 2>/dev/null || continue
      printf -- '--- last lines of %s ---\n' "$c" >&2
      podman logs --tail 30 "$c" >&2 2>&1
    done
  fi
  if ((${#CONTAINERS[@]})); then
    step "cleaning up: containers, database, vhost, work dir"
    # SIGTERM first (the services drain), then removal.
    podman stop -t 20 "${CONTAINERS[@]}" >/dev/null 2>&1
    podman rm -f "${CONTAINERS[@]}" >/dev/null 2>&1
  fi
  if [[ -n $DB_NAME && -n $DB_ADMIN_URL ]]; then
    psql -X -w -q -d "$DB_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" </dev/null >/dev/null 2>&1 ||
      log "could not drop database $DB_NAME; drop it by hand"
  fi
  if [[ -n $VHOST ]]; then
    timeout 60 rabbitmqctl -q delete_vhost "$VHOST" </dev/null >/dev/null 2>&1 ||
      log "could not delete RabbitMQ vhost $VHOST; delete it by hand"
  fi
  if ((IMAGE_BUILT && !keep)); then
    podman rmi -f "$IMAGE" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- base image: debootstrap -> podman import ------------------------------------
make_base_tarball() {
  local root=$WORK/root
  mkdir -p "$CACHE_DIR"
  log "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes; log: $CACHE_DIR/debootstrap.log)"
  if ! "${NICE[@]}" debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 </dev/null; then
    tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
    return 1
  fi
  # Only the download cache goes; apt's sources (the mirror above) stay for the image's apt-get.
  rm -f "$root"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" . || return 1
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$root"
}

step "base image $BASE_IMAGE"
if ((rebuild_base)) || ! podman image exists "$BASE_IMAGE"; then
  if ((rebuild_base)) || [[ ! -s $BASE_TAR ]]; then
    make_base_tarball || die "debootstrap failed"
  else
    log "debootstrap root cached in $BASE_TAR"
  fi
  podman import -q --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" <"$BASE_TAR" >/dev/null ||
    die "podman import of $BASE_TAR failed"
  log "imported $BASE_IMAGE"
else
  log "exists (--rebuild-base makes a new one)"
fi

# How containers can run here. Some sandboxes (no CAP_SYS_RESOURCE, cgroup v1 with
# a v2 hierarchy that has controllers) refuse podman's defaults: rlimits above this
# shell's are refused, and crun will not start in such a hybrid cgroup layout. Then
# ask for no more than this shell's limits and, if needed, use runc instead.
PODMAN=(podman) BUILD_OPTS=() LIMITS=()
probe_runtime() {
  # shellcheck disable=SC2016 # expanded in the container
  "${PODMAN[@]}" run --rm --network none --health-cmd none "${LIMITS[@]}" "$BASE_IMAGE" \
    bash -c '. /etc/os-release && [ "$VERSION_CODENAME" = bookworm ]' >"$WORK/probe.log" 2>&1
}
if ! probe_runtime; then
  nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
  [[ $nofile == unlimited ]] && nofile=1048576
  [[ $nproc == unlimited || $nproc -gt 4096 ]] && nproc=4096
  LIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  if ! probe_runtime; then
    if ! command -v runc >/dev/null 2>&1; then
      log "containers do not start with crun here ($(tail -n 1 "$WORK/probe.log")); installing runc"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runc </dev/null >&2 || die "could not install runc"
    fi
    PODMAN=(podman --runtime runc)
    BUILD_OPTS=(--runtime runc)
    probe_runtime || { cat "$WORK/probe.log" >&2; die "cannot run a container from $BASE_IMAGE (is it a Debian bookworm root?)"; }
  fi
  log "containers run with: ${PODMAN[*]} ${LIMITS[*]}"
fi
BUILD_OPTS+=("${LIMITS[@]}")
# One-shot containers: read-only like the services, no health check to schedule.
ONE_SHOT=(--health-cmd none --read-only --read-only-tmpfs=false "${LIMITS[@]}")
if ((base_only)); then
  step "base image ready: $BASE_IMAGE"
  exit 0
fi

# --- the floq image ----------------------------------------------------------------
# Host tools for the run below (curl, python3, psql) and, for the default path, Rust.
# shellcheck source=deploy/local/bootstrap.sh
. "$ROOT/deploy/local/bootstrap.sh" || die "could not install the build tools (see above)"
for tool in curl python3 psql openssl; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not installed"
done

if ((multi_stage)); then
  step "podman build (multi-stage: compiles the workspace in the build stage; 30-60 minutes on two cores)"
  "${NICE[@]}" podman build "${BUILD_OPTS[@]}" --format docker \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg BUILDER_IMAGE="$BASE_IMAGE" \
    --build-arg RUST_FROM=debian \
    -f deploy/docker/Dockerfile -t "$IMAGE" "$ROOT" >&2 || die "podman build failed"
else
  if [[ -n ${FLOQ_IMAGE_TEST_BIN_DIR:-} ]]; then
    bin_dir=$FLOQ_IMAGE_TEST_BIN_DIR
    step "binaries from $bin_dir (FLOQ_IMAGE_TEST_BIN_DIR; no build)"
  else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/floq-target}
    step "cargo build --release --locked (host; target dir $CARGO_TARGET_DIR; a first build takes 20-40 minutes)"
    "${NICE[@]}" cargo build --release --locked -p floq-api -p floq-worker -p floq-scheduler >&2 ||
      die "cargo build failed"
    bin_dir=$CARGO_TARGET_DIR/release
  fi
  # The binaries link against this machine's glibc: the image's base must be as new (Debian 12 here).
  ctx=$WORK/context
  mkdir -p "$ctx/bin" "$ctx/deploy/docker"
  for bin in floq-api floq-worker floq-scheduler; do
    [[ -x $bin_dir/$bin ]] || die "$bin_dir/$bin is missing"
    install -m 0755 "$bin_dir/$bin" "$ctx/bin/$bin"
  done
  install -m 0755 deploy/docker/healthcheck.sh "$ctx/deploy/docker/healthcheck.sh"
  step "podman build --target prebuilt-runtime"
  "${NICE[@]}" podman build "${BUILD_OPTS[@]}" --format docker --target prebuilt-runtime \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -f deploy/docker/Dockerfile -t "$IMAGE" "$ctx" >&2 || die "podman build failed"
fi
IMAGE_BUILT=1

step "image checks"
inspect=$(podman image inspect "$IMAGE") || die "cannot inspect $IMAGE"
python3 - "$inspect" <<'EOF' || die "the image's configuration is not what the Dockerfile says (above)"
import json, sys
img = json.loads(sys.argv[1])[0]
cfg = img.get("Config") or {}
problems = []
if cfg.get("User") != "10001:10001":
    problems.append(f"User is {cfg.get('User')!r}, not 10001:10001")
hc = cfg.get("Healthcheck") or img.get("Healthcheck") or img.get("HealthCheck") or {}
if "floq-healthcheck" not in " ".join(hc.get("Test") or []):
    problems.append(f"no floq-healthcheck HEALTHCHECK (got {hc!r}; build with --format docker)")
ports = set((cfg.get("ExposedPorts") or {}).keys())
for p in ("8080/tcp", "8081/tcp", "8082/tcp", "8083/tcp"):
    if p not in ports:
        problems.append(f"port {p} not exposed")
if cfg.get("Cmd") != ["floq-api"]:
    problems.append(f"Cmd is {cfg.get('Cmd')!r}, not ['floq-api']")
for p in problems:
    print("    image: " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
for bin in floq-api floq-worker floq-scheduler; do
  version=$("${PODMAN[@]}" run --rm "${ONE_SHOT[@]}" --network none "$IMAGE" "$bin" --version) ||
    die "$bin --version failed in the image"
  log "$version"
done
log "user 10001, HEALTHCHECK floq-healthcheck, ports 8080-8083, CMD floq-api"

# --- services: database and vhost of this run --------------------------------------
step "PostgreSQL and RabbitMQ"
if [[ -n ${FLOQ_IMAGE_TEST_DATABASE_URL:-} ]]; then
  base_url=$FLOQ_IMAGE_TEST_DATABASE_URL
  FLOQ_DATABASE_URL=$base_url "$ROOT/deploy/local/services.sh"
else
  FLOQ_DATABASE_URL='' FLOQ_LOCAL_ROLE=stack "$ROOT/deploy/local/services.sh"
  # Only the URL is taken from the local stack's settings (not its secrets).
  base_url=$(
    # shellcheck source=deploy/local/lib/env.sh
    . "$ROOT/deploy/local/lib/env.sh"
    floq_load_local_env
    printf '%s' "${FLOQ_DATABASE_URL:-}"
  )
fi
[[ -n $base_url ]] || die "no database URL (the local role's password is missing from ~/.config/floq/postgres.env)"
[[ $base_url != *\?* ]] || die "FLOQ_IMAGE_TEST_DATABASE_URL must have no query string"
DB_NAME=floq_imgtest_$RUN_ID
DB_ADMIN_URL=${base_url%/*}/postgres
psql -X -w -q -d "$DB_ADMIN_URL" -c "CREATE DATABASE \"$DB_NAME\"" </dev/null ||
  { DB_NAME=""; die "could not create database (the role needs CREATEDB)"; }
DATABASE_URL=${base_url%/*}/$DB_NAME
log "database $DB_NAME"

AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
QUEUE_PREFIX=floq
if command -v rabbitmqctl >/dev/null 2>&1 && timeout 60 rabbitmqctl -q add_vhost "floq-imgtest-$RUN_ID" </dev/null >/dev/null 2>&1; then
  VHOST=floq-imgtest-$RUN_ID
  timeout 60 rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' </dev/null >/dev/null ||
    die "could not grant guest the vhost $VHOST"
  AMQP_URL=amqp://guest:guest@127.0.0.1:5672/$VHOST
  log "RabbitMQ vhost $VHOST"
else
  # No local rabbitmqctl: the default vhost with a queue prefix of this run's own.
  QUEUE_PREFIX=floqimg$RUN_ID
  log "RabbitMQ default vhost, queue prefix $QUEUE_PREFIX (its queues are not removed)"
fi

# --- configuration: secrets of this run only ---------------------------------------
API_ADDR=127.0.0.1:$PORT_BASE
WORKER_ADDR=127.0.0.1:$((PORT_BASE + 1))
SCHEDULER_ADDR=127.0.0.1:$((PORT_BASE + 2))
API_METRICS_ADDR=127.0.0.1:$((PORT_BASE + 3))
for addr in "$API_ADDR" "$WORKER_ADDR" "$SCHEDULER_ADDR" "$API_METRICS_ADDR"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
    die "$addr is already in use (set FLOQ_IMAGE_TEST_PORT_BASE)"
  fi
done

ENV_FILE=$WORK/floq.env
METRICS_TOKEN=$(openssl rand -hex 32)
keys=$("${PODMAN[@]}" run --rm "${ONE_SHOT[@]}" --network none "$IMAGE" floq-api admin gen-keys) ||
  die "floq-api admin gen-keys failed in the image"
[[ $keys == *FLOQ_ENC_KEY_SECRET=* && $keys == *FLOQ_ENC_KEY_SALT=* ]] || die "unexpected gen-keys output"
(
  umask 077
  cat >"$ENV_FILE" <<EOF
FLOQ_DATABASE_URL=$DATABASE_URL
FLOQ_AMQP_URL=$AMQP_URL
FLOQ_QUEUE_PREFIX=$QUEUE_PREFIX
FLOQ_JWT_SECRET=$(openssl rand -hex 32)
$keys
FLOQ_METRICS_TOKEN=$METRICS_TOKEN
FLOQ_HTTP_ADDR=$API_ADDR
FLOQ_WORKER_HTTP_ADDR=$WORKER_ADDR
FLOQ_SCHEDULER_HTTP_ADDR=$SCHEDULER_ADDR
FLOQ_API_METRICS_ADDR=$API_METRICS_ADDR
FLOQ_PUBLIC_URL=http://$API_ADDR
FLOQ_AUTO_MIGRATE=false
FLOQ_LOG=info
EOF
)

# What Kubernetes' restricted profile asks, the podman way: read-only root (and no
# tmpfs on /tmp, /run: nothing writable is needed), no capabilities, no privilege gain.
RUN_OPTS=(--network host --read-only --read-only-tmpfs=false --cap-drop ALL
  --security-opt no-new-privileges --env-file "$ENV_FILE")

step "floq-api migrate, floq-api admin bootstrap (one-shot containers)"
"${PODMAN[@]}" run --rm "${ONE_SHOT[@]}" "${RUN_OPTS[@]}" "$IMAGE" floq-api migrate >"$WORK/migrate.log" 2>&1 ||
  { tail -n 30 "$WORK/migrate.log" >&2; die "floq-api migrate failed"; }
log "migrations applied"
out=$("${PODMAN[@]}" run --rm "${ONE_SHOT[@]}" "${RUN_OPTS[@]}" "$IMAGE" floq-api admin bootstrap --company "Image Test" --email admin@floq.image-test 2>"$WORK/bootstrap.log") ||
  { tail -n 30 "$WORK/bootstrap.log" >&2; die "floq-api admin bootstrap failed"; }
KEY=$(printf '%s\n' "$out" | python3 -c '
import json, sys
for line in reversed(sys.stdin.read().splitlines()):
    try:
        doc = json.loads(line)
    except ValueError:
        continue
    if isinstance(doc, dict) and doc.get("api_key"):
        print(doc["api_key"])
        break
else:
    sys.exit(1)
') || die "no api_key in the bootstrap output"
log "company 'Image Test' bootstrapped"

step "starting api, worker, scheduler from $IMAGE"
NAMES=(api worker scheduler)
ADDRS=("$API_ADDR" "$WORKER_ADDR" "$SCHEDULER_ADDR")
for name in "${NAMES[@]}"; do
  c=floq-bt-$RUN_ID-$name
  CONTAINERS+=("$c")
  # The image's HEALTHCHECK runs below through `podman healthcheck run` (podman's own
  # timer needs systemd, which a CI machine may not have: its complaint is harmless).
  "${PODMAN[@]}" run -d --name "$c" "${LIMITS[@]}" "${RUN_OPTS[@]}" -e "OTEL_SERVICE_NAME=floq-$name" "$IMAGE" "floq-$name" >/dev/null ||
    die "could not start floq-$name"
  log "floq-$name: container $c"
done

deadline=$((SECONDS + READY_TIMEOUT))
for i in "${!NAMES[@]}"; do
  name=${NAMES[i]} c=${CONTAINERS[i]}
  url=http://${ADDRS[i]}/readyz
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true) == 200 ]]; do
    [[ $(podman inspect --format '{{.State.Running}}' "$c" 2>/dev/null) == true ]] ||
      die "floq-$name exited during startup"
    ((SECONDS < deadline)) || die "floq-$name not ready at $url after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "floq-$name ready ($url)"
done

step "container checks: health check, user, read-only root"
for i in "${!NAMES[@]}"; do
  name=${NAMES[i]} c=${CONTAINERS[i]}
  "${PODMAN[@]}" healthcheck run "$c" >/dev/null 2>"$WORK/healthcheck.log" ||
    { cat "$WORK/healthcheck.log" >&2; die "the image's HEALTHCHECK fails in floq-$name"; }
  [[ $("${PODMAN[@]}" exec "$c" id -u) == 10001 ]] || die "floq-$name does not run as uid 10001"
  [[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$c") == true ]] ||
    die "floq-$name's root filesystem is writable"
  if "${PODMAN[@]}" exec "$c" bash -c ': >/tmp/floq-write-test' 2>/dev/null; then
    die "floq-$name can write /tmp although the root filesystem is read-only"
  fi
  log "floq-$name: healthy, uid 10001, read-only root (nothing writable, /tmp included)"
done

# --- a flow over HTTP ---------------------------------------------------------------
API_URL=http://$API_ADDR
# api METHOD PATH [JSON]: sets API_STATUS and API_BODY; the key goes to curl through a descriptor.
api() {
  local method=$1 path=$2 body=${3-} out
  local -a args=(-sS -X "$method" --max-time 10 -w '\n%{http_code}' -H 'Accept: application/json')
  [[ -z $body ]] || args+=(-H 'Content-Type: application/json' --data-binary "$body")
  out=$(curl "${args[@]}" -H @<(printf 'Authorization: Bearer %s\n' "$KEY") "$API_URL$path") ||
    die "$method $path: request failed"
  API_STATUS=${out##*$'\n'}
  API_BODY=${out%$'\n'*}
}
expect() {
  [[ $API_STATUS == "$1" ]] || die "$2: expected HTTP $1, got $API_STATUS: $API_BODY"
}
field() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else (json.dumps(v) if isinstance(v,(dict,list)) else v))' "$1"; }

step "a flow: create, deploy, run, wait for 'succeeded'"
# shellcheck disable=SC2016 # the $input templates are floq's, not the shell's
DEF='{"nodes":[{"id":"greet","type":"set","params":{"values":{"greeting":"hello","who":"{{ $input.name }}"}}},{"id":"check","type":"if","params":{"condition":"{{ $input.vip }}"}},{"id":"vip","type":"set","params":{"values":{"tier":"gold"}}},{"id":"regular","type":"set","params":{"values":{"tier":"standard"}}}],"edges":[{"from":"greet","to":"check"},{"from":"check","port":"true","to":"vip"},{"from":"check","port":"false","to":"regular"}]}'
api POST /api/v1/flows "{\"name\":\"image-test\",\"definition\":$DEF}"
expect 201 "create flow"
flow=$(field id <<<"$API_BODY")
api POST "/api/v1/flows/$flow/deploy"
expect 201 "deploy flow"
api POST "/api/v1/flows/$flow/runs" '{"input":{"name":"Ada","vip":true}}'
expect 202 "start run"
run=$(field run_id <<<"$API_BODY")
[[ -n $run ]] || die "start run: no run_id in $API_BODY"
deadline=$((SECONDS + RUN_TIMEOUT))
while :; do
  api GET "/api/v1/runs/$run"
  expect 200 "get run"
  status=$(field status <<<"$API_BODY")
  [[ $status == succeeded || $status == failed || $status == cancelled ]] && break
  ((SECONDS < deadline)) || die "run $run still '$status' after ${RUN_TIMEOUT}s"
  sleep 0.3
done
[[ $status == succeeded ]] || die "run $run ended '$status': $API_BODY"
log "run $run succeeded; output: $(field output <<<"$API_BODY")"

step "metrics (with the bearer token) on the internal listeners"
for addr in "$API_METRICS_ADDR" "$WORKER_ADDR" "$SCHEDULER_ADDR"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$addr/metrics" || true)
  [[ $code == 401 ]] || die "http://$addr/metrics without the token answered $code, not 401"
  curl -sS --fail --max-time 5 -H @<(printf 'Authorization: Bearer %s\n' "$METRICS_TOKEN") \
    "http://$addr/metrics" >"$WORK/metrics.txt" || die "http://$addr/metrics with the token failed"
  grep -q '^floq_' "$WORK/metrics.txt" || die "http://$addr/metrics has no floq_ metric"
done
grep -q '^floq_runs_completed_total{.*status="succeeded".*} [1-9]' \
  <(curl -sS --max-time 5 -H @<(printf 'Authorization: Bearer %s\n' "$METRICS_TOKEN") "http://$WORKER_ADDR/metrics") ||
  die "the worker's floq_runs_completed_total does not count the succeeded run"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$API_URL/metrics" || true)
[[ $code == 404 ]] || die "the API's public port serves /metrics (answered $code)"
log "every /metrics needs the token; the worker counted the run; the public port has none"

step "image test passed ($IMAGE)"
