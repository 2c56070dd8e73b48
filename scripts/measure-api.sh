#!/usr/bin/env bash
# Measures the daemon's throughput through the HTTP send API and its memory.
#
#   scripts/measure-api.sh [MESSAGES] [CLIENTS]      (default 2000 messages, 8 clients)
#
# Starts Postfix's smtp-sink (discards mail) and a release build of `outpost serve`
# relaying to it, on a fresh data directory under target/tmp (never /tmp). One curl process
# submits MESSAGES with CLIENTS requests in flight (curl --parallel, so no process per
# request competes with the daemon for CPU). Reports:
#   accepted/s  = 202s / time until the last 202
#   delivered/s = 202s / time until outpost_delivered_total (persisted) reaches that number
#   VmRSS idle (after start-up, empty queue), peak VmRSS sampled under load, VmHWM at the end.
# A request not answered within 30 s (curl --max-time) shows as `other` (000). (Until the
# API had its own server, tiny_http 0.12 now and then left a late keep-alive connection
# without a thread: a few requests in some runs.)
# Needs: smtp-sink (scripts/install-test-deps.sh), curl, python3 (JSON), a Linux /proc.
set -euo pipefail

N=${1:-2000}
CLIENTS=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${OUTPOST_BIN:-$ROOT/target/release/outpost}
WORK=$ROOT/target/tmp/measure-api
ADMIN=measure-admin-key-0123456789
HTTP_PORT=${HTTP_PORT:-38125}
SINK_PORT=${SINK_PORT:-38126}

if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && cargo build --release -q -p outpost --bin outpost)
fi
rm -rf "$WORK"
mkdir -p "$WORK"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

sink_user=()
if [ "$(id -u)" = 0 ]; then sink_user=(-u nobody); fi
/usr/sbin/smtp-sink "${sink_user[@]}" "127.0.0.1:$SINK_PORT" 256 &
pids+=($!)

OUTPOST_ADMIN_KEY=$ADMIN RUST_LOG=${RUST_LOG:-info} "$BIN" serve \
  --data "$WORK/data" --http "127.0.0.1:$HTTP_PORT" --relay "127.0.0.1:$SINK_PORT" \
  --hostname outpost.test 2>"$WORK/outpost.log" &
DPID=$!
pids+=($DPID)

api="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 200); do
  curl -sf "$api/healthz" >/dev/null 2>&1 && break
  sleep 0.05
done
mem() { grep -E "^$1:" "/proc/$DPID/status" | awk '{print $2}'; }
sleep 1
IDLE_RSS=$(mem VmRSS)

KEY=$(curl -sf -X POST -H "Authorization: Bearer $ADMIN" -d '{"domain":"example.com"}' \
  "$api/v1/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

# One curl config with N requests; curl runs them CLIENTS at a time.
CFG=$WORK/requests.curl
: >"$CFG"
for i in $(seq "$N"); do
  cat >>"$CFG" <<EOF
url = "$api/v1/messages"
header = "Authorization: Bearer $KEY"
header = "Content-Type: application/json"
data = "{\"from\":\"app@example.com\",\"to\":[\"user$i@dest.example\"],\"subject\":\"measure $i\",\"text\":\"Hello, this is message $i of the throughput run.\"}"
output = "/dev/null"
write-out = "%{http_code}\n"
EOF
  # `next` separates requests; none after the last (it would start an empty one).
  if [ "$i" -lt "$N" ]; then echo next >>"$CFG"; fi
done

# Peak RSS under load: sample every 50 ms until the queue is drained.
(peak=0; while [ -e "/proc/$DPID/status" ]; do
   r=$(mem VmRSS || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$WORK/peak"
   sleep 0.05; done) &
pids+=($!)

delivered() {
  curl -sf "$api/metrics" | awk '$1=="outpost_delivered_total"{print $2}'
}

t0=$(date +%s.%N)
# --max-time: a request the daemon never answers is counted (code 000), not waited on forever.
curl -s --no-progress-meter --max-time 30 --parallel --parallel-max "$CLIENTS" -K "$CFG" >"$WORK/codes.txt"
t1=$(date +%s.%N)
ACCEPTED=$(grep -c '^202$' "$WORK/codes.txt" || true)
until [ "$(delivered)" -ge "$ACCEPTED" ]; do
  sleep 0.02
  if awk -v t0="$t0" -v now="$(date +%s.%N)" 'BEGIN{exit !(now - t0 > 600)}'; then
    echo "gave up: $(delivered) of $ACCEPTED delivered after 600 s" >&2
    exit 1
  fi
done
t2=$(date +%s.%N)
HWM=$(mem VmHWM)
sleep 2
AFTER_RSS=$(mem VmRSS)
OTHER=$(grep -vc '^202$' "$WORK/codes.txt" || true)
PEAK=$(cat "$WORK/peak" 2>/dev/null || echo "?")

awk -v n="$N" -v acc="$ACCEPTED" -v other="$OTHER" -v t0="$t0" -v t1="$t1" -v t2="$t2" \
  -v c="$CLIENTS" -v idle="$IDLE_RSS" -v peak="$PEAK" -v hwm="$HWM" -v after="$AFTER_RSS" 'BEGIN {
  printf "messages: %d, clients: %d, 202: %d, other: %d\n", n, c, acc, other
  printf "accepted:  %.0f msg/s (%.2f s for all 202s)\n", acc / (t1 - t0), t1 - t0
  printf "delivered: %.0f msg/s (%.2f s until all %d accepted recorded delivered)\n", acc / (t2 - t0), t2 - t0, acc
  printf "RSS idle: %.1f MiB; under load: peak VmRSS %.1f MiB, VmHWM %.1f MiB; 2 s after: %.1f MiB\n",
    idle / 1024, peak / 1024, hwm / 1024, after / 1024
}'
