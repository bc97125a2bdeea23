#!/usr/bin/env bash
# The performance targets of the reference device, measured on this machine in one go: each
# target's benchmark run ROUNDS times (default 3), one JSON object per run on stdout as it comes,
# then a table on stderr: every target with its median, range, bound and whether the median
# meets it. What each target means and why it is set where it is: benches/README.md.
#
# Usage (after `cargo build --release`):
#   benches/targets.sh [ROUNDS] > runs.jsonl
# Environment:
#   OPOF       the opof binary (default target/release/opof)
#   BENCH_EXE  the criterion bench executable of benches/datapath.rs (default: found, and built
#              if need be, with `cargo bench -p opof-benches --bench datapath --no-run`)
#   QUICK=1    small sizes (20,000 sessions, short loads) and no criterion case unless BENCH_EXE
#              is given: a check that every part runs, whose figures are NOT comparable with
#              the targets (the table says so).
#   PORTS=1    also the kernel-port target (two workers against one on veth and TAP), by
#              benches/datapath-ports.sh with ROUNDS repetitions; needs root. Two figures per
#              port: the peaks of paced runs and of the generator's most, whose verdict is that
#              script's (met, not met, or why it cannot be judged: on two cores a worker shares
#              the generator's core), and the drain rates (a stopped device's queued frames,
#              timed with the generator done), which the generator does not limit. PORT_RATES
#              sets the paced rates (default "200000 400000").
#
# Every control-plane run gets a fresh `opof device` on a free loopback port. Run it on an
# otherwise idle machine: the figures are timings, and another load moves them. Exit status 0
# when every figure was measured (met or not), 1 when a benchmark failed (its output is shown).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
rounds=${1:-3}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [ROUNDS]   (ROUNDS a positive number)" >&2; exit 2; }
opof=${OPOF:-target/release/opof}
[ -x "$opof" ] || { echo "$opof: not found; build first: cargo build --release" >&2; exit 2; }
command -v python3 >/dev/null || { echo "needs python3 (to read the benchmarks' JSON)" >&2; exit 2; }
# Refused before any round runs rather than after them.
if [ "${PORTS:-0}" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "PORTS=1 needs root (network namespaces, veth, TAP)" >&2
  exit 2
fi
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
  sessions=20000 total=400000 capacity=100000 calls=500 add_rate=20000 criterion=${BENCH_EXE:-}
else
  sessions=1000000 total=20000000 capacity=1100000 calls=20000 add_rate=100000 criterion=${BENCH_EXE:-}
  if [ -z "$criterion" ]; then
    echo "building the criterion bench (cargo bench -p opof-benches --bench datapath --no-run)" >&2
    criterion=$(cargo bench -p opof-benches --bench datapath --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
    [ -x "$criterion" ] || { echo "could not build or find the criterion bench executable" >&2; exit 1; }
  fi
fi

work=$(mktemp -d)
device_pid=""
cleanup() {
  [ -n "$device_pid" ] && kill "$device_pid" 2>/dev/null && wait "$device_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Runs a benchmark command; its stdout (one JSON object) on success, else its output and exit 1.
run() {
  if ! "$@" > "$work/out" 2> "$work/err"; then
    echo "failed: $*" >&2
    cat "$work/out" "$work/err" >&2
    exit 1
  fi
  cat "$work/out"
}

# Starts a fresh device; sets $endpoint.
start_device() {
  spawn_logged "$work/device.log" "$opof" device --listen 127.0.0.1:0 --capacity "$capacity"
  device_pid=$spawned
  endpoint=$(listen_addr "$work/device.log" "$device_pid") || { echo "the device did not start" >&2; exit 1; }
}

stop_device() {
  kill "$device_pid" 2>/dev/null || true
  wait "$device_pid" 2>/dev/null || true
  device_pid=""
}

# The host's steal (benches/lib.sh) when the benchmark behind the next figures started.
mark() { steal_mark=$(host_steal); }

# The host's steal since the mark, seconds.
stolen() { awk -v a="$steal_mark" -v b="$(host_steal)" 'BEGIN { printf "%.2f", (b > a ? b - a : 0) }'; }

# Prints one run's figure: emit TARGET ROUND VALUE UNIT, with the host's steal since the mark
# (the CPU time the hypervisor took while the figure's benchmark ran).
emit() {
  local steal
  steal=$(stolen)
  echo "{\"target\": \"$1\", \"round\": $2, \"value\": $3, \"unit\": \"$4\", \"steal_s\": $steal}" \
    | tee -a "$work/runs"
}

# Reads a field of the JSON object on stdin: field 'a.b.c'
field() {
  python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"
}

for i in $(seq "$rounds"); do
  echo "round $i of $rounds" >&2
  if [ -n "$criterion" ]; then
    mark
    line=$("$criterion" --bench 'decide_batch, 1M sessions$' --warm-up-time 2 --measurement-time 6 \
      --noplot 2>/dev/null | grep -m1 'thrpt:' || true)
    [ -n "$line" ] || { echo "$criterion: no decide_batch case ran" >&2; exit 1; }
    # thrpt: [low estimate high] in frames (elements) per second; the estimate as ns a frame.
    ns=$(echo "$line" | python3 -c '
import re, sys
v = re.findall(r"([0-9.]+) ([KMG]?)elem/s", sys.stdin.read())[1]
print(round(1e9 / (float(v[0]) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[v[1]]), 1))')
    emit decide_batch_1m "$i" "$ns" ns/frame
  fi

  mark
  one=$(run "$opof" bench datapath --sessions "$sessions" --total "$total" --workers 1 | field value)
  two=$(run "$opof" bench datapath --sessions "$sessions" --total "$total" --workers 2 | field value)
  emit datapath_one_worker "$i" "$one" frames/s
  emit datapath_two_workers_ratio "$i" "$(python3 -c "print(round($two / $one, 3))")" x

  mark
  run "$opof" bench aging --sessions "$sessions" --shards 2 > "$work/aging"
  emit aging_readable_after_deadline "$i" "$(field real_time.readable_after_deadline_ms.max < "$work/aging")" ms
  emit aging_longest_lock_hold "$i" "$(field real_time.longest_lock_hold_ms < "$work/aging")" ms
  emit aging_get_session_p99 "$i" "$(field real_time.get_session_ms.p99 < "$work/aging")" ms

  for per in 10000 64; do
    streams=2; [ "$per" = 64 ] && streams=16
    start_device
    mark
    rate=$(run "$opof" bench add --endpoint "$endpoint" --api v1 --sessions "$sessions" \
      --per-stream "$per" --streams "$streams" | field value)
    stop_device
    emit "add_per_stream_$per" "$i" "$rate" sessions/s
  done

  start_device
  mark
  p99=$(run "$opof" bench get --endpoint "$endpoint" --api v1 --calls "$calls" --concurrency 1 \
    --add-load-rate "$add_rate" | field latency_us.p99)
  stop_device
  emit get_p99_under_add_load "$i" "$(python3 -c "print(round($p99 / 1000, 3))")" ms
done

# The kernel-port target: benches/datapath-ports.sh with two workers, its summary's verdicts.
if [ "${PORTS:-0}" = 1 ]; then
  echo "kernel ports: benches/datapath-ports.sh $rounds, one worker and two" >&2
  port_env=(WORKERS2=1 "OPOF=$opof")
  if [ "$quick" = 1 ]; then port_env+=(LOOPS=1 RATES=100000 DRAIN_LOOPS=1 DRAIN_RUNS=2); else port_env+=("RATES=${PORT_RATES:-200000 400000}"); fi
  mark
  if ! env "${port_env[@]}" bash benches/datapath-ports.sh "$rounds" > "$work/ports.jsonl" 2> "$work/ports.err"; then
    echo "failed: benches/datapath-ports.sh" >&2
    cat "$work/ports.err" >&2
    exit 1
  fi
  steal=$(stolen)
  python3 - "$work/ports.err" "$rounds" "$steal" <<'PY' | tee -a "$work/runs"
import json, math, re, sys
for line in open(sys.argv[1]):
    m = re.match(r"^(veth|tap): two workers' (peak|drain rate) / one worker's = (\S+) \(target 1\.5: (.*)\)$",
                 line.strip())
    if m and math.isfinite(float(m[3])):
        kind = "ratio" if m[2] == "peak" else "drain_ratio"
        print(json.dumps({"target": f"ports_two_workers_{kind}_{m[1]}", "round": None, "reps": int(sys.argv[2]),
                          "value": float(m[3]), "unit": "x", "verdict": m[4], "steal_s": float(sys.argv[3])}))
PY
fi

python3 - "$work/runs" "$quick" <<'PY' >&2
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
quick = sys.argv[2] == "1"
# target: (what it is, bound, True when the figure must be at most the bound)
targets = {
    "decide_batch_1m": ("decide_batch, 1 M sessions, per frame", 50, True),
    "datapath_one_worker": ("in-memory datapath, one worker", 10e6, False),
    "datapath_two_workers_ratio": ("two workers / one, in memory", 1.7, False),
    "aging_readable_after_deadline": ("1 M due together: last record readable after deadline", 100, True),
    "aging_longest_lock_hold": ("1 M due together: longest table lock hold", 10, True),
    "aging_get_session_p99": ("1 M due together: getSession p99", 5, True),
    "add_per_stream_10000": ("addSession, 10,000 per stream", 1.5e6, False),
    "add_per_stream_64": ("addSession, 64 per stream", 0.8e6, False),
    "get_p99_under_add_load": ("getSession p99 under paced adds", 1, True),
    "ports_two_workers_ratio_veth": ("kernel ports (veth), two workers' peak / one's", 1.5, False),
    "ports_two_workers_ratio_tap": ("kernel ports (TAP), two workers' peak / one's", 1.5, False),
    "ports_two_workers_drain_ratio_veth": ("kernel ports (veth), two workers' drain rate / one's", 1.5, False),
    "ports_two_workers_drain_ratio_tap": ("kernel ports (TAP), two workers' drain rate / one's", 1.5, False),
}
def show(v):
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v:.3g}"
print()
if quick:
    print("QUICK=1: small sizes; these figures are NOT comparable with the targets.")
print("| target | median (range) | bound | host steal | met |")
print("|---|---|---|---|---|")
for key, (what, bound, at_most) in targets.items():
    vals = [r["value"] for r in rows if r["target"] == key]
    rel = "≤" if at_most else "≥"
    if not vals:
        why = " (PORTS=1, as root)" if key.startswith("ports_") else ""
        print(f"| {what} | not measured{why} | {rel} {show(bound)} | | |")
        continue
    unit = next(r["unit"] for r in rows if r["target"] == key)
    med = statistics.median(vals)
    met = med <= bound if at_most else med >= bound
    verdict = "n/a (QUICK)" if quick else ("yes" if met else "no")
    if key.startswith("ports_") and not quick:
        # datapath-ports.sh's own verdict: it knows when its generator, not the device, set the figure.
        said = next(r["verdict"] for r in rows if r["target"] == key)
        verdict = {"met": "yes"}.get(said, "no" if said.startswith("not met") else said)
    # The CPU time the hypervisor took while the target's benchmarks ran, every round together.
    steal = sum(r.get("steal_s", 0) for r in rows if r["target"] == key)
    print(f"| {what} | {show(med)} ({show(min(vals))}–{show(max(vals))}) {unit} | {rel} {show(bound)} | {steal:.2f} s | {verdict} |")
print("\nhost steal: CPU time the hypervisor gave to something else while the target's benchmarks ran")
print("(every CPU, every round); a figure measured with steal is slower than the code.")
PY
