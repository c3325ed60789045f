#!/usr/bin/env bash
# Offline validation of floq's deployment artifacts (deploy/docker, deploy/compose,
# deploy/k8s, deploy/prometheus, deploy/grafana). deploy/local/test.sh runs it after
# clippy; it needs no cluster, no container engine and no network once warm.
#
#   deploy/ci/validate.sh
#
# What it checks:
#   shell       bash -n on the deploy scripts (and shellcheck, when installed)
#   docker      the Dockerfile's stages, user, health check and ports; .dockerignore
#   k8s         every built-in object of deploy/k8s/base against the Kubernetes
#               schemas of 1.29 and 1.37 (kubernetes-validate --strict), the base
#               and the production overlay rendered by `kubectl kustomize` (or
#               `kustomize build`) and validated again, and check_deploy.py: custom
#               resources' required fields, references, the overlay's patch targets
#               (enough on its own where no kustomize is installed), settings names
#   compose     compose.yaml against the compose-spec JSON schema (vendored in
#               check-jsonschema), check_deploy.py's references, and its
#               prometheus.yml with `promtool check config`
#   metrics     the dashboard's and the alerts' metric names exist (telemetry.rs or
#               the metrics being added), every dashboard query parses
#               (promtool check rules), docs/operations.md's metrics table is complete
#   alerts      promtool check rules and promtool test rules
#
# Installs what is missing, once: a venv (FLOQ_DEPLOY_VENV, default
# /var/tmp/floq-deploy-venv) with kubernetes-validate, pyyaml and check-jsonschema
# from PyPI, and promtool, taken from Debian's prometheus package (apt-get
# download, unpacked into the venv: no service is installed or started) unless a
# promtool is on the PATH. Exits non-zero when any check fails, naming each.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VENV=${FLOQ_DEPLOY_VENV:-/var/tmp/floq-deploy-venv}
REQUIREMENTS=("kubernetes-validate==1.37.0" "pyyaml==6.0.3" "check-jsonschema==0.39.0")
K8S_VERSIONS=(1.29 1.37)

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'validate.sh: ERROR: %s\n' "$*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------------
stamp=$VENV/.floq-requirements
if [[ ! -x $VENV/bin/python || $(cat "$stamp" 2>/dev/null) != "${REQUIREMENTS[*]}" ]]; then
  step "installing ${REQUIREMENTS[*]} (PyPI) into $VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 makes venvs only with python3-venv.
    ((EUID == 0)) || die "cannot make a venv in $VENV (install python3-venv)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv </dev/null >&2 ||
      die "could not install python3-venv"
    python3 -m venv "$VENV" || die "cannot make a venv in $VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}" >&2 ||
    die "could not install ${REQUIREMENTS[*]} into $VENV"
  printf '%s' "${REQUIREMENTS[*]}" >"$stamp"
fi
PY=$VENV/bin/python

PROMTOOL=$(command -v promtool || true)
if [[ -z $PROMTOOL ]]; then
  PROMTOOL=$VENV/bin/promtool
  if [[ ! -x $PROMTOOL ]]; then
    step "promtool from Debian's prometheus package (unpacked into $VENV, nothing installed)"
    dl=$(mktemp -d)
    chmod 755 "$dl" # apt's _apt user downloads into it
    if ! (cd "$dl" && apt-get download prometheus >/dev/null 2>&1); then
      ((EUID == 0)) || die "promtool is missing and apt-get download prometheus failed (run apt-get update, or install prometheus)"
      apt-get update -q </dev/null >&2 || die "apt-get update failed"
      (cd "$dl" && apt-get download prometheus >&2) || die "apt-get download prometheus failed"
    fi
    dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -O ./usr/bin/promtool >"$PROMTOOL.tmp" ||
      die "could not unpack promtool from $(ls "$dl")"
    chmod 755 "$PROMTOOL.tmp"
    mv "$PROMTOOL.tmp" "$PROMTOOL"
    rm -rf "$dl"
  fi
fi
"$PROMTOOL" --version >/dev/null 2>&1 || die "$PROMTOOL does not run"

KUSTOMIZE=()
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  KUSTOMIZE=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  KUSTOMIZE=(kustomize build)
fi

# --- checks ------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=()

# check NAME COMMAND...: runs it quietly; on failure shows its output and remembers NAME.
check() {
  local name=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then
    passed=$((passed + 1))
    printf '    ok    %s\n' "$name" >&2
  else
    failed+=("$name")
    printf '    FAIL  %s\n' "$name" >&2
    sed 's/^/          /' "$WORK/out" >&2
  fi
}

