#!/usr/bin/env bash
# Before/after in the same run: two builds of `opof` take turns on the same `opof bench`
# command (before, after, before, after, ...), pinned to one core, RUNS times each; each run's
# figure is printed as it comes, then the median and range of each build and the change of the
# medians. This machine's timings drift by a third between runs: only figures measured
# alternating like this are compared in benches/README.md.
#
# Usage:
#   cp target/release/opof /tmp/opof-before      # the build to compare against
#   (change the code) && cargo build --release
#   benches/ab.sh /tmp/opof-before target/release/opof 7 -- bench datapath --sessions 1000000
# The figure is the JSON `value` the bench prints (frames/s, sessions/s, ...).
set -euo pipefail
[ $# -ge 4 ] && [ "$4" = "--" ] || { echo "usage: $0 BEFORE AFTER RUNS -- BENCH ARGS..." >&2; exit 2; }
before=$1; after=$2; runs=$3; shift 4
for b in "$before" "$after"; do [ -x "$b" ] || { echo "$b: not an executable" >&2; exit 2; }; done
pin=(); command -v taskset >/dev/null && pin=(taskset -c "$(( $(nproc) - 1 ))")
out=$(mktemp); trap 'rm -f "$out"' EXIT
for i in $(seq "$runs"); do
  for which in before after; do
    bin=$before; [ "$which" = after ] && bin=$after
    v=$("${pin[@]}" "$bin" "$@" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')
    echo "{\"run\": $i, \"build\": \"$which\", \"value\": $v}" | tee -a "$out"
  done
done
python3 - "$out" <<'PY' >&2
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for b in ("before", "after"):
    vs = sorted(r["value"] for r in rows if r["build"] == b)
    med[b] = statistics.median(vs)
    print(f"{b}: median {med[b]:,.0f} (range {vs[0]:,.0f} – {vs[-1]:,.0f}), {len(vs)} runs")
print(f"after / before (medians): {med['after'] / med['before']:.3f}")
PY
