#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 60) and prints its counts.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      targets: flow_definition template (default: both)
#
# Only a stable toolchain is installed here: cargo-fuzz's nightly flags are
# accepted with RUSTC_BOOTSTRAP=1. cargo-fuzz is installed when missing.
# The corpus grows in fuzz/corpus/<target> (not committed; seeded from
# fuzz/seeds/<target>); a crash leaves its input in fuzz/artifacts/<target>/
# and fails the script (reproduce: cargo fuzz run <target> <file>).
#
# Environment: FLOQ_FUZZ_TARGET_DIR  build directory (default /var/tmp/floq-fuzz-target)
#              FLOQ_FUZZ_SANITIZER   none (default: this is safe Rust, and twice the speed) or address
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(flow_definition template)

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FLOQ_FUZZ_TARGET_DIR:-/var/tmp/floq-fuzz-target}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi

failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  echo "==> fuzz $target for ${seconds}s" >&2
  if ! cargo fuzz run --sanitizer "${FLOQ_FUZZ_SANITIZER:-none}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz/run.sh: $target FAILED (crash input in fuzz/artifacts/$target/)" >&2
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 || true)
  echo "fuzz: target=$target seconds=$seconds execs=${execs:-?} execs_per_sec=${rate:-?} ${cov:-} corpus=$(find "corpus/$target" -type f | wc -l)"
  rm -f "$log"
done
exit "$failed"
