#!/usr/bin/env bash
# The whole test suite, from a fresh machine with only the Rust toolchain:
#   1. installs the real peers the end-to-end tests talk to (Postfix's smtp-sink,
#      dnsmasq, swaks, aiosmtpd, standardwebhooks, dkimpy, prometheus_client...);
#   2. checks formatting and lints;
#   3. runs every crate's tests (unit, property, end-to-end against the real daemon);
#   4. runs the deterministic simulator over many seeds (release mode);
#   5. runs each fuzz target briefly so regressions show.
# Environment: OUTPOST_SIM_SEEDS (default 300), OUTPOST_FUZZ_SECONDS (0 skips fuzzing),
# OUTPOST_FUZZ_SEED (default 1), OUTPOST_FUZZ_RUNS (default 20000 per target).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

step "test dependencies"
scripts/install-test-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "simulator (release)"
if [ -d shell-sim/src ] && grep -q 'fn main' shell-sim/src/main.rs 2>/dev/null; then
  cargo run --release -q -p outpost-sim -- --seeds "${OUTPOST_SIM_SEEDS:-300}"
fi

fuzz_seconds="${OUTPOST_FUZZ_SECONDS:-30}"
if [ -x scripts/fuzz.sh ] && [ "$fuzz_seconds" != 0 ]; then
  # A fixed seed and a fixed number of runs per target: CI explores the same inputs every
  # time (a regression check that cannot fail by luck); long random runs: scripts/fuzz.sh 600.
  step "fuzz smoke (fixed seed, ${OUTPOST_FUZZ_RUNS:-20000} runs per target)"
  OUTPOST_FUZZ_SEED="${OUTPOST_FUZZ_SEED:-1}" OUTPOST_FUZZ_RUNS="${OUTPOST_FUZZ_RUNS:-20000}" \
    scripts/fuzz.sh "$fuzz_seconds"
fi

step "tests"
# CI=true makes end-to-end tests fail (rather than skip) when a peer is missing.
CI="${CI:-true}" cargo test --workspace
