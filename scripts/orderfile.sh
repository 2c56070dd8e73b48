#!/usr/bin/env bash
# Regenerates shell-smol/link/outpost.order: the functions the daemon runs at start-up and
# while idle, then those it runs delivering mail, in that order. shell-smol/build.rs hands
# the file to the linker (lld's --symbol-ordering-file), which lays those functions out
# next to each other at the start of .text.
#
# Why: the kernel maps file pages around each page fault ("fault-around", 64 KiB), so a
# start-up path that touches 1,500 functions scattered over 9 MiB of code leaves ~7 MiB of
# the binary resident for ever. Packed together they fill under 2 MiB.
#
# The names are mangled symbols; their hashes depend on the crate versions and the
# compiler, not on function bodies. After a dependency or toolchain upgrade, rerun this
# script: names that no longer exist are ignored by the linker (the layout degrades to the
# default one, nothing breaks). Needs valgrind (callgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=shell-smol/link/outpost.order
WORK=$(mktemp -d /tmp/outpost-order.XXXXXX)
trap 'pkill -TERM -f "$WORK/data" 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v valgrind >/dev/null || { echo "orderfile: valgrind is needed" >&2; exit 2; }
cargo build --release -p outpost -p outpost-bench
BIN=$ROOT/target/release/outpost

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. Start-up, the probes a supervisor makes, and idle time.
HTTP=$(free_port); SMTP=$(free_port)
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/idle.cg" \
    "$BIN" serve --data "$WORK/data" --http "127.0.0.1:$HTTP" --smtp "127.0.0.1:$SMTP" \
    >"$WORK/idle.log" 2>&1 &
VG=$!
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$HTTP/readyz" >/dev/null && break
    sleep 0.5
done
curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null
sleep 10
kill -TERM "$VG"
wait "$VG" || true

# 2. Mail through both intakes: the bench drives a daemon started through a wrapper.
cat >"$WORK/outpost-under-callgrind" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file=$WORK/load.%p.cg "$BIN" "\$@"
EOF
chmod +x "$WORK/outpost-under-callgrind"
"$ROOT/target/release/outpost-bench" --outpost "$WORK/outpost-under-callgrind" \
    --messages 200 --concurrency 4 >"$WORK/bench.log" 2>&1 ||
    { cat "$WORK/bench.log" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
python3 scripts/callgrind_functions.py --object "$BIN" "$WORK/idle.cg" "$WORK"/load.*.cg >"$OUT"
echo "orderfile: $(wc -l <"$OUT") functions in $OUT"
