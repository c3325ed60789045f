#!/usr/bin/env bash
# The capacity model's measurement (docs/operations.md, "Capacity"): runs the
# benchmark and prints the CPU each component spent per completed run —
# PostgreSQL (every postgres process), RabbitMQ (beam.smp) and floq (the
# benchmark process, which holds api, worker and scheduler in-process, plus
# its own HTTP client) — from /proc, so the figures add up to the machine's
# busy time.
#
#   tests/capacity.sh [floq-bench args...]      e.g.  --runs 20000 --concurrency 256
#
# Environment: FLOQ_BENCH  the benchmark binary (default: cargo run --release).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
tick=$(getconf CLK_TCK)

# CPU ticks (utime+stime) of one process, or nothing once it is gone.
ticks_of() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  rest=${stat##*) }
  # Fields after the command: state is the 1st, utime the 12th, stime the 13th.
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}

# Each process's ticks are sampled while the benchmark runs and counted from
# its first sample (0 for one born meanwhile, such as a new PostgreSQL
# backend), so processes that exit before the end still count.
declare -A first last kind
sample() {
  local name pid t
  for name in postgres beam.smp; do
    for pid in $(pgrep -x "$name" || true); do
      t=$(ticks_of "$pid")
      [[ -n $t ]] || continue
      [[ -n ${first[$pid]:-} ]] || first[$pid]=$((started ? 0 : t))
      last[$pid]=$t
      kind[$pid]=$name
    done
  done
  if [[ -n ${bench_pid:-} ]]; then
    t=$(ticks_of "$bench_pid")
    [[ -z $t ]] || floq=$t
  fi
}

machine_busy() {
  read -r _ user nice system idle iowait irq softirq steal _ </proc/stat
  echo $((user + nice + system + irq + softirq + steal)) $((idle + iowait))
}

bench=${FLOQ_BENCH:-}
if [[ -z $bench ]]; then
  cargo build --release --locked -p floq-tests --bin floq-bench >&2
  bench=${CARGO_TARGET_DIR:-target}/release/floq-bench
fi

floq=0
started=0
sample
started=1
read -r busy0 idle0 < <(machine_busy)
log=$(mktemp)
"$bench" "$@" >"$log" 2>&1 &
bench_pid=$!
while kill -0 "$bench_pid" 2>/dev/null; do
  sample
  sleep 0.2
done
wait "$bench_pid" || { cat "$log"; exit 1; }
read -r busy1 idle1 < <(machine_busy)
cat "$log"
pg=0 mq=0
for pid in "${!last[@]}"; do
  d=$((last[$pid] - first[$pid]))
  case ${kind[$pid]} in
    postgres) pg=$((pg + d)) ;;
    beam.smp) mq=$((mq + d)) ;;
  esac
done

runs=$(sed -n 's/^succeeded: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
[[ -n $runs && $runs -gt 0 ]] || { echo "capacity.sh: cannot read the number of completed runs from the benchmark's output" >&2; exit 1; }
rm -f "$log"

per_run() { awk -v t="$1" -v hz="$tick" -v n="$runs" 'BEGIN { printf "%.3f", t / hz * 1000 / n }'; }
echo
echo "capacity: runs=$runs (CPU milliseconds per completed run)"
echo "  postgresql  $(per_run "$pg")"
echo "  rabbitmq    $(per_run "$mq")"
echo "  floq        $(per_run "$floq")   (api + worker + scheduler + the benchmark's client)"
echo "  machine     $(per_run $((busy1 - busy0)))   busy, all processes; idle $(per_run $((idle1 - idle0)))"
