#!/usr/bin/env bash
# Prove that the README's Quick start works on a truly fresh Debian 12 (bookworm).
#
#   deploy/local/fresh-debian.sh [--commit REF] [--keep] [--rebuild] [--variant minbase|default]
#                                [--log-dir DIR] [--timeout MINUTES] [--probe]
#
# What it does (as root on the host, nice'd):
#   1. root     a clean Debian 12 root from debootstrap (--variant minbase by default),
#               cached as a tarball in /var/tmp/floq-fresh-debian/ and restored from it on
#               later runs (--rebuild makes a new one). Like an installed Debian 12 its
#               apt sources are bookworm, bookworm-updates and bookworm-security; it gets
#               /etc/hostname, /etc/hosts, LANG=C.UTF-8 (/etc/default/locale), the
#               host's resolv.conf and the CAs the host trusts beyond Debian's own (a
#               TLS-intercepting egress proxy's, say) in /usr/local/share/ca-certificates,
#               where a local administrator would put them. No package lists, no Rust, PostgreSQL, RabbitMQ, curl,
#               python3, gcc or git: only what debootstrap installed.
#   2. clone    a fresh `git clone --no-hardlinks` of this repository (at REF, default
#               HEAD; uncommitted changes are NOT included), made on the host straight
#               into the root at /root/floq (so the root itself needs no git).
#   3. the README's Quick start commands, read from the clone's README.md (the first
#      ```sh block after "## Quick start", comments stripped), each run as root in
#      /root/floq in a login shell (bash --login: HOME=/root and root's PATH), one after
#      the other, the services started by the first staying up for the second as they
#      would on a real machine. up.sh normally runs the stack until Ctrl-C: here it
#      gets FLOQ_UP_NO_WAIT=1 (documented in up.sh) so it stops the stack and exits
#      right after the example runs.
#
# Isolation: the root runs in its own network, mount, PID and UTS namespaces (hostname
# floq-fresh), so its PostgreSQL on 127.0.0.1:5432 and RabbitMQ/epmd on :5672/:4369 never
# meet the host's. It reaches the internet (deb.debian.org, crates.io) through a veth pair
# and a MASQUERADE rule on the host's default-route interface; net.ipv4.ip_forward is
# switched on for the run and restored afterwards. Inside: /proc (its /proc/sys
# read-only), /sys (read-only), a tmpfs /dev with the usual nodes, /dev/pts (own
# instance), /dev/shm and /run as tmpfs. All of that lives only in the namespaces: on exit
# (success, failure, Ctrl-C) the namespace's init is killed, which kills every process
# started inside (PostgreSQL, RabbitMQ, epmd, floq) and drops the mounts; then the
# network namespace, veth, NAT/forward rules and (unless --keep) the root are removed.
# Each step's output goes to a log file, never to a pipe a daemon could keep open.
#
# Output: step timings on screen and in LOGDIR/summary.txt; full logs per step in LOGDIR
# (default /var/tmp/floq-fresh-debian/logs/<UTC time>/), plus the root's service and
# floq logs copied to LOGDIR/root-logs/. Exit status: 0 when every step passed,
# otherwise 1 (the failing step's log tail is shown).
#
# Options:
#   --commit REF      what to clone (commit, branch or tag of this repository; default HEAD)
#   --keep            keep the root directory afterwards for inspection (nothing keeps running)
#   --rebuild         debootstrap a new cached root instead of restoring the tarball
#   --variant V       debootstrap variant: minbase (default) or default
#   --log-dir DIR     where logs and summary.txt go
#   --timeout MIN     give up on a Quick start command after MIN minutes (default 120)
#   --probe           only check the namespace's network from inside (getent, apt-get update)
#
# Needs: root, Debian host (installs debootstrap and iptables when missing), ~15 GB free
# in /var/tmp. A cold run takes long (two cargo builds on 2 cores: 30-80 minutes).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
if [[ -z ${FLOQ_FRESH_NICED:-} ]]; then
  export FLOQ_FRESH_NICED=1
  exec nice -n 10 "$SELF" "$@"
fi

