#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (default 20 s each),
# starting from the seed corpus in fuzz/seeds/<target>. New inputs the fuzzer
# finds go to fuzz/corpus/<target> (not committed); a crash stops the run
# with the input that caused it under fuzz/artifacts/<target>.
#
#   scripts/fuzz.sh            every target, 20 s each
#   scripts/fuzz.sh 600 csr    one target for ten minutes
#
# cargo-fuzz runs on the stable toolchain with `--sanitizer none`: coverage
# guidance and Rust's own checks (panics, overflow with debug assertions),
# without the nightly-only sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(detect client_hello annotations admission_review csr)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

# A short run (the tests' 20 s a target) is a smoke test: the optimised build
# (about 9 minutes on two cores, for the Kubernetes types the injector's
# target pulls in) would cost more than all the fuzzing it serves, so it
# builds in the fuzz workspace's unoptimised dev profile (fuzz/Cargo.toml).
# Longer runs build optimised, where executions per second pay.
build=(--sanitizer none --debug-assertions)
if ((seconds <= 60)); then
  build+=(--dev)
fi

cd fuzz
echo "fuzz: building the targets (instrumented, in fuzz/target; ${build[*]})"
cargo fuzz build "${build[@]}"
passed=0
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  if cargo fuzz run "${build[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>"corpus/$target.log"; then
    # libFuzzer's last status line, e.g. "#2863357<TAB>DONE cov: 1873 ft: 4892 ...".
    summary=$(grep -E '^#[0-9]+[[:space:]]+DONE' "corpus/$target.log" | tail -1 || true)
    echo "fuzz: $target: ${summary:-finished (no DONE line in corpus/$target.log)}"
    passed=$((passed + 1))
  else
    tail -40 "corpus/$target.log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
