#!/usr/bin/env bash
# Control-plane figures of the reference device on loopback, client and server on this machine.
# A fresh device per run (default capacity 1,048,576); each figure REPS times; one JSON line per
# run on stdout, the machine's load before and after on stderr.
# Usage: benches/control-plane.sh [REPS]   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
opof=./target/release/opof
addr=127.0.0.1:50199
[ -x "$opof" ] || { echo "build first: cargo build --release" >&2; exit 1; }

with_device() {
  "$opof" device --listen "$addr" "$@" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/50199) 2>/dev/null && break; sleep 0.1; done
  echo "$pid"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for _ in $(seq "$reps"); do
  for api in v1 v2; do
    pid=$(with_device)
    "$opof" bench add --endpoint "$addr" --api "$api" --sessions 1000000 --per-stream 10000 --streams 2
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  done
  pid=$(with_device)
  "$opof" bench add --endpoint "$addr" --api v1 --sessions 1000000 --per-stream 64 --streams 16
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  pid=$(with_device)
  "$opof" bench get --endpoint "$addr" --api v1 --calls 200000 --concurrency 64 --connections 4
  "$opof" bench get --endpoint "$addr" --api v2 --calls 20000 --concurrency 1
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  pid=$(with_device --capacity 4000000)
  "$opof" bench get --endpoint "$addr" --api v1 --calls 20000 --concurrency 1 --add-load-rate 100000
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  "$opof" bench table-memory --sessions 1000000
  "$opof" bench table-memory --sessions 1000000 --ipv6
  "$opof" bench table-memory --sessions 4000000
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
