#!/usr/bin/env bash
# Before/after of a criterion case in one series: two or more builds of the criterion bench
# executable take turns on the same case (first, second, ..., first, second, ...), pinned to one
# core, ROUNDS times each. Each run's time (criterion's estimate for one iteration) is printed as
# it comes; then, for every build, its median and range and its per-round ratio to the first
# build (the ratio of two runs next to each other is steadier than either time on a machine
# whose timings drift by a fifth over minutes).
#
# Usage:
#   cargo bench -p opof-benches --bench datapath --no-run     # prints the executable's path
#   cp target/release/deps/datapath-<hash> /tmp/bench-before
#   (change the code; build again the same way; copy to /tmp/bench-after)
#   benches/criterion-ab.sh 6 'decide_batch, 1M sessions$' /tmp/bench-before /tmp/bench-after
# FILTER is criterion's (a regular expression over the case names); it should name one case.
# WARMUP and MEASURE (seconds, default 2 and 6) set criterion's warm-up and measurement times.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 ROUNDS FILTER BENCH_EXE BENCH_EXE..." >&2; exit 2; }
rounds=$1; filter=$2; shift 2
exes=("$@")
for b in "${exes[@]}"; do [ -x "$b" ] || { echo "$b: not an executable" >&2; exit 2; }; done
pin=(); command -v taskset >/dev/null && pin=(taskset -c "$(( $(nproc) - 1 ))")
out=$(mktemp); trap 'rm -f "$out"' EXIT
for i in $(seq "$rounds"); do
  for k in "${!exes[@]}"; do
    bin=${exes[$k]}
    line=$("${pin[@]}" "$bin" --bench "$filter" --warm-up-time "${WARMUP:-2}" \
      --measurement-time "${MEASURE:-6}" --noplot 2>/dev/null | grep -m1 'time:' || true)
    [ -n "$line" ] || { echo "$bin: no case matched '$filter'" >&2; exit 1; }
    # time: [low estimate high] with a unit each; the estimate, in nanoseconds.
    ns=$(echo "$line" | python3 -c '
import re, sys
v = re.findall(r"([0-9.]+) (ns|µs|us|ms|s)\b", sys.stdin.read())[1]
print(float(v[0]) * {"ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}[v[1]])')
    echo "{\"round\": $i, \"build\": $k, \"exe\": \"$bin\", \"ns\": $ns}" | tee -a "$out"
  done
done
python3 - "$out" <<'PY' >&2
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
builds = sorted({r["build"] for r in rows})
times = {b: [r["ns"] for r in rows if r["build"] == b] for b in builds}
for b in builds:
    v = times[b]
    ratios = [x / y for x, y in zip(v, times[0])]
    exe = next(r["exe"] for r in rows if r["build"] == b)
    print(f"{exe}: median {statistics.median(v):,.0f} ns (range {min(v):,.0f} – {max(v):,.0f}); "
          f"per-round ratio to the first {', '.join(f'{x:.3f}' for x in ratios)}, "
          f"median {statistics.median(ratios):.3f}")
PY