BASE=/var/tmp/floq-fresh-debian
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
ROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CLONE_DIR=/root/floq
HOSTNAME_INSIDE=floq-fresh

REF=HEAD
KEEP=0
REBUILD=0
VARIANT=minbase
LOGDIR=""
TIMEOUT_MIN=120
PROBE=0

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }
say() { printf '[fresh-debian] %s\n' "$*"; }
die() {
  printf '[fresh-debian] ERROR: %s\n' "$*" >&2
  exit 1
}

while (($#)); do
  case $1 in
  --commit)
    [[ $# -ge 2 ]] || die "--commit needs a REF"
    REF=$2
    shift 2
    ;;
  --commit=*) REF=${1#*=} && shift ;;
  --keep) KEEP=1 && shift ;;
  --rebuild) REBUILD=1 && shift ;;
  --variant)
    [[ $# -ge 2 ]] || die "--variant needs minbase or default"
    VARIANT=$2
    shift 2
    ;;
  --log-dir)
    [[ $# -ge 2 ]] || die "--log-dir needs a directory"
    LOGDIR=$2
    shift 2
    ;;
  --timeout)
    [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--timeout needs minutes"
    TIMEOUT_MIN=$2
    shift 2
    ;;
  --probe) PROBE=1 && shift ;;
  -h | --help) usage && exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $VARIANT == minbase || $VARIANT == default ]] || die "--variant must be minbase or default"
((EUID == 0)) || die "must run as root (debootstrap, namespaces, iptables)"

REPO=$(git -C "$(dirname "$SELF")" rev-parse --show-toplevel 2>/dev/null) ||
  die "$(dirname "$SELF") is not inside a git repository"
SHA=$(git -C "$REPO" rev-parse --verify --quiet "$REF^{commit}") || die "no commit '$REF' in $REPO"

mkdir -p "$BASE"
exec 9>"$BASE/lock"
flock -n 9 || die "another fresh-debian.sh run holds $BASE/lock"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGDIR=${LOGDIR:-$BASE/logs/$STAMP}
mkdir -p "$LOGDIR"
LOGDIR=$(cd "$LOGDIR" && pwd)
SUMMARY=$LOGDIR/summary.txt
CACHE=$BASE/$SUITE-$VARIANT.tar
R=$BASE/root # the root being tested
WORK=$BASE/work.$$
NS=floqfresh-$$
VH=ffh$$ # host end of the veth pair (names are at most 15 characters)
VC=ffc$$ # namespace end
NET_C=$(($$ % 64 * 4))
SUBNET=10.213.77.$NET_C/30
HOST_IP=10.213.77.$((NET_C + 1))
NS_IP=10.213.77.$((NET_C + 2))

# ------------------------------------------------------------------ bookkeeping

STEP_NAMES=()
STEP_TIMES=()
STEP_RESULTS=()
T0=$SECONDS

fmt_secs() { printf '%d:%02d:%02d' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }

record() { # name seconds result
  STEP_NAMES+=("$1")
  STEP_TIMES+=("$2")
  STEP_RESULTS+=("$3")
  say "$(printf '%-52s %s  %s' "$1" "$(fmt_secs "$2")" "$3")"
}

write_summary() {
  local i status=$1
  {
    printf 'floq: README Quick start on a fresh Debian 12 (%s)\n' "$STAMP"
    printf 'commit:  %s (%s) from %s\n' "$SHA" "$REF" "$REPO"
    printf 'root:    debootstrap %s --variant=%s (cache %s), run in its own net/mount/pid/uts namespaces\n' \
      "$SUITE" "$VARIANT" "$CACHE"
    printf 'note:    up.sh ran with FLOQ_UP_NO_WAIT=1 (stops the stack after the example run instead of waiting for Ctrl-C)\n\n'
    printf '%-52s %-9s %s\n' step time result
    for i in "${!STEP_NAMES[@]}"; do
      printf '%-52s %-9s %s\n' "${STEP_NAMES[i]}" "$(fmt_secs "${STEP_TIMES[i]}")" "${STEP_RESULTS[i]}"
    done
    printf '%-52s %-9s %s\n' total "$(fmt_secs $((SECONDS - T0)))" "$status"
    printf '\nlogs: %s\n' "$LOGDIR"
  } >"$SUMMARY"
}

