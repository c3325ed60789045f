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

# Total utime+stime (clock ticks) of every process whose command name is $1.
cpu_of() {
  local name=$1 total=0 pid stat rest
  for pid in $(pgrep -x "$name" || true); do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    rest=${stat##*) }
    # Fields after the command: state is 1st, utime the 12th, stime the 13th.
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
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

pg0=$(cpu_of postgres)
mq0=$(cpu_of beam.smp)
read -r busy0 idle0 < <(machine_busy)
log=$(mktemp)
"$bench" "$@" | tee "$log" &
bench_pid=$!
floq=0
# The benchmark process's own time, sampled until it exits (its /proc entry goes with it).
while kill -0 "$bench_pid" 2>/dev/null; do
  if stat=$(cat "/proc/$bench_pid/stat" 2>/dev/null); then
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    floq=$((f[11] + f[12]))
  fi
  sleep 0.5
done
wait "$bench_pid"
pg1=$(cpu_of postgres)
mq1=$(cpu_of beam.smp)
read -r busy1 idle1 < <(machine_busy)

runs=$(sed -n 's/^succeeded: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
[[ -n $runs && $runs -gt 0 ]] || { echo "capacity.sh: cannot read the number of completed runs from the benchmark's output" >&2; exit 1; }
rm -f "$log"

per_run() { awk -v t="$1" -v hz="$tick" -v n="$runs" 'BEGIN { printf "%.3f", t / hz * 1000 / n }'; }
echo
echo "capacity: runs=$runs (CPU milliseconds per completed run)"
echo "  postgresql  $(per_run $((pg1 - pg0)))"
echo "  rabbitmq    $(per_run $((mq1 - mq0)))"
echo "  floq        $(per_run "$floq")   (api + worker + scheduler + the benchmark's client)"
echo "  machine     $(per_run $((busy1 - busy0)))   busy, all processes; idle $(per_run $((idle1 - idle0)))"
