#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET (default 60),
# one target at a time, one process each (the machine is shared). Prints per target the
# total executions and executions per second, and exits non-zero if any target crashed
# (the crash artifact's path is printed; reproduce with `cargo +nightly fuzz run TARGET
# ARTIFACT`, minimize with `cargo +nightly fuzz tmin TARGET ARTIFACT`).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz if
# missing. Seeds come from fuzz/corpus/<target>/ (checked in); what a run discovers goes
# to fuzz/corpus-work/<target>/ (ignored by git), so seeds stay small.
set -u -o pipefail

secs="${1:-60}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! [[ "$secs" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: a nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "fuzz.sh: building ${targets[*]}" >&2
cargo +nightly fuzz build || exit 2

logdir="$(mktemp -d)"
trap 'rm -rf "$logdir"' EXIT
failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-work/$t" "corpus/$t"
    log="$logdir/$t.log"
    echo "fuzz.sh: running $t for ${secs}s" >&2
    # -print_final_stats: stat::number_of_executed_units etc. at the end.
    # Structured targets (arbitrary-built op sequences) need long inputs from the start.
    extra=()
    case "$t" in
        engine_inputs | smtp_client | smtp_server) extra=(-len_control=0) ;;
    esac
    # OUTPOST_FUZZ_SEED fixes libFuzzer's seed: the test command uses it so that CI explores
    # the same inputs on every run (a regression check that cannot fail by luck); long
    # random runs leave it unset.
    if [ -n "${OUTPOST_FUZZ_SEED:-}" ]; then
        extra+=(-seed="$OUTPOST_FUZZ_SEED")
    fi
    # OUTPOST_FUZZ_RUNS (with a fixed seed) bounds the run by count instead of time: the
    # same inputs whatever the machine's speed, so a passing run is reproducible.
    if [ -n "${OUTPOST_FUZZ_RUNS:-}" ]; then
        bound=(-runs="$OUTPOST_FUZZ_RUNS")
    else
        bound=(-max_total_time="$secs")
    fi
    cargo +nightly fuzz run "$t" "corpus-work/$t" "corpus/$t" -- \
        "${bound[@]}" -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 \
        -max_len=8192 "${extra[@]}" >"$log" 2>&1
    rc=$?
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')"
    if [ -z "$execs" ]; then
        execs="$(grep -o '^Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]\+')"
    fi
    rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')"
    if [ -z "$rate" ]; then
        rate="$(grep -o '^Done [0-9]* runs in [0-9]* second' "$log" | tail -1 |
            awk '{ if ($5 > 0) printf "%d", $2 / $5; else print $2 }')"
    fi
    if [ $rc -ne 0 ] || grep -q 'Test unit written to' "$log"; then
        failed=1
        echo "fuzz.sh: $t FAILED (exit $rc); last lines of its log:" >&2
        grep -E 'panicked at|^thread|SUMMARY|ERROR' "$log" | head -5 >&2
        tail -n 20 "$log" >&2
        artifact="$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')"
        summary+=("$(printf '%-15s FAILED   execs=%s  artifact=%s' "$t" "${execs:-?}" "${artifact:-?}")")
    else
        summary+=("$(printf '%-15s ok       execs=%s  execs/s=%s' "$t" "${execs:-?}" "${rate:-?}")")
    fi
done

echo "fuzz.sh: ${secs}s per target"
for line in "${summary[@]}"; do
    echo "$line"
done
exit $failed