# ------------------------------------------------------------------ clean-up

HOLDER_PID="" # ip netns exec ... unshare (host PID)
INIT_PID=""   # the namespace's init (host PID)
STEP_PID=""
FWD_OLD=""
IPT_RULES=() # "table|rule spec" added by us
EGRESS=""

ipt_add() { # table chain rule...
  local table=$1 chain=$2
  shift 2
  iptables -w -t "$table" -I "$chain" "$@" -m comment --comment "floq-fresh-$$" || return 1
  IPT_RULES+=("$table $chain $*")
}

root_mounted() { findmnt -rn -o TARGET | grep -q "^$R\(/\|$\)"; }

collect_root_logs() {
  [[ -d $R ]] || return 0
  local dst=$LOGDIR/root-logs
  mkdir -p "$dst"
  [[ -d $R$CLONE_DIR/.local/logs ]] && cp -a "$R$CLONE_DIR/.local/logs" "$dst/floq-local-logs" 2>/dev/null
  for d in "$R$CLONE_DIR"/.local/postgres "$R$CLONE_DIR"/.local/rabbitmq "$R"/var/tmp/floq-postgres-*; do
    [[ -d $d ]] || continue
    mkdir -p "$dst/$(basename "$d")"
    find "$d" -maxdepth 3 -name '*.log' -exec cp -a {} "$dst/$(basename "$d")/" \; 2>/dev/null
  done
  for d in postgresql rabbitmq apt; do
    [[ -d $R/var/log/$d ]] && cp -a "$R/var/log/$d" "$dst/var-log-$d" 2>/dev/null
  done
  [[ -f $R$CLONE_DIR/.local/floq.env ]] && sed -E 's/^([A-Z_]*(SECRET|SALT|TOKEN|PASSWORD)[A-Z_]*)=.*/\1=<redacted>/' \
    "$R$CLONE_DIR/.local/floq.env" >"$dst/floq.env.redacted" 2>/dev/null
  return 0
}