step "shell scripts"
shell_scripts=(deploy/docker/*.sh deploy/ci/*.sh deploy/compose/*.sh)
# shellcheck disable=SC2016 # the inner scripts expand their own arguments
check "bash -n ${shell_scripts[*]}" bash -c 'for f; do bash -n "$f" || exit 1; done' _ "${shell_scripts[@]}"
if command -v shellcheck >/dev/null 2>&1; then
  check "shellcheck deploy/docker deploy/ci deploy/compose" shellcheck -x "${shell_scripts[@]}"
fi

step "docker"
check "Dockerfile stages, user, health check, ports; .dockerignore" "$PY" - <<'EOF'
import re, sys
text = open("deploy/docker/Dockerfile").read()
lines = [l for l in text.splitlines() if not l.lstrip().startswith("#")]
body = "\n".join(lines)
problems = []
stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", body, re.M | re.I)
names = [s[1] for s in stages]
for want in ("runtime-base", "prebuilt-runtime", "build", "runtime"):
    if want not in names:
        problems.append(f"no stage {want}")
if names and names[-1] != "runtime":
    problems.append("the last stage (the default target) must be runtime")
if "build" in names and "prebuilt-runtime" in names and names.index("build") < names.index("prebuilt-runtime"):
    problems.append("build must come after prebuilt-runtime (older buildah builds every stage before the target)")
for pat, what in [
    (r"^ARG BASE_IMAGE=debian:bookworm-slim$", "ARG BASE_IMAGE=debian:bookworm-slim"),
    (r"^ARG BUILDER_IMAGE=rust:1\.\d+-slim-bookworm$", "ARG BUILDER_IMAGE=rust:1.x-slim-bookworm"),
    (r"cargo build --release --locked -p floq-api -p floq-worker -p floq-scheduler", "the release build of the three binaries"),
    (r"--mount=type=cache", "cache mounts"),
    (r"^USER 10001:10001$", "USER 10001:10001"),
    (r"^HEALTHCHECK .*floq-healthcheck", "a HEALTHCHECK running floq-healthcheck"),
    (r"^EXPOSE 8080 8081 8082 8083$", "EXPOSE 8080 8081 8082 8083"),
    (r'^CMD \["floq-api"\]$', 'CMD ["floq-api"]'),
]:
    if not re.search(pat, body, re.M):
        problems.append(f"missing {what}")
ignore = open(".dockerignore").read().split()
for want in ("target/", ".git", ".local/", "fuzz/corpus/", "fuzz/artifacts/", "*.env"):
    if want not in ignore:
        problems.append(f".dockerignore lacks {want}")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
EOF

step "kubernetes"
mapfile -t k8s_files < <("$PY" -c '
import yaml, sys
k = yaml.safe_load(open("deploy/k8s/base/kustomization.yaml"))
for r in k.get("resources", []):
    print("deploy/k8s/base/" + r)
print("deploy/k8s/base/externalsecret.example.yaml")
')
for v in "${K8S_VERSIONS[@]}"; do
  check "kubernetes-validate --strict -k $v (deploy/k8s/base, built-in kinds)" \
    "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "${k8s_files[@]}"
done
if ((${#KUSTOMIZE[@]})); then
  for dir in deploy/k8s/base deploy/k8s/overlays/production; do
    out=$WORK/$(basename "$dir").rendered.yaml
    # shellcheck disable=SC2016
    check "${KUSTOMIZE[*]} $dir" bash -c '"${@:2}" "$1" >"$0"' "$out" "$dir" "${KUSTOMIZE[@]}"
    if [[ -s $out ]]; then
      for v in "${K8S_VERSIONS[@]}"; do
        check "kubernetes-validate --strict -k $v ($dir, rendered)" \
          "$VENV/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "$out"
      done
    fi
  done
else
  printf '    note  no kubectl or kustomize: the overlay is checked by check_deploy.py alone\n' >&2
fi
check "check_deploy.py k8s (custom resources, references, overlay patches, settings)" \
  "$PY" deploy/ci/check_deploy.py "$ROOT" k8s

step "compose"
check "compose.yaml against the compose-spec schema" \
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
check "check_deploy.py compose (services, references, scrape jobs)" \
  "$PY" deploy/ci/check_deploy.py "$ROOT" compose
# Its paths are the container's: point them at this checkout for promtool.
mkdir -p "$WORK/prom/rules"
cp deploy/prometheus/alerts.yml "$WORK/prom/rules/"
printf 'x%.0s' {1..32} >"$WORK/prom/token"
sed -e "s|/etc/prometheus/rules|$WORK/prom/rules|" -e "s|/run/secrets/floq_metrics_token|$WORK/prom/token|" \
  deploy/compose/prometheus.yml >"$WORK/prom/prometheus.yml"
check "promtool check config deploy/compose/prometheus.yml" "$PROMTOOL" check config "$WORK/prom/prometheus.yml"

step "metrics, dashboard"
check "check_deploy.py metrics (dashboard, alerts, docs/operations.md)" \
  "$PY" deploy/ci/check_deploy.py "$ROOT" metrics
# shellcheck disable=SC2016
check "every dashboard query parses (promtool check rules)" \
  bash -c '"$1" "$2" "$3" promql "$4" && "$5" check rules "$4"' _ \
  "$PY" deploy/ci/check_deploy.py "$ROOT" "$WORK/dashboard-queries.yml" "$PROMTOOL"

step "alert rules"
check "promtool check rules deploy/prometheus/alerts.yml" "$PROMTOOL" check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts_test.yml" "$PROMTOOL" test rules deploy/prometheus/alerts_test.yml

printf '\nvalidate: %d passed, %d failed\n' "$passed" "${#failed[@]}" >&2
if ((${#failed[@]})); then
  printf '  failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
