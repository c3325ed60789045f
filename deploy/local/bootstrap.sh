#!/usr/bin/env bash
# Install what floq's local scripts need and the machine lacks, before anything
# else checks for it: a C toolchain, curl, python3, openssl, the PostgreSQL
# client, and a Rust toolchain new enough for the workspace.
#
#   deploy/local/bootstrap.sh [--dev]     --dev adds clippy and rustfmt (test.sh)
#
# Only missing pieces are installed, from Debian's packages (apt-get, as root or
# through sudo). Rust: a cargo already on the PATH (rustup's ~/.cargo/bin
# included) is used when it is new enough; otherwise Debian 12's current
# toolchain, rustc-web/cargo-web from bookworm-security, is installed, and that
# suite is added to apt's sources if it is missing. Nothing else is changed.
# PostgreSQL and RabbitMQ servers are services.sh's business.
#
# Sourced by up.sh and test.sh (so the PATH it fixes reaches them); can also be run.

_floq_bootstrap() {
  local dev=0
  [[ ${1:-} == --dev ]] && dev=1

  local root min_rust
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  min_rust=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)
  min_rust=${min_rust:-1.94}

  _bs_log() { printf '[bootstrap] %s\n' "$*" >&2; }
  _bs_die() {
    printf '[bootstrap] ERROR: %s\n' "$*" >&2
    return 1
  }
  _bs_root() {
    if ((EUID == 0)); then
      "$@"
    elif command -v sudo >/dev/null 2>&1; then
      sudo -- "$@"
    else
      _bs_die "root is needed to run '$*' and sudo is not installed"
    fi
  }
  local apt_updated=0
  _bs_apt() {
    command -v apt-get >/dev/null 2>&1 ||
      _bs_die "missing: $* (no apt-get here: install them by hand)" || return 1
    _bs_log "installing Debian package(s): $*"
    if ((apt_updated == 0)); then
      # A fresh install (or a debootstrap root) may have no package lists yet.
      _bs_root apt-get update -q </dev/null >&2 || _bs_die "apt-get update failed" || return 1
      apt_updated=1
    fi
    _bs_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 ||
      _bs_die "could not install $*"
  }
  # True when version $1 >= $2 (dotted numbers).
  _bs_version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1) == "$2" ]]; }
  _bs_cargo_ok() {
    local v
    command -v cargo >/dev/null 2>&1 || return 1
    v=$(cargo --version 2>/dev/null | awk '{print $2}')
    v=${v%%-*}
    [[ -n $v ]] && _bs_version_ge "$v" "$min_rust"
  }

  # rustup installs cargo into ~/.cargo/bin, which a non-login shell may lack.
  local cargo_bin=${CARGO_HOME:-${HOME:-}/.cargo}/bin
  if [[ -d $cargo_bin && ":$PATH:" != *":$cargo_bin:"* ]]; then
    PATH=$cargo_bin:$PATH
    export PATH
  fi

  local -a pkgs=()
  command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
  command -v make >/dev/null 2>&1 || pkgs+=(make)
  command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
  [[ -e /etc/ssl/certs/ca-certificates.crt ]] || pkgs+=(ca-certificates)

  local rust_pkgs=()
  if ! _bs_cargo_ok; then
    local codename=""
    [[ -r /etc/os-release ]] && codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    if [[ $codename != bookworm ]]; then
      _bs_die "no cargo >= $min_rust on the PATH; install Rust with rustup (https://rustup.rs) and run this again" ||
        return 1
    fi
    rust_pkgs=(rustc-web cargo-web)
    if ! grep -rqsE '^[^#]*bookworm-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      _bs_log "adding Debian's bookworm-security suite to apt's sources (rustc-web comes from there)"
      _bs_root tee /etc/apt/sources.list.d/floq-bookworm-security.sources >/dev/null <<'EOF' || return 1
# Added by floq's deploy/local/bootstrap.sh: Debian 12's security suite, which
# every installed Debian 12 has and which carries the current rustc-web.
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
      apt_updated=0
    fi
  fi
  if ((dev)); then
    if [[ ${#rust_pkgs[@]} -gt 0 ]] || ! command -v rustup >/dev/null 2>&1; then
      # Debian's toolchain: its clippy and rustfmt come as packages of their own.
      cargo clippy --version >/dev/null 2>&1 || rust_pkgs+=(rust-web-clippy)
      cargo fmt --version >/dev/null 2>&1 || rust_pkgs+=(rustfmt-web)
    fi
  fi

  if ((${#pkgs[@]} + ${#rust_pkgs[@]})); then
    _bs_apt "${pkgs[@]}" "${rust_pkgs[@]}" || return 1
  fi
  hash -r
  _bs_cargo_ok || _bs_die "cargo >= $min_rust is still not on the PATH" || return 1
  if ((dev)) && command -v rustup >/dev/null 2>&1; then
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >&2 || return 1
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >&2 || return 1
  fi
  return 0
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  _floq_bootstrap "$@"
  _floq_rc=$?
  unset -f _floq_bootstrap _bs_log _bs_die _bs_root _bs_apt _bs_version_ge _bs_cargo_ok
  # shellcheck disable=SC2317 # return works when sourced, exit when executed
  return $_floq_rc 2>/dev/null || exit $_floq_rc
else
  set -euo pipefail
  _floq_bootstrap "$@"
fi