cleanup() {
  local rc=$? rule table chain pids
  trap - EXIT INT TERM HUP
  set +e
  if [[ -n $STEP_PID ]] && kill -0 "$STEP_PID" 2>/dev/null; then
    kill -TERM "$STEP_PID" 2>/dev/null
    record "$STEP_NAME" $((SECONDS - STEP_START)) "INTERRUPTED (exit $rc)"
  fi
  if [[ -n $INIT_PID || -n $HOLDER_PID ]]; then
    say "tearing down: killing the namespace's init (every process inside dies with it)"
    [[ -n $INIT_PID ]] && kill -KILL "$INIT_PID" 2>/dev/null
    [[ -n $HOLDER_PID ]] && kill -KILL "$HOLDER_PID" 2>/dev/null
    [[ -n $HOLDER_PID ]] && wait "$HOLDER_PID" 2>/dev/null
    [[ -n $STEP_PID ]] && wait "$STEP_PID" 2>/dev/null
  fi
  if ip netns list 2>/dev/null | grep -qw "^$NS"; then
    pids=$(ip netns pids "$NS" 2>/dev/null)
    if [[ -n $pids ]]; then
      say "processes still in $NS: $pids; killing them"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null
      sleep 1
    fi
    ip netns del "$NS"
  fi
  ip link show "$VH" >/dev/null 2>&1 && ip link del "$VH"
  for rule in "${IPT_RULES[@]}"; do
    read -r table chain rule <<<"$rule"
    # shellcheck disable=SC2086
    iptables -w -t "$table" -D "$chain" $rule -m comment --comment "floq-fresh-$$" ||
      say "could not remove iptables rule: -t $table $chain $rule"
  done
  [[ -n $FWD_OLD ]] && sysctl -q -w net.ipv4.ip_forward="$FWD_OLD" >/dev/null
  collect_root_logs
  if [[ -d $R ]]; then
    if root_mounted; then
      say "something is still mounted below $R on the host; NOT removing it"
    elif ((KEEP)); then
      say "kept the root: $R   (look around: chroot $R /bin/bash --login)"
    else
      rm -rf --one-file-system "$R"
    fi
  fi
  rm -rf "$WORK"
  if ((${#STEP_NAMES[@]})); then
    write_summary "$([[ $rc == 0 ]] && echo passed || echo "FAILED (exit $rc)")"
    echo
    cat "$SUMMARY"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Leftovers of an earlier run that was killed before it could clean up (its PID is in the names).
remove_stale() {
  local ns pid line
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^floqfresh-[0-9]+$/ {print $1}'); do
    pid=${ns#floqfresh-}
    kill -0 "$pid" 2>/dev/null && continue
    if [[ -n $(ip netns pids "$ns" 2>/dev/null) ]]; then
      die "stale network namespace $ns still has processes ($(ip netns pids "$ns" | tr '\n' ' ')); remove it by hand"
    fi
    say "removing stale network namespace $ns"
    ip netns del "$ns"
    ip link show "ffh$pid" >/dev/null 2>&1 && ip link del "ffh$pid"
  done
  while read -r line; do
    pid=$(sed -n 's/.*floq-fresh-\([0-9]*\).*/\1/p' <<<"$line")
    [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null || continue
    local table=${line%% *}
    line=${line#* -A }
    say "removing stale iptables rule (-t $table): -A $line"
    # shellcheck disable=SC2086
    eval "iptables -w -t $table -D $line" || true
  done < <(for t in nat filter; do iptables -w -t "$t" -S 2>/dev/null | grep 'floq-fresh-' | sed "s/^/$t /"; done)
}

# ------------------------------------------------------------------ host tools

host_tools() {
  local -a need=()
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v unshare >/dev/null 2>&1 || need+=(util-linux)
  [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
  if ((${#need[@]})); then
    say "installing on the host: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" </dev/null >"$LOGDIR/host-apt.log" 2>&1 || {
      apt-get update -q </dev/null >>"$LOGDIR/host-apt.log" 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" </dev/null >>"$LOGDIR/host-apt.log" 2>&1
    } || {
      tail -n 20 "$LOGDIR/host-apt.log" >&2
      die "could not install ${need[*]} on the host"
    }
  fi
  local avail
  avail=$(df -Pk "$BASE" | awk 'NR == 2 {print int($4 / 1048576)}')
  say "free in $BASE: ${avail} GB"
  ((avail >= 15)) || die "less than 15 GB free in $BASE; a root with two cargo builds needs about that"
}

# ------------------------------------------------------------------ step runner

show_tail() { # log
  printf -- '--- last 40 lines of %s ---\n' "$1" >&2
  tail -n 40 "$1" >&2 || true
  printf -- '---\n' >&2
}

# run_step NAME LOG TIMEOUT_SECONDS CMD...: output to LOG only (no pipe a daemon could
# inherit), a progress line every 5 minutes, the timing recorded.
run_step() {
  local name=$1 log=$2 limit=$3 start=$SECONDS rc=0 next_beat last
  shift 3
  say "$name ... (log: $log)"
  "$@" </dev/null >>"$log" 2>&1 &
  STEP_PID=$!
  STEP_NAME=$name STEP_START=$start
  next_beat=$((SECONDS + 300))
  while kill -0 "$STEP_PID" 2>/dev/null; do
    sleep 2
    if ((SECONDS >= next_beat)); then
      last=$(tail -n 1 "$log" 2>/dev/null | tr -d '\r' | cut -c1-110)
      say "  ... $(fmt_secs $((SECONDS - start))) $last"
      next_beat=$((SECONDS + 300))
    fi
    if ((limit > 0 && SECONDS - start > limit)); then
      say "  $name: still running after $((limit / 60)) minutes; giving up"
      kill -TERM "$STEP_PID" 2>/dev/null
      break
    fi
  done
  wait "$STEP_PID" || rc=$?
  STEP_PID=""
  if ((limit > 0 && SECONDS - start > limit)); then
    rc=124
  fi
  if ((rc == 0)); then
    record "$name" $((SECONDS - start)) ok
  else
    record "$name" $((SECONDS - start)) "FAILED (exit $rc)"
    show_tail "$log"
  fi
  return "$rc"
}

# ------------------------------------------------------------------ step 1: the root

make_cache() {
  local tmp=$BASE/build.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  debootstrap --variant="$VARIANT" "$SUITE" "$tmp" "$MIRROR" || return 1
  # Pristine as debootstrap left it; only its download cache is dropped.
  rm -f "$tmp"/var/cache/apt/archives/*.deb
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$tmp" -cf "$CACHE.tmp" . || return 1
  mv "$CACHE.tmp" "$CACHE"
  rm -rf --one-file-system "$tmp"
  ls -l "$CACHE"
}

# A root kept by an earlier --keep run (not part of the timed step).
remove_old_root() {
  [[ -d $R ]] || return 0
  root_mounted && die "something is mounted below $R; refusing to replace it"
  say "removing the root of an earlier run ($R)"
  rm -rf --one-file-system "$R"
}

restore_root() {
  mkdir -p "$R"
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$R" -xpf "$CACHE"
  configure_root
}

# What the Debian installer leaves on every Debian 12 that debootstrap alone does not.
configure_root() {
  rm -f "$R/etc/apt/sources.list"
  cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
  # No package lists yet (debootstrap's own are for $SUITE only, and go stale in the cache).
  find "$R/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
  echo "$HOSTNAME_INSIDE" >"$R/etc/hostname"
  cat >"$R/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_INSIDE

::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
  echo 'LANG=C.UTF-8' >"$R/etc/default/locale"
  copy_host_cas
  rm -f "$R/etc/resolv.conf"
  cat /etc/resolv.conf >"$R/etc/resolv.conf"
  echo "$SUITE-$VARIANT root for floq's fresh-debian.sh, restored $STAMP" >"$R/etc/floq-fresh-debian"
  echo "apt sources:"
  cat "$R/etc/apt/sources.list"
  echo "what the root lacks (must stay so):"
  local t
  for t in cargo rustc cc gcc curl python3 psql git pg_ctlcluster rabbitmq-server; do
    if chroot "$R" /usr/bin/env PATH="$ROOT_PATH" sh -c "command -v $t" >/dev/null 2>&1; then
      echo "  UNEXPECTED: $t is in the root"
      return 1
    fi
    echo "  $t: absent"
  done
}

# The certificate authorities this host trusts beyond Debian's (Mozilla's) set, e.g. a
# TLS-intercepting egress proxy's: without them no HTTPS (crates.io) works from here.
# They go where an administrator puts local CAs, /usr/local/share/ca-certificates/;
# the ca-certificates package (not in the root yet) picks them up when installed.
copy_host_cas() {
  local bundle=/etc/ssl/certs/ca-certificates.crt tmp f fp n=0
  [[ -r $bundle && -d /usr/share/ca-certificates/mozilla ]] || return 0
  command -v openssl >/dev/null 2>&1 || return 0
  tmp=$(mktemp -d)
  for f in /usr/share/ca-certificates/mozilla/*.crt; do
    openssl x509 -in "$f" -noout -fingerprint -sha256
  done | sort >"$tmp/known"
  awk -v dir="$tmp" '/BEGIN CERT/ {n++; f = sprintf("%s/c%04d.pem", dir, n)} n {print > f} /END CERT/ {close(f)}' "$bundle"
  mkdir -p "$R/usr/local/share/ca-certificates"
  for f in "$tmp"/c*.pem; do
    [[ -e $f ]] || continue
    fp=$(openssl x509 -in "$f" -noout -fingerprint -sha256 2>/dev/null) || continue
    grep -qxF "$fp" "$tmp/known" && continue
    n=$((n + 1))
    cp "$f" "$R/usr/local/share/ca-certificates/host-local-$n.crt"
    echo "host-local CA copied into the root: $(openssl x509 -in "$f" -noout -subject)"
  done
  rm -rf "$tmp"
}

step_root() {
  local start=$SECONDS log=$LOGDIR/1-root.log
  if ((REBUILD)) || [[ ! -s $CACHE ]]; then
    say "root: debootstrap $SUITE --variant=$VARIANT into a new cache ($CACHE) ... (log: $log)"
    if ! make_cache >"$log" 2>&1 </dev/null; then
      record "root: debootstrap" $((SECONDS - start)) FAILED
      show_tail "$log"
      exit 1
    fi
    local what="root: debootstrap + restore"
  else
    say "root: restoring $CACHE ... (log: $log)"
    local what="root: restore cached debootstrap"
  fi
  if ! restore_root >>"$log" 2>&1 </dev/null; then
    record "$what" $((SECONDS - start)) FAILED
    show_tail "$log"
    exit 1
  fi
  record "$what" $((SECONDS - start)) ok
}

# ------------------------------------------------------------------ step 2: the clone

do_clone() {
  git clone --no-hardlinks --no-checkout "$REPO" "$R$CLONE_DIR"
  git -C "$R$CLONE_DIR" checkout -q --detach "$SHA"
  git -C "$R$CLONE_DIR" log -1 --format='%H %s'
  chown -R 0:0 "$R$CLONE_DIR"
}

# ------------------------------------------------------------------ namespaces

# Runs inside the new mount/PID/UTS namespaces (still on the host's filesystem) as
# their init: mounts the root's pseudo file systems, then waits to be killed.
write_init() {
  cat >"$WORK/init.sh" <<'EOF'
set -eu
R=$1 NAME=$2 READY=$3
mount --make-rprivate /
hostname "$NAME"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o nosuid,mode=0755,size=64m tmpfs "$R/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n
  mknod -m 0666 "$R/dev/$1" c "$2" "$3"
done
mkdir -m 0755 "$R/dev/pts"
mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs "$R/run"
mkdir -m 1777 "$R/run/lock"
findmnt -rn -o TARGET,FSTYPE,OPTIONS | grep "^$R/" || true
touch "$READY"
# PID 1 of the namespace: reap orphans (bash does on SIGCHLD) until killed.
while :; do
  sleep 3600 &
  wait $! || true
done
EOF
}

setup_namespaces() {
  local log=$LOGDIR/0-namespace.log
  EGRESS=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  [[ -n $EGRESS ]] || die "no IPv4 default route on the host"
  local mtu
  mtu=$(cat "/sys/class/net/$EGRESS/mtu")
  if ip -4 addr | grep -q " 10\.213\.77\.$((NET_C + 1))/"; then
    die "$HOST_IP is already in use on the host"
  fi
  {
    echo "network namespace $NS: $NS_IP/30 on $VC, default via $HOST_IP ($VH), NAT out of $EGRESS (mtu $mtu)"
    ip netns add "$NS"
    ip link add "$VH" mtu "$mtu" type veth peer name "$VC" mtu "$mtu"
    ip link set "$VC" netns "$NS"
    ip addr add "$HOST_IP/30" dev "$VH"
    ip link set "$VH" up
    ip -n "$NS" link set lo up
    ip -n "$NS" addr add "$NS_IP/30" dev "$VC"
    ip -n "$NS" link set "$VC" up
    ip -n "$NS" route add default via "$HOST_IP"
  } >"$log" 2>&1 || {
    show_tail "$log"
    die "could not set up the network namespace"
  }
  FWD_OLD=$(sysctl -n net.ipv4.ip_forward)
  [[ $FWD_OLD == 1 ]] && FWD_OLD="" # nothing to restore
  sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
  ipt_add nat POSTROUTING -s "$SUBNET" -o "$EGRESS" -j MASQUERADE &&
    ipt_add filter FORWARD -i "$VH" -o "$EGRESS" -j ACCEPT &&
    ipt_add filter FORWARD -i "$EGRESS" -o "$VH" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT ||
    die "could not add the NAT/forward rules (iptables)"
  iptables -w -t nat -S POSTROUTING | grep "floq-fresh-$$" >>"$log"

  mkdir -p "$WORK"
  write_init
  say "starting the root's namespaces (net $NS, mount, pid, uts)"
  ip netns exec "$NS" unshare --mount --pid --uts --fork --kill-child --propagation private \
    bash "$WORK/init.sh" "$R" "$HOSTNAME_INSIDE" "$WORK/ready" </dev/null >>"$log" 2>&1 &
  HOLDER_PID=$!
  local deadline=$((SECONDS + 20))
  until [[ -e $WORK/ready ]]; do
    kill -0 "$HOLDER_PID" 2>/dev/null || {
      show_tail "$log"
      die "the namespace's init died while mounting"
    }
    ((SECONDS < deadline)) || die "the namespace's init did not get ready"
    sleep 0.2
  done
  INIT_PID=$(cat "/proc/$HOLDER_PID/task/$HOLDER_PID/children" 2>/dev/null | awk '{print $1}')
  [[ -n $INIT_PID ]] || die "cannot find the namespace's init process"
  say "namespace init: host pid $INIT_PID"
  root_mounted && die "the root's mounts are visible on the host (they must stay in the namespace)"
  return 0
}

# in_root CMD: run a shell command in the root as a root login shell would.
in_root() {
  nsenter --target "$INIT_PID" --mount --pid --net --uts -- \
    chroot "$R" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    PATH="$ROOT_PATH" LANG=C.UTF-8 "${EXTRA_ENV[@]}" /bin/bash --login -c "$1"
}
EXTRA_ENV=()

probe() {
  in_root 'set -x; hostname; cat /etc/resolv.conf; getent hosts deb.debian.org static.crates.io index.crates.io;
    ip addr 2>/dev/null || cat /proc/net/dev; apt-get update'
}

# The Quick start commands: the first ```sh block after "## Quick start", comments stripped.
readme_commands() {
  awk '
    /^## Quick start/ { inqs = 1; next }
    inqs && /^## / { exit }
    inqs && !inblock && /^```sh[[:space:]]*$/ { inblock = 1; next }
    inblock && /^```/ { exit }
    inblock {
      sub(/[[:space:]]+#.*$/, ""); sub(/^#.*$/, "")
      sub(/^[[:space:]]+/, ""); sub(/[[:space:]]+$/, "")
      if (length) print
    }' "$1"
}

# ------------------------------------------------------------------ main

say "commit $SHA ($REF) of $REPO; logs in $LOGDIR"
remove_stale
host_tools
remove_old_root
step_root

start=$SECONDS
if ! do_clone >"$LOGDIR/2-clone.log" 2>&1 </dev/null; then
  record "clone" $((SECONDS - start)) FAILED
  show_tail "$LOGDIR/2-clone.log"
  exit 1
fi
record "clone ($CLONE_DIR)" $((SECONDS - start)) ok

mapfile -t COMMANDS < <(readme_commands "$R$CLONE_DIR/README.md")
((${#COMMANDS[@]})) || die "no commands found in the clone's README.md Quick start block"
say "README Quick start commands: $(printf '[%s] ' "${COMMANDS[@]}")"
printf '%s\n' "${COMMANDS[@]}" >"$LOGDIR/readme-commands.txt"

setup_namespaces

if ((PROBE)); then
  run_step "probe: network from inside" "$LOGDIR/probe.log" 300 probe || exit 1
  exit 0
fi

n=0
for cmd in "${COMMANDS[@]}"; do
  n=$((n + 1))
  EXTRA_ENV=()
  label="command $n: $cmd"
  if [[ $cmd == *up.sh* ]]; then
    EXTRA_ENV=(FLOQ_UP_NO_WAIT=1)
    label="$label (FLOQ_UP_NO_WAIT=1)"
  fi
  log=$LOGDIR/$((n + 2))-command-$n.log
  printf '# in %s as root (bash --login), extra env: %s\n# $ %s\n' "$CLONE_DIR" "${EXTRA_ENV[*]:-none}" "$cmd" >"$log"
  run_step "$label" "$log" $((TIMEOUT_MIN * 60)) in_root "cd $CLONE_DIR && $cmd" || exit 1
done
say "both README commands passed on a fresh Debian 12"
